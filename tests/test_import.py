"""Import of older catalogues (the SQL-table store and the first Kosh-era store).

Each test builds a real legacy catalogue (the ``entries`` table with the stdlib
``sqlite3`` or mysql-connector; the Kosh-era store with plain Kosh calls and an
``ams_config.json``) and imports it into the ``store`` fixture (both backends).
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from ams import AMSDataStore
from ams.errors import ImportSourceError, InvalidArgumentError
from ams.files import fast_sha

from conftest import snapshot_store

# The DDL SQLAlchemy emitted for the SQL-table store's ``Entry`` model on SQLite.
SQLITE_DDL = """
CREATE TABLE entries (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    application_name VARCHAR(255) NOT NULL,
    domain_name VARCHAR(255) NOT NULL,
    filename TEXT NOT NULL UNIQUE,
    entry_type VARCHAR(10) NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    metadata JSON
)"""
MARIADB_DDL = """
CREATE TABLE entries (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    application_name VARCHAR(255) NOT NULL,
    domain_name VARCHAR(255) NOT NULL,
    filename TEXT NOT NULL,
    entry_type ENUM('candidates', 'models', 'data') NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    metadata JSON NULL
)"""
COLUMNS = "application_name, domain_name, filename, entry_type, version, metadata"


def write_sql_catalogue(path, rows, ddl=SQLITE_DDL):
    """rows: (application, domain, filename, entry_type, version, metadata or raw str or None)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(ddl)
        conn.executemany(f"INSERT INTO entries ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         [row[:5] + (_json(row[5]),) for row in rows])
    conn.close()
    return str(path)


def _json(metadata):
    return metadata if metadata is None or isinstance(metadata, str) else json.dumps(metadata)


def write_kosh_catalogue(folder, name, datasets, config_key="ams_persistent_db"):
    """The first Kosh-era store: one ensemble named ``name``, datasets per entry and version.

    datasets: (entry, version, [paths], metadata). Writes ``ams_config.json`` as
    that store did (``AMSInstance.create_config``).
    """
    import kosh
    folder.mkdir(parents=True, exist_ok=True)
    store = kosh.connect(str(folder / "ams_store.sql"))
    try:
        ensemble = store.create_ensemble(name=name)
        for entry, version, paths, metadata in datasets:
            found = [d for d in ensemble.find_datasets(name=entry) if d.version == version]
            dataset = found[0] if found else ensemble.create(name=entry,
                                                             metadata={"version": version})
            mime = "zip" if entry == "models" else "hdf5"
            for path in paths:
                dataset.associate(path, mime_type=mime, metadata=dict(metadata),
                                  absolute_path=True)
    finally:
        store.close()
    config = folder / "ams_config.json"
    config.write_text(json.dumps({"name": name, config_key: {
        "path": str(folder), "type": "hdf5", "store": "ams_store.sql"}}, indent=6))
    return str(config)


def entries_by_path(store, **filters):
    return {e["filename"]: e for e in store.find(**filters)}


# ----------------------------------------------------------------------------- SQL table
@pytest.fixture
def sql_source(tmp_path, make_h5, make_model):
    """A SQL-table catalogue of two applications; returns (path, rows)."""
    d1, d2, d3 = make_h5("d1.h5"), make_h5("d2.h5"), make_h5("d3.h5")
    c1, m1 = make_h5("c1.h5"), make_model("m1.pt")
    o1 = make_h5("o1.h5")
    rows = [
        ("app", "EOS", d1, "data", 1, {"cycle": 3, "ratio": 0.25, "tag": "Été", "ok": True,
                                        "ids": [1, 2], "names": ["a", "B"]}),
        ("app", "EOS", d2, "data", 1, {"cycle": 4, "ratio": 1e-12, "tag": "x", "ok": False,
                                        "ids": [3], "names": ["c"]}),
        ("app", "EOS", d3, "data", 0, None),
        ("app", "eos", c1, "candidates", 7, {"date": "2023-01-02 03:04:05.000006"}),
        ("app", "EOS", m1, "models", 2, {"threshold": 0.5, "uq_type": "deltaUQ",
                                          "uq_aggregate": "mean", "val_error": 0.1,
                                          "test_error": 0.2, "note": "3"}),
        ("other", "EOS", o1, "data", 5, {"cycle": 9}),
    ]
    folder = tmp_path / "legacy"
    folder.mkdir()
    return write_sql_catalogue(folder / "old.db", rows), rows


def test_sql_table_full_exact_import(store, store_url, sql_source, unchanged):
    source, rows = sql_source
    report = store.import_from(source, progress=False)

    totals = report.to_dict()
    assert (totals["kind"], totals["imported"], totals["skipped_existing"],
            totals["imported_missing"], totals["skipped_missing"]) == ("sql-table", 6, 0, 0, 0)
    per_entry = {(r["application_name"], r["domain_name"], r["entry_type"]): r["imported"]
                 for r in totals["entries"]}
    assert per_entry == {("app", "EOS", "data"): 3, ("app", "eos", "candidates"): 1,
                         ("app", "EOS", "models"): 1, ("other", "EOS", "data"): 1}

    mine = entries_by_path(store)
    assert set(mine) == {row[2] for row in rows if row[0] == "app"}
    for application, domain, path, entry_type, version, metadata in rows[:-1]:
        entry = mine[path]
        assert (entry["application_name"], entry["domain_name"], entry["entry_type"],
                entry["version"]) == (application, domain, entry_type, version)
        got = dict(entry["metadata"])
        date = got.pop("date")
        expected = dict(metadata or {})
        assert date == expected.pop("date", date)  # kept when the source had one
        assert got == expected
        for key, value in expected.items():
            assert type(got[key]) is type(value), key
    assert store.get_data_versions("EOS", associate_files=True) == {
        0: [rows[2][2]], 1: sorted([rows[0][2], rows[1][2]])}

    with AMSDataStore("other", store_url) as other:
        (entry,) = other.find(domain_name="EOS", entry_type="data")
        assert (entry["filename"], entry["version"], entry["metadata"]["cycle"]) == \
            (rows[-1][2], 5, 9)

    guard = unchanged()  # a second run writes nothing
    again = store.import_from(source).to_dict()
    assert (again["imported"], again["skipped_existing"]) == (0, len(rows))
    with pytest.raises(ImportSourceError, match="no records of application 'nobody'.*'app'"):
        store.import_from(source, application_name="nobody")
    guard.check()


def test_missing_files_skipped_then_imported(store, tmp_path, make_h5, unchanged):
    present = make_h5("present.h5")
    gone = [str(tmp_path / "gone" / "g1.h5"), str(tmp_path / "gone" / "g2.pt")]
    source = write_sql_catalogue(tmp_path / "old.db", [
        ("app", "EOS", present, "data", 1, {"k": 1}),
        ("app", "EOS", gone[0], "data", 1, {"k": 2}),
        ("app", "EOS", gone[1], "models", 1, {"k": 3}),
    ])

    report = store.import_from(source, missing="skip").to_dict()
    assert (report["imported"], report["skipped_missing"], report["imported_missing"]) == (1, 2, 0)
    assert set(entries_by_path(store)) == {present}

    report = store.import_from(source, missing="import").to_dict()
    assert (report["imported"], report["imported_missing"], report["skipped_existing"],
            report["skipped_missing"]) == (2, 2, 1, 0)
    found = entries_by_path(store)
    assert set(found) == {present, *gone}
    assert (found[gone[1]]["entry_type"], found[gone[1]]["metadata"]["k"]) == ("models", 3)
    assert store.get_data_files("EOS", 1) == sorted([present, gone[0]])
    # Kosh's own attribute, which find() leaves out
    shas = {r.path: r.fast_sha for r in store._catalog.records("app", "EOS")}
    # What Kosh itself stores for a missing path, so that verification reports it missing.
    assert (shas[gone[0]], shas[present]) == (fast_sha(gone[0]), fast_sha(present))
    checked = store.verify("EOS")
    assert (sorted(e["filename"] for e in checked.missing), checked.changed) == (sorted(gone), [])

    guard = unchanged()
    report = store.import_from(source).to_dict()
    guard.check()
    assert (report["imported"], report["skipped_existing"]) == (0, 3)


def test_sql_table_on_mariadb(store, fresh_mariadb_database, make_h5):
    import mysql.connector

    from conftest import _server_params
    url = fresh_mariadb_database()
    path = make_h5("m.h5")
    conn = mysql.connector.connect(database=url.rsplit("/", 1)[1], use_pure=True,
                                   **_server_params())
    try:
        cursor = conn.cursor()
        cursor.execute(MARIADB_DDL)
        cursor.execute(f"INSERT INTO entries ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                       ("app", "EOS", path, "data", 4, json.dumps({"i": 7, "s": "Ω"})))
        conn.commit()
    finally:
        conn.close()
    before = snapshot_store(url)

    report = store.import_from(url).to_dict()

    assert (report["kind"], report["imported"]) == ("sql-table", 1)
    (entry,) = store.find()
    assert (entry["filename"], entry["version"], entry["metadata"]["i"],
            entry["metadata"]["s"]) == (path, 4, 7, "Ω")
    assert snapshot_store(url) == before, "the source changed"


def test_application_filter_and_progress(store, store_url, sql_source, capsys):
    source, rows = sql_source
    calls = []
    report = store.import_from(source, application_name="app",
                               progress=lambda *a: calls.append(a)).to_dict()
    assert report["imported"] == len(rows) - 1
    assert {e["application_name"] for e in store.find()} == {"app"}
    checking, importing = calls[:len(rows) - 1], calls[len(rows) - 1:]
    assert checking == [(n, len(rows) - 1) for n in range(1, len(rows))]
    assert importing[-1] == (len(rows) - 1, len(rows) - 1)

    with AMSDataStore("other", store_url) as other:
        assert other.import_from(source, application_name="other",
                                 progress=True).to_dict()["imported"] == 1
    err = capsys.readouterr().err
    assert "importing" in err and "1/1" in err and "[" in err


# ----------------------------------------------------------------------------- Kosh-era
def _h5(path):
    import h5py
    with h5py.File(path, "w") as handle:
        handle["inputs"] = [[0.0, 1.0]]
    return str(path)


@pytest.fixture(scope="module")
def kosh_era(tmp_path_factory, _model_bytes):
    """Kosh-era catalogues built once per module with plain Kosh (slow: ~2 s each).

    ``main``: application 'legacy-app', data v0 and v1, candidates v0, models v0
    (config key ``ams_persistent_db``); ``shared``: a path in two datasets, a
    missing file, a file changed since (config key ``db``); ``bare``: main's
    Kosh file alone, no config; ``odd``: main plus datasets the importer refuses.
    """
    import shutil

    import kosh
    root = tmp_path_factory.mktemp("kosh-era")
    files = root / "files"
    files.mkdir()
    d0, d1, d2, cand = (_h5(files / name) for name in ("k0.h5", "k1.h5", "k2.h5", "kc.h5"))
    model = files / "km.pt"
    model.write_bytes(_model_bytes)
    layout = [
        ("data", 0, [d0], {"problem": "eos", "date": "2022-05-06 07:08:09.101112", "n": 2}),
        ("data", 1, [d1, d2], {"problem": "eos", "date": "2022-06-06 07:08:09.000001",
                               "weights": [0.5, 1.5]}),
        ("candidates", 0, [cand], {"date": "2022-07-01 00:00:00.000000"}),
        ("models", 0, [str(model)], {"date": "2022-08-01 00:00:00.000000", "val_error": 0.01}),
    ]
    main = write_kosh_catalogue(root / "main", "legacy-app", layout)

    shared, gone = _h5(files / "shared.h5"), str(files / "gone.h5")
    shared_config = write_kosh_catalogue(root / "shared", "app", [
        ("data", 0, [shared], {"a": 1}), ("data", 1, [shared, gone], {"a": 2})], config_key="db")
    with open(shared, "ab") as handle:  # changed since the old store registered it
        handle.write(b"appended")

    (root / "bare").mkdir()
    bare = shutil.copy(root / "main" / "ams_store.sql", root / "bare" / "old.sql")

    shutil.copytree(root / "main", root / "odd")
    odd = root / "odd" / "ams_config.json"
    odd.write_text(odd.read_text().replace(str(root / "main"), str(root / "odd")))
    store = kosh.connect(str(root / "odd" / "ams_store.sql"))
    (ensemble,) = store.find_ensembles(name="legacy-app")
    ensemble.create(name="weights", metadata={"version": 0})
    ensemble.create(name="data", metadata={"version": "one"})
    store.close()
    return {"main": main, "layout": layout, "shared": shared_config, "shared_file": shared,
            "gone": gone, "bare": str(bare), "odd": str(odd)}


def test_kosh_era_full_exact_import(store, store_url, kosh_era):
    layout = kosh_era["layout"]
    report = store.import_from(kosh_era["main"]).to_dict()
    assert (report["kind"], report["imported"]) == ("kosh", 5)

    with AMSDataStore("legacy-app", store_url) as legacy:
        found = entries_by_path(legacy)
        assert len(found) == 5
        for entry_type, version, paths, metadata in layout:
            for path in paths:
                entry = found[path]
                assert (entry["application_name"], entry["domain_name"], entry["entry_type"],
                        entry["version"], entry["metadata"]) == \
                    ("legacy-app", "legacy-app", entry_type, version, metadata)
        assert legacy.get_data_versions("legacy-app") == [0, 1]
        assert legacy.get_model_files("legacy-app", "latest") == layout[3][2]
    assert store.find() == []  # nothing was written under this store's own application

    folder = os.path.dirname(kosh_era["main"])  # the folder and the Kosh file: same store
    again = store.import_from(folder).to_dict()
    assert (again["kind"], again["imported"], again["skipped_existing"]) == ("kosh", 0, 5)
    again = store.import_from(os.path.join(folder, "ams_store.sql")).to_dict()
    assert (again["kind"], again["imported"], again["skipped_existing"]) == ("kosh", 0, 5)


def test_kosh_era_checksum_kept_and_duplicate_path_skipped(store, kosh_era):
    shared, gone = kosh_era["shared_file"], kosh_era["gone"]
    report = store.import_from(kosh_era["shared"]).to_dict()

    assert (report["imported"], report["imported_missing"], report["skipped_duplicate"]) == \
        (2, 1, 1)
    found = entries_by_path(store)
    assert (found[shared]["version"], found[gone]["version"]) == (0, 1)
    # Kosh's own attribute, which find() leaves out
    shas = {r.path: r.fast_sha for r in store._catalog.records("app", "app")}
    assert shas[shared] != fast_sha(shared)  # the old store's checksum, not today's
    assert shas[gone] == fast_sha(gone)      # what Kosh computes for a missing path

    # The Kosh file alone (no ams_config.json): the application comes from the argument.
    report = store.import_from(kosh_era["bare"], application_name="app").to_dict()
    assert (report["kind"], report["imported"]) == ("kosh", 5)
    assert store.get_data_versions("legacy-app") == [0, 1]


# ----------------------------------------------------------------------------- corrupt
def _sqlite(tmp_path, name, *statements):
    path = tmp_path / "bad" / name
    path.parent.mkdir(exist_ok=True)
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    return str(path)


def _rows(good, *bad):
    """An entries table with one good row and the given bad (domain, file, entry, version, meta)."""
    values = [("app", "EOS", good, "data", 1, "{}")] + [("app",) + tuple(row) for row in bad]
    return [SQLITE_DDL] + [
        f"INSERT INTO entries ({COLUMNS}) VALUES "
        + "(" + ", ".join("NULL" if v is None else repr(v) if not isinstance(v, str)
                          else "'" + v.replace("'", "''") + "'" for v in row) + ")"
        for row in values]


def corrupt_sources(tmp_path, make_h5):
    good = make_h5("good.h5")
    not_h5 = tmp_path / "bad" / "not.h5"
    not_h5.parent.mkdir(exist_ok=True)
    not_h5.write_bytes(b"plain text")
    garbage = tmp_path / "bad" / "garbage.db"
    garbage.write_bytes(b"SQLite format 3\x00" + b"\x07" * 200)
    text = tmp_path / "bad" / "notes.txt"
    text.write_text("hello")
    (tmp_path / "bad" / "empty-config").mkdir()
    (tmp_path / "bad" / "empty-config" / "ams_config.json").write_text("{}")
    (tmp_path / "bad" / "lost-store").mkdir()
    (tmp_path / "bad" / "lost-store" / "ams_config.json").write_text(json.dumps(
        {"name": "x", "ams_persistent_db": {"path": ".", "store": "nowhere.sql"}}))
    return [
        ("not there", str(tmp_path / "nowhere.db"), "does not exist"),
        ("not SQLite", str(text), "not a SQLite database"),
        ("unreadable SQLite", str(garbage), "cannot read"),
        ("no entries table", _sqlite(tmp_path, "other.db", "CREATE TABLE t (x)"),
         "neither an older AMS store.*tables: t"),
        ("missing columns", _sqlite(tmp_path, "cols.db",
                                    "CREATE TABLE entries (id, domain_name, filename)"),
         "lacks the column.*application_name, entry_type, version, metadata"),
        ("bad JSON", _sqlite(tmp_path, "json.db", *_rows(good, ("EOS", "/x/a.h5", "data", 1,
                                                                "{not json"))),
         "entry id 2: metadata is not JSON"),
        ("JSON not an object", _sqlite(tmp_path, "list.db", *_rows(good, (
            "EOS", "/x/a.h5", "data", 1, "[1, 2]"))), "entry id 2: metadata must be a JSON object"),
        ("unstorable value", _sqlite(tmp_path, "none.db", *_rows(good, (
            "EOS", "/x/a.h5", "data", 1, '{"k": null}'))), "entry id 2: .*None"),
        ("text version", _sqlite(tmp_path, "v.db", *_rows(good, ("EOS", "/x/a.h5", "data", "two",
                                                                 "{}"))),
         "entry id 2: version must be an integer, not 'two'"),
        ("float version", _sqlite(tmp_path, "f.db", *_rows(good, ("EOS", "/x/a.h5", "data", 1.5,
                                                                  "{}"))),
         "version must be an integer, not 1.5"),
        ("unknown entry type", _sqlite(tmp_path, "e.db", *_rows(good, ("EOS", "/x/a.h5", "model",
                                                                       1, "{}"))),
         "entry id 2: unknown entry type 'model'"),
        ("relative path", _sqlite(tmp_path, "r.db", *_rows(good, ("EOS", "rel/a.h5", "data", 1,
                                                                  "{}"))),
         "must be an absolute path, not 'rel/a.h5'"),
        ("reserved key", _sqlite(tmp_path, "k.db", *_rows(good, ("EOS", "/x/a.h5", "data", 1,
                                                                 '{"uri": "x"}'))),
         "key 'uri' is reserved"),
        ("wrong file format", _sqlite(tmp_path, "fmt.db", *_rows(good, ("EOS", str(not_h5),
                                                                        "data", 1, "{}"))),
         "not of their entry's format.*not a readable HDF5 file"),
        ("config without name", str(tmp_path / "bad" / "empty-config"), "is not an AMS config"),
        ("config naming no store", str(tmp_path / "bad" / "lost-store" / "ams_config.json"),
         "nowhere.sql.*does not exist"),
    ]


def test_corrupt_sources_and_bad_arguments_change_nothing(store, tmp_path, make_h5, kosh_era,
                                                          sql_source, unchanged):
    cases = corrupt_sources(tmp_path, make_h5) + [
        ("Kosh file, no config", kosh_era["bare"], "no application: give application_name"),
        ("Kosh datasets", kosh_era["odd"],
         r"2 problem.*(unknown entry type 'weights'|version must be an integer, not 'one')"),
    ]
    for label, source, message in cases:
        guard = unchanged()
        with pytest.raises(ImportSourceError, match=message) as caught:
            store.import_from(source)
        assert isinstance(caught.value, ValueError), label
        guard.check()

    guard = unchanged()
    with pytest.raises(InvalidArgumentError, match="missing must be 'import' or 'skip'"):
        store.import_from(sql_source[0], missing="keep")
    with pytest.raises(TypeError, match="progress"):
        store.import_from(sql_source[0], progress="yes")
    guard.check()
    assert store.find() == []
