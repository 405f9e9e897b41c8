"""The ``ams-store`` command line, in-process (``main(argv)``) on both backends, plus one real run.

Every command's effect is checked through the library too, and every rejected
call leaves the store and the files exactly as they were.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ams import AMSDataStore
from ams.cli import COMMANDS, _Progress, build_parser

SECRET = "s3cr3t-Pa55"


def model_args(path, **overrides):
    values = {"--threshold": 0.5, "--uq-type": "DeltaUQ", "--uq-aggregate": "mean",
              "--val-error": 0.03, "--test-error": 0.02, **overrides}
    args = ["add", "--entry", "models", "--domain", "EOS", "--file", path]
    for key, value in values.items():
        if value is not None:
            args += [key, value]
    return args


# ------------------------------------------------------------------ round trip
def test_round_trip(cli, store_url, make_h5, make_model, tmp_path):
    created = cli("create")
    assert (created.code, created.err) == (0, ""), created.err
    assert created.json["created"] is True and created.json["application_name"] == "app"
    assert cli("create").json["created"] is False  # already there: nothing new

    data = [make_h5("run-1.h5"), make_h5("run-2.h5")]
    added = cli("add", "--entry", "data", "--domain", "EOS", "--file", data[0], "--file", data[1],
                "--metadata", '{"cycle": 3, "tags": ["a", "b"]}')
    assert added.code == 0, added.err
    assert added.json == {"domain_name": "EOS", "entry_type": "data", "version": 1,
                          "files": sorted(data)}
    candidates = [make_h5(f"cand-{i}.h5") for i in range(3)]
    added = cli("add", "--entry", "candidates", "--domain", "EOS",
                *[arg for path in candidates for arg in ("--file", path)])
    assert (added.code, added.json["version"]) == (0, 1)
    model = make_model("eos.pt")
    added = cli(*model_args(model), "--metadata", '{"trainer": "adam"}')
    assert (added.code, added.json["version"], added.json["files"]) == (0, 1, [model])
    assert cli(*model_args(make_model("eos-2.pt"), **{"--val-error": 0.2})).json["version"] == 2

    everything = cli("query")
    assert everything.code == 0 and everything.out.endswith("\n")
    assert everything.out == json.dumps(everything.json, sort_keys=True, indent=2,
                                        ensure_ascii=False) + "\n"
    assert len(everything.json) == 7
    assert set(everything.json[0]) == {"id", "application_name", "domain_name", "filename",
                                       "entry_type", "version", "metadata"}
    by_cycle = cli("query", "--domain", "EOS", "--metadata", '{"cycle": 3}', "--field", "filename")
    assert by_cycle.out.splitlines() == sorted(data)
    best = cli("query", "--entry", "models", "--metadata", '{"val_error": {"<": 0.1}}')
    assert [(e["filename"], e["metadata"]["uq_type"], e["metadata"]["trainer"])
            for e in best.json] == [(model, "deltaUQ", "adam")]
    assert cli("query", "--entry", "models", "--version", "latest",
               "--field", "val_error").out == "0.2\n"
    assert cli("query", "--file", data[0], "--field", "tags").out == '["a", "b"]\n'
    assert cli("query", "--domain", "nowhere").json == []

    assert cli("versions", "--domain", "EOS", "--entry", "models").json == [1, 2]
    assert cli("versions", "--domain", "EOS", "--entry", "models").err == ""  # quiet success
    assert cli("versions", "--domain", "EOS", "--entry", "data", "--files").json == {
        "1": sorted(data)}

    dest = tmp_path / "promoted"
    moved = cli("move", "--domain", "EOS", "--from", "candidates", "--to", "data",
                "--dest", dest, "--file", candidates[0], "--file", candidates[1])
    assert moved.code == 0, moved.err
    assert moved.json == [str(dest / "cand-0.h5"), str(dest / "cand-1.h5")]
    assert all(os.path.isfile(p) for p in moved.json)
    assert not os.path.exists(candidates[0]) and not os.path.exists(candidates[1])
    assert cli("versions", "--domain", "EOS", "--entry", "data").json == [1, 2]

    removed = cli("remove", "--entry", "data", "--domain", "EOS", "--version", "latest", "--purge")
    assert removed.code == 0, removed.err
    assert removed.json["removed"] == moved.json and removed.json["purged"] == moved.json
    assert not any(os.path.exists(p) for p in moved.json)
    removed = cli("remove", "--entry", "data", "--domain", "EOS", "--file", data[0])
    assert (removed.code, removed.json["removed"], removed.json["purged"]) == (0, [data[0]], [])
    assert os.path.isfile(data[0])  # no --purge: the file stays
    removed = cli("remove", "--entry", "candidates", "--domain", "EOS", "--all")
    assert removed.json["removed"] == [candidates[2]]

    with AMSDataStore("app", store_url) as store:  # the library sees what the CLI did
        assert store.get_data_files("EOS") == [data[1]]
        assert store.get_candidate_files("EOS") == []
        assert store.get_model_versions("EOS") == [1, 2]
        assert store.find("EOS", filename=data[1])[0]["metadata"]["tags"] == ["a", "b"]


SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])  # parsing, not storage


@SQLITE_ONLY
def test_environment_and_options_after_the_command(run_cli, store_url, make_h5, monkeypatch):
    monkeypatch.setenv("AMS_STORE_URL", store_url)
    monkeypatch.setenv("AMS_APP_NAME", "env-app")
    path = make_h5()
    assert run_cli("create").code == 0
    assert run_cli("add", "--entry", "data", "--domain", "EOS", "--file", path).code == 0
    assert run_cli("query", "--field", "application_name").out == "env-app\n"
    # --name after the command overrides the environment: another application sees nothing
    assert run_cli("query", "--name", "other").json == []


def test_copy_to(cli, store, unchanged, make_h5, make_model, tmp_path):
    sources = [make_h5("a.h5"), make_h5("b.h5")]
    dest = tmp_path / "copies" / "EOS"
    added = cli("add", "--entry", "data", "--domain", "EOS", "--copy-to", dest,
                "--file", sources[0], "--file", sources[1])
    assert added.code == 0, added.err
    copies = [str(dest / "a.h5"), str(dest / "b.h5")]
    assert added.json["files"] == copies
    assert store.get_data_files("EOS") == copies
    assert all(Path(s).read_bytes() == Path(c).read_bytes() for s, c in zip(sources, copies))
    model = make_model("m.pt")
    added = cli(*model_args(model), "--copy-to", dest)
    assert added.json["files"] == [str(dest / "m.pt")]
    assert "path" not in store.find(filename=str(dest / "m.pt"))[0]["metadata"]  # the uri is the path

    bad = tmp_path / "files" / "notes.h5"
    bad.write_text("not HDF5")
    guard = unchanged()
    again = cli("add", "--entry", "data", "--domain", "EOS", "--copy-to", dest, "--file", sources[0])
    assert again.code == 1
    assert "already exists; refusing to overwrite" in again.error_line
    failed = cli("add", "--entry", "data", "--domain", "EOS", "--copy-to", tmp_path / "new" / "dir",
                 "--file", sources[1], "--file", bad)
    assert failed.code == 1 and "notes.h5" in failed.error_line
    assert not (tmp_path / "new").exists()  # the copies and the folders made for them are gone
    guard.check()


# ------------------------------------------------------------------ errors
def test_bad_url(run_cli):
    result = run_cli("--url", "ftp://host/x", "--name", "app", "query")
    assert result.code == 1
    assert "unsupported store URL scheme 'ftp'" in result.error_line


def test_missing_store_is_not_created_by_a_read(run_cli, tmp_path):
    path = tmp_path / "nowhere" / "ams.db"
    result = run_cli("--url", f"sqlite:///{path}", "--name", "app", "query")
    assert result.code == 1 and "no store at" in result.error_line
    assert not path.exists() and not path.parent.exists()


def test_rejected_adds_change_nothing(cli, store, unchanged, make_h5, tmp_path):
    present, weights = make_h5(), make_h5("weights.h5")
    text = tmp_path / "files" / "table.csv"
    text.write_text("a,b\n1,2\n")
    guard = unchanged()
    cases = [  # (arguments, what the error line says)
        (["--file", present, "--file", tmp_path / "missing.h5"], "missing.h5"),  # missing file
        (["--file", text], "table.csv"),                                         # not HDF5
        (["--file", present, "--metadata", "{cycle: 3}"], "--metadata is not valid JSON"),
        (["--file", present, "--metadata", "[1, 2]"], "--metadata must be a JSON object"),
        (["--file", present, "--metadata", '{"cycle": null}'], "None"),
        (["--file", present, "--version", "-1"], "-1"),
    ]
    for argv, message in cases:
        result = cli("add", "--entry", "candidates", "--domain", "EOS", *argv)
        assert result.code == 1 and result.out == "", argv
        assert message in result.error_line, (argv, result.err)
    not_a_model = cli(*model_args(weights))
    assert not_a_model.code == 1 and "weights.h5" in not_a_model.error_line
    bad_query = cli("query", "--metadata", "{cycle: 3}")
    assert bad_query.code == 1 and "not valid JSON" in bad_query.error_line
    guard.check()


def test_unknown_entry_and_unregistered_files(cli, store, unchanged, make_h5, tmp_path):
    path, stranger = make_h5(), make_h5("stranger.h5")
    store.add_data("EOS", [path])
    guard = unchanged()
    usage = cli("query", "--entry", "weights")
    assert usage.code == 2 and "invalid choice: 'weights'" in usage.err and usage.out == ""
    moved = cli("move", "--domain", "EOS", "--from", "candidates", "--to", "data",
                "--dest", tmp_path / "dest", "--file", stranger)
    assert moved.code == 1 and "not registered as candidates" in moved.error_line
    removed = cli("remove", "--entry", "data", "--domain", "EOS", "--file", stranger)
    assert removed.code == 1 and removed.json["not_found"] == [stranger]
    assert "1 file(s) not in EOS/data" in removed.error_line
    guard.check()
    assert store.get_data_files("EOS") == [path]


def test_remove_refuses_everything_without_a_filter(cli, store, unchanged, make_h5):
    paths = [make_h5(), make_h5()]
    store.add_data("EOS", paths)
    guard = unchanged()
    result = cli("remove", "--entry", "data", "--domain", "EOS", "--purge")
    assert result.code == 2 and "refusing to remove every data file of 'EOS'" in result.err
    both = cli("remove", "--entry", "data", "--domain", "EOS", "--all", "--version", "1")
    assert both.code == 2 and "--all cannot be combined with --version" in both.err
    empty = cli("remove", "--entry", "data", "--domain", "EOS", "--metadata", "{}")
    assert empty.code == 1 and "use --all" in empty.error_line
    guard.check()
    removed = cli("remove", "--entry", "data", "--domain", "EOS", "--all", "--purge")
    assert removed.code == 0 and removed.json["purged"] == sorted(paths)
    assert store.get_data_versions("EOS") == []


@SQLITE_ONLY
def test_usage_errors(run_cli, cli, store, unchanged, make_h5, make_model):
    data, model, second = make_h5(), make_model(), make_model()
    guard = unchanged()
    cases = [
        (["add", "--entry", "data", "--domain", "EOS", "--file", data, "--threshold", "1"],
         "--threshold only apply to --entry models"),
        (model_args(model) + ["--file", second], "one model file per call, not 2"),
        (model_args(model, **{"--val-error": None}), "--entry models needs --val-error"),
        (["add", "--entry", "data", "--domain", "EOS", "--file", data, "--version", "x"],
         "invalid int value"),
        (["query", "--version", "newest"], "expected an integer or 'latest'"),
        (["query", "--file", data, "--metadata", "{}"], "cannot be combined"),
        (["move", "--domain", "EOS", "--from", "candidates", "--to", "data", "--file", data],
         "the following arguments are required: --dest"),
        ([], "the following arguments are required: command"),
    ]
    for argv, message in cases:
        result = cli(*argv)
        assert result.code == 2 and message in result.err, (argv, result.err)
        assert result.out == ""
    assert "give --url or set AMS_STORE_URL" in run_cli("--name", "app", "query").err
    assert run_cli("--name", "app", "query").code == 2
    assert run_cli("--url", "x.db", "query").code == 2
    bad_uq = cli(*model_args(model, **{"--uq-type": "gaussian"}))
    assert bad_uq.code == 1 and "uq_type must be one of" in bad_uq.error_line
    needs_aggregate = cli(*model_args(model, **{"--uq-aggregate": None}))
    assert needs_aggregate.code == 1 and "needs a uq_aggregate" in needs_aggregate.error_line
    guard.check()
    store.add_data("EOS", [data])
    result = cli("query", "--field", "colour")
    assert result.code == 1 and "no matching entry has a field 'colour'" in result.error_line


def test_a_password_never_shows(run_cli, monkeypatch):
    url = f"mariadb://ams:{SECRET}@127.0.0.1:1/catalogue"  # nothing listens on port 1
    plain = run_cli("--url", url, "--name", "app", "create")
    assert plain.code == 1 and "Can't connect" in plain.error_line
    verbose = run_cli("-v", "--url", url, "--name", "app", "query")
    assert verbose.code == 1 and "Traceback" in verbose.err
    assert verbose.err.splitlines()[-1].startswith("Error: ")
    misplaced = run_cli("--name", "app", "query", url)  # argparse echoes unknown arguments
    assert misplaced.code == 2 and "unrecognized arguments: mariadb://ams:***@" in misplaced.err
    monkeypatch.setenv("AMS_STORE_URL", url)
    from_env = run_cli("--name", "app", "versions", "--domain", "EOS", "--entry", "data")
    assert from_env.code == 1
    for result in (plain, verbose, misplaced, from_env):
        assert SECRET not in result.out + result.err


def test_a_wrong_password_on_a_real_server(run_cli, fresh_mariadb_database):
    scheme, rest = fresh_mariadb_database().split("://", 1)
    user, _, where = rest.partition("@")
    if ":" in user:
        pytest.skip("the test server's account has a password")
    url = f"{scheme}://{user}:{SECRET}@{where}"
    result = run_cli("-v", "--url", url, "--name", "app", "create")
    assert result.code == 1 and "Access denied" in result.err
    assert SECRET not in result.out + result.err


# ------------------------------------------------------------------ verify
def test_verify(cli, store, make_h5):
    if not hasattr(AMSDataStore, "verify"):
        pytest.skip("AMSDataStore.verify does not exist yet")
    paths = [make_h5(), make_h5()]
    store.add_data("EOS", paths)
    clean = cli("verify", "--domain", "EOS")
    assert (clean.code, clean.err) == (0, "")
    assert clean.json["ok"] is True and clean.json["checked"] == 2
    os.remove(paths[0])
    broken = cli("verify")
    assert broken.code == 1 and "verify found problems" in broken.error_line
    assert [entry["filename"] for entry in broken.json["missing"]] == [paths[0]]
    assert store.get_data_files("EOS") == sorted(paths)  # verify alone changes nothing
    repaired = cli("verify", "--repair")
    assert repaired.code == 0 and repaired.json["repaired"] == [paths[0]]
    assert cli("verify").code == 0
    assert store.get_data_files("EOS") == [paths[1]]


# ------------------------------------------------------------------ help and progress
def _subparsers(parser: argparse.ArgumentParser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_has_help_and_an_example(run_cli):
    parser = build_parser()
    subparsers = _subparsers(parser)
    assert set(subparsers) == set(COMMANDS) >= {"create", "add", "remove", "query", "versions",
                                                "move", "verify"}
    for name, spec in COMMANDS.items():
        assert spec.help.strip() and spec.example.startswith("ams-store "), name
        sub = subparsers[name]
        undocumented = [a.dest for a in sub._actions if not (a.help and a.help.strip())]
        assert not undocumented, f"{name}: options without help: {undocumented}"
        result = run_cli(name, "--help")
        assert result.code == 0 and spec.help in result.out, name
        assert "example:\n  ams-store " in result.out, f"{name} --help shows no example"
    top = run_cli("--help")
    assert top.code == 0 and all(name in top.out for name in COMMANDS)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only():
    terminal = _Terminal()
    bar = _Progress("checking", 40, verbose=False, stream=terminal)
    for done in range(1, 41):
        bar(done, 40)
    assert terminal.getvalue().startswith("\rchecking [")
    assert terminal.getvalue().endswith(f"[{'#' * 30}] 40/40\n")
    pipe = io.StringIO()
    quiet = _Progress("checking", 40, verbose=False, stream=pipe)
    for done in range(1, 41):
        quiet(done, 40)
    assert pipe.getvalue() == ""


def test_progress_of_a_large_add_is_a_count_with_verbose(run_cli, make_h5, tmp_path):
    url = f"sqlite:///{tmp_path / 'ams.db'}"
    assert run_cli("--url", url, "--name", "app", "create").code == 0
    files = [arg for i in range(12) for arg in ("--file", make_h5(rows=1))]
    quiet = run_cli("--url", url, "--name", "app", "add", "--entry", "data", "--domain", "A", *files)
    assert quiet.code == 0 and quiet.err == ""
    files = [arg for i in range(12) for arg in ("--file", make_h5(rows=1))]
    loud = run_cli("--url", url, "--name", "app", "add", "-v", "--entry", "data", "--domain", "A",
                   "--copy-to", tmp_path / "copies", *files)
    assert loud.code == 0, loud.err
    assert "ams-store: copying: 12/12 files" in loud.err
    assert "ams-store: checking: 12/12 files" in loud.err
    assert "added 12 file(s) to A/data version 2" in loud.err  # the library's log, with -v


# ------------------------------------------------------------------ the installed script
def test_installed_console_script_round_trip(tmp_path, make_h5):
    script = shutil.which("ams-store")
    assert script, "ams-store is not installed: pip install -e ."
    env = {**os.environ, "AMS_STORE_URL": f"sqlite:///{tmp_path / 'db' / 'ams.db'}",
           "AMS_APP_NAME": "app"}

    def run(*argv):
        return subprocess.run([script, *map(str, argv)], env=env, capture_output=True, text=True,
                              timeout=120)

    data, candidate = make_h5("d.h5"), make_h5("c.h5")
    steps = [
        ("create",),
        ("add", "--entry", "candidates", "--domain", "EOS", "--file", candidate, "--file", data),
        ("move", "--domain", "EOS", "--from", "candidates", "--to", "data",
         "--dest", tmp_path / "data", "--file", candidate),
        ("versions", "--domain", "EOS", "--entry", "data", "--files"),
        ("remove", "--entry", "candidates", "--domain", "EOS", "--version", "1", "--purge"),
    ]
    outputs = []
    for argv in steps:
        done = run(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        outputs.append(json.loads(done.stdout))
    moved = str(tmp_path / "data" / "c.h5")
    assert outputs[2] == [moved] and outputs[3] == {"1": [moved]}
    assert outputs[4]["purged"] == [data] and not os.path.exists(data)
    failed = subprocess.run([sys.executable, "-m", "ams", "add", "--entry", "data", "--domain",
                             "EOS", "--file", str(tmp_path / "none.h5")], env=env,
                            capture_output=True, text=True, timeout=120)  # python -m ams
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("Error: ") and len(failed.stderr.splitlines()) == 1
    assert "none.h5" in failed.stderr
