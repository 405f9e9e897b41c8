"""``ams-store import``, ``ams-store lineage`` and ``remove --force``, in-process on both backends."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from ams import AMSModelDescr, UQType
from ams.cli import main


@pytest.fixture
def cli(capsys, monkeypatch, store_url):
    """``cli(*argv) -> (code, stdout, stderr)`` against the test store of application ``app``."""
    monkeypatch.delenv("AMS_STORE_URL", raising=False)
    monkeypatch.delenv("AMS_APP_NAME", raising=False)

    def run(*argv):
        capsys.readouterr()
        code = main(["--url", store_url, "--name", "app", *map(str, argv)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


def legacy_sql(path, rows):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, application_name TEXT, "
                     "domain_name TEXT, filename TEXT, entry_type TEXT, version INTEGER, "
                     "metadata JSON)")
        conn.executemany("INSERT INTO entries (application_name, domain_name, filename, "
                         "entry_type, version, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                         [(*row[:5], json.dumps(row[5])) for row in rows])
    conn.close()
    return f"sqlite:///{path}"


def test_import_then_rerun_then_skip_missing(cli, store, make_h5, tmp_path):
    present, gone = make_h5("p.h5"), str(tmp_path / "gone.h5")
    source = legacy_sql(tmp_path / "old.db", [("app", "EOS", present, "data", 2, {"c": 1}),
                                              ("app", "EOS", gone, "data", 2, {"c": 2})])
    code, out, err = cli("import", "--from", source, "--skip-missing")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert (report["kind"], report["imported"], report["skipped_missing"]) == ("sql-table", 1, 1)
    assert store.get_data_files("EOS", 2) == [present]

    code, out, _err = cli("import", "--from", source)
    assert code == 0
    assert (json.loads(out)["imported_missing"], json.loads(out)["skipped_existing"]) == (1, 1)
    assert store.get_data_files("EOS", 2) == sorted([present, gone])


def test_import_errors_are_one_line(cli, store, unchanged, tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all")
    guard = unchanged()
    code, out, err = cli("import", "--from", bad)
    assert (code, out) == (1, "")
    assert err.startswith("Error: the source is not a SQLite database") and err.count("\n") == 1
    code, _out, err = cli("import")
    assert code == 2 and "--from" in err
    guard.check()


def test_lineage_and_remove_force(cli, store, make_h5, make_model):
    data = make_h5("d.h5")
    store.add_data("EOS", [data])
    model = make_model("m.pt")
    store.add_model("EOS", AMSModelDescr(model, 0.5, UQType.Random), 0.1, 0.2, trained_on=[1])

    code, out, _err = cli("lineage", "--domain", "EOS", "--version", "latest")
    assert code == 0
    assert json.loads(out) == {"domain_name": "EOS", "version": 1, "data_versions": [1],
                               "present": [data], "missing": [],
                               "models": [{"filename": model, "data_versions": [1],
                                           "present": [data], "missing": []}]}

    code, out, err = cli("remove", "--entry", "data", "--domain", "EOS", "--file", data, "--purge")
    assert (code, out) == (1, "")
    assert err.startswith("Error: refusing to purge 1 data file") and "--force" in err
    assert os.path.exists(data) and store.get_data_files("EOS") == [data]

    # (--force also overrides the alias guard, so it applies to every entry: see test_journal)

    code, out, _err = cli("remove", "--entry", "data", "--domain", "EOS", "--file", data,
                          "--purge", "--force")
    assert (code, json.loads(out)["purged"]) == (0, [data])
    code, out, _err = cli("lineage", "--domain", "EOS", "--version", 1)
    assert (code, json.loads(out)["missing"]) == (0, [data])

    code, out, err = cli("lineage", "--domain", "EOS", "--version", 4)
    assert (code, out) == (1, "")
    assert err == "Error: no models version 4 in domain 'EOS' (existing: 1)\n"
