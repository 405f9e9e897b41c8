"""Issue 16 (CLI rough edges) and issue 14 (the alias commands), in-process on both backends.

Each test names the issue item it covers; each fails on the code before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ams import AMSDataStore
from ams.errors import BadURLError
from ams.url import mask_secrets, mask_url, parse_store_url, password_of

SECRET = "p/ss?w#rd"




SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


def model_args(path):
    return ["add", "--entry", "models", "--domain", "EOS", "--file", path, "--threshold", "0.5",
            "--uq-type", "DeltaUQ", "--uq-aggregate", "mean", "--val-error", "0.03",
            "--test-error", "0.02"]


# ------------------------------------------------------------------ item 4: URLs and masking
@pytest.mark.parametrize("url", [
    "mariadb://u:p/ss@h:3306/db",     # was "bad port"
    "mariadb://u:p@s/s@h:3306/db",    # was "must name one database"
    "mariadb://u:p?ss@h/db",
    "mariadb://u:p#ss@db.example/db",
])
def test_unquoted_password_says_quote_it(url):
    with pytest.raises(BadURLError) as info:
        parse_store_url(url)
    message = str(info.value)
    assert "must be URL-quoted" in message and "urllib.parse.quote(password, safe='')" in message
    assert "bad port" not in message
    assert password_of(url) not in message


def test_quoted_password_and_unquoted_at_still_parse():
    from urllib.parse import quote
    quoted = parse_store_url(f"mariadb://u:{quote(SECRET, safe='')}@h:3307/db")
    assert (quoted.password, quoted.host, quoted.port) == (SECRET, "h", 3307)
    at = parse_store_url("mariadb://u:p@ss@h:3306/db")  # the last @ ends the password
    assert (at.password, at.host) == ("p@ss", "h")


def test_one_masker_for_urls_and_text():
    url = f"mariadb://ams:{SECRET}@db/x"
    assert mask_url(url) == "mariadb://ams:***@db/x"
    assert mask_secrets(f"failed: {url}", password_of(url)) == "failed: mariadb://ams:***@db/x"
    assert mask_secrets("mariadb://ams:pw@db/x") == "mariadb://ams:***@db/x"
    import ams.cli
    assert ams.cli.mask_secrets is mask_secrets  # the CLI uses the one in ams.url


def test_cli_unquoted_password_is_one_line_without_it(run_cli):
    result = run_cli("--url", f"mariadb://ams:{SECRET}@127.0.0.1:1/db", "--name", "app", "create")
    assert result.code == 1 and "URL-quoted" in result.error_line
    assert SECRET not in result.err and "p/ss" not in result.err


# ------------------------------------------------------------------ item 5: a str against numbers
@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_ordering_with_a_str_that_spells_a_number_is_refused(store, make_h5, op):
    from ams.errors import InvalidArgumentError
    store.add_data("EOS", [make_h5()], metadata={"val_error": 0.2})
    with pytest.raises(InvalidArgumentError, match=r"'val_error'.* got the str '0.5'"):
        store.search("EOS", "data", metadata={"val_error": {op: "0.5"}})
    expected = {"<": 0, "<=": 1, ">": 0, ">=": 1}[op]  # numbers still order numbers
    assert len(store.search("EOS", "data", metadata={"val_error": {op: 0.2}})) == expected


def test_ordering_str_values_with_a_str_still_works(store, make_h5):
    files = {day: make_h5() for day in ("2024-05-01", "2024-05-03", "2024-06-01")}
    for day, path in files.items():
        store.add_data("EOS", [path], metadata={"day": day, "label": "v" + day[-1]})
    later = store.search("EOS", "data", metadata={"day": {">=": "2024-05-02"}})
    assert sorted(e["filename"] for e in later) == sorted([files["2024-05-03"], files["2024-06-01"]])
    assert len(store.search("EOS", "data", metadata={"label": {"<": "v2"}})) == 2
    assert store.search("EOS", "data", metadata={"day": "2024-05-01"})  # equality untouched
    assert store.search("EOS", "data", metadata={"day": {"==": "3"}}) == []


@SQLITE_ONLY
def test_cli_query_with_a_str_number_is_one_error_line(cli, store):
    result = cli("query", "--metadata", '{"val_error": {"<": "0.5"}}')
    assert result.code == 1 and result.out == ""
    assert "'val_error'" in result.error_line and "the str '0.5'" in result.error_line


# ------------------------------------------------------------------ item 1: no store, no write
WRITES = [
    ["add", "--entry", "data", "--domain", "EOS", "--file", "{h5}"],
    ["remove", "--entry", "data", "--domain", "EOS", "--all"],
    ["move", "--domain", "EOS", "--from", "candidates", "--to", "data", "--dest", "{tmp}",
     "--file", "{h5}"],
    ["verify", "--repair"],
    ["alias", "set", "--domain", "EOS", "--name", "champion", "--version", "1"],
    ["alias", "rm", "--domain", "EOS", "--name", "champion"],
]


def _argv(template, h5, tmp):
    return [part.format(h5=h5, tmp=tmp) for part in template]


@pytest.mark.parametrize("template", WRITES, ids=lambda t: " ".join(t[:2]))
def test_a_write_to_a_missing_sqlite_store_refuses_and_creates_nothing(run_cli, make_h5, tmp_path,
                                                                      template):
    path = tmp_path / "typo" / "ams.db"
    result = run_cli("--url", f"sqlite:///{path}", "--name", "app",
                     *_argv(template, make_h5(), tmp_path / "dest"))
    assert result.code == 1 and result.out == ""
    assert result.error_line == f"Error: no store at {path}; create it with `ams-store create`"
    assert not path.exists() and not path.parent.exists() and not (tmp_path / "dest").exists()


def test_an_empty_file_is_no_store_either(run_cli, make_h5, tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    result = run_cli("--url", path, "--name", "app", "add", "--entry", "data", "--domain", "EOS",
                     "--file", make_h5())
    assert result.code == 1 and "no store at" in result.error_line
    assert path.stat().st_size == 0


def test_create_and_import_still_make_the_store(run_cli, tmp_path):
    path = tmp_path / "new" / "ams.db"
    assert run_cli("--url", path, "--name", "app", "create").code == 0 and path.is_file()
    other = tmp_path / "other" / "ams.db"
    old = tmp_path / "old.db"
    import sqlite3
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, application_name TEXT, "
                     "domain_name TEXT, filename TEXT, entry_type TEXT, version INTEGER, "
                     "metadata TEXT)")
    imported = run_cli("--url", other, "--name", "app", "import", "--from", old)
    assert imported.code == 0, imported.err
    assert other.is_file()


def test_a_write_to_a_mariadb_database_without_a_store_refuses(run_cli, fresh_mariadb_database,
                                                               make_h5):
    from conftest import snapshot_store
    url = fresh_mariadb_database()
    result = run_cli("--url", url, "--name", "app", "add", "--entry", "data", "--domain", "EOS",
                     "--file", make_h5())
    database = url.rsplit("/", 1)[1]
    assert result.code == 1
    assert result.error_line.startswith("Error: no store at ")
    assert result.error_line.endswith(f"/{database}; create it with `ams-store create`")
    assert snapshot_store(url) == {}  # no table was created
    reading = run_cli("--url", url, "--name", "app", "query")
    assert reading.code == 1 and "create it with `ams-store create`" in reading.error_line


# ------------------------------------------------------------------ item 4: a folder as --url
@pytest.mark.parametrize("command", [["query"], ["versions", "--domain", "EOS", "--entry", "data"],
                                     ["remove", "--entry", "data", "--domain", "EOS", "--all"],
                                     ["create"]])
def test_a_folder_as_url_says_it_is_a_folder(run_cli, tmp_path, command):
    folder = tmp_path / "sim"
    folder.mkdir()
    result = run_cli("--url", folder, "--name", "app", *command)
    assert result.code == 1
    assert result.error_line == f"Error: no store at {folder}: it is a folder, not a store file"
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------------ item 2: --trained-on
def test_add_model_trained_on(cli, store, make_h5, make_model):
    store.add_data("EOS", [make_h5()])
    store.add_data("EOS", [make_h5()])
    model = make_model()
    added = cli(*model_args(model), "--trained-on", "1,2")
    assert added.code == 0, added.err
    lineage = store.model_lineage("EOS", added.json["version"])
    assert lineage["data_versions"] == [1, 2] and len(lineage["present"]) == 2
    unknown = cli(*model_args(make_model()), "--trained-on", "7")
    assert unknown.code == 1 and "7" in unknown.error_line


@SQLITE_ONLY
def test_trained_on_is_for_models_only_and_takes_integers(cli, store, make_h5, make_model):
    data = cli("add", "--entry", "data", "--domain", "EOS", "--file", make_h5(), "--trained-on", "1")
    assert data.code == 2 and "--trained-on only apply to --entry models" in data.err
    bad = cli(*model_args(make_model()), "--trained-on", "1,x")
    assert bad.code == 2 and "expected data versions like 1,2" in bad.err
    assert store.get_model_versions("EOS") == [] and store.get_data_versions("EOS") == []


# ------------------------------------------------------------------ item 3: one problem, one line
def test_remove_of_an_unregistered_file_is_one_line_in_a_real_run(tmp_path, make_h5):
    url = f"sqlite:///{tmp_path / 'ams.db'}"
    with AMSDataStore("app", url) as store:
        store.add_data("EOS", [make_h5()])
    env = {**os.environ, "AMS_STORE_URL": url, "AMS_APP_NAME": "app",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    stranger = make_h5("stranger.h5")
    done = subprocess.run([sys.executable, "-m", "ams", "remove", "--entry", "data", "--domain",
                           "EOS", "--file", stranger], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and json.loads(done.stdout)["not_found"] == [stranger]
    assert done.stderr == f"Error: 1 file(s) not in EOS/data: {stranger}\n"


@SQLITE_ONLY
def test_the_reported_warning_still_shows_with_verbose(cli, store, make_h5):
    store.add_data("EOS", [make_h5()])
    stranger = make_h5("stranger.h5")
    quiet = cli("remove", "--entry", "data", "--domain", "EOS", "--file", stranger)
    assert quiet.code == 1 and "not in EOS/data" in quiet.error_line
    loud = cli("-v", "remove", "--entry", "data", "--domain", "EOS", "--file", stranger)
    assert loud.code == 1
    assert "WARNING ams.store: 1 file(s) to remove are not in EOS/data" in loud.err
    assert loud.err.splitlines()[-1].startswith("Error: ")


# ------------------------------------------------------------------ item 6: move --in-place
def test_move_in_place(cli, store, make_h5):
    candidates = [make_h5("c1.h5"), make_h5("c2.h5")]
    store.add_candidates("EOS", candidates, metadata={"cycle": 4})
    before = {path: os.stat(path).st_ino for path in candidates}
    moved = cli("move", "--domain", "EOS", "--from", "candidates", "--to", "data", "--in-place",
                "--file", candidates[0], "--file", candidates[1])
    assert moved.code == 0, moved.err
    assert moved.json == candidates
    assert {path: os.stat(path).st_ino for path in candidates} == before  # not copied
    assert store.get_data_files("EOS") == candidates and store.get_candidate_files("EOS") == []
    assert store.find("EOS", filename=candidates[0])[0]["metadata"]["cycle"] == 4
    back = cli("move", "--domain", "EOS", "--from", "data", "--to", "candidates", "--in-place",
               "--dest", os.path.dirname(candidates[0]), "--file", candidates[0])
    assert back.code == 0 and store.get_candidate_files("EOS") == [candidates[0]]


@SQLITE_ONLY
def test_move_in_place_usage(cli, store, make_h5, tmp_path):
    one, other = make_h5("a.h5"), make_h5("b.h5", directory=tmp_path / "elsewhere")
    store.add_candidates("EOS", [one, other])
    base = ["move", "--domain", "EOS", "--from", "candidates", "--to", "data"]
    spread = cli(*base, "--in-place", "--file", one, "--file", other)
    assert spread.code == 2 and "in 2 folders" in spread.err
    wrong = cli(*base, "--in-place", "--dest", tmp_path, "--file", one)
    assert wrong.code == 2 and "--dest must be their folder" in wrong.err
    no_dest = cli(*base, "--file", one)
    assert no_dest.code == 2 and "--dest" in no_dest.err
    assert store.get_data_files("EOS") == []


# ------------------------------------------------------------------ @alias selectors
def test_every_selecting_version_option_passes_an_alias_through():
    from ams.cli import build_parser
    parser = build_parser()
    for argv in (["query"], ["remove", "--entry", "data", "--domain", "D"],
                 ["lineage", "--domain", "D"],
                 ["alias", "set", "--domain", "D", "--name", "n"]):
        assert parser.parse_args(argv + ["--version", "@champion"]).version == "@champion", argv
        assert parser.parse_args(argv + ["--version", "3"]).version == 3


# ------------------------------------------------------------------ item 8: ams-store alias
def test_alias_commands(cli, store, make_model):
    from datetime import datetime, timezone
    for _ in range(3):
        cli(*model_args(make_model()))
    assert store.get_model_versions("EOS") == [1, 2, 3]
    first = cli("alias", "set", "--domain", "EOS", "--name", "champion", "--version", "1")
    assert (first.code, first.err) == (0, ""), first.err
    assert first.json == {"domain_name": "EOS", "entry_type": "models", "alias": "champion",
                          "version": 1, "previous": None}
    between = datetime.now(timezone.utc).isoformat()
    time.sleep(0.05)
    moved = cli("alias", "set", "--domain", "EOS", "--entry", "models", "--name", "champion",
                "--version", "3")
    assert moved.json["previous"] == 1 and store.get_alias("EOS", "champion") == 3
    got = cli("alias", "get", "--domain", "EOS", "--name", "champion")
    assert got.json["version"] == 3 and got.json["at"] is None
    then = cli("alias", "get", "--domain", "EOS", "--name", "champion", "--at", between)
    assert then.code == 0 and then.json["version"] == 1, then.err
    assert cli("alias", "set", "--domain", "EOS", "--alias", "challenger",
               "--version", "2").code == 0
    assert cli("alias", "list", "--domain", "EOS").json == {"champion": 3, "challenger": 2}
    history = cli("alias", "history", "--domain", "EOS", "--name", "champion").json
    assert [(h["version"], h["previous"]) for h in history] == [(1, None), (3, 1)]
    assert set(history[0]) == {"version", "previous", "set_at", "set_by"}
    removed = cli("alias", "rm", "--domain", "EOS", "--name", "challenger")
    assert removed.json["removed"] == 2 and store.aliases("EOS") == {"champion": 3}
    unset = cli("alias", "get", "--domain", "EOS", "--name", "challenger")
    assert (unset.code, unset.json["version"]) == (0, None)


def test_alias_errors_and_read_only(cli, store, make_model, store_url):
    cli(*model_args(make_model()))
    cases = [  # (argv, what the one error line says)
        (["alias", "set", "--domain", "EOS", "--name", "champion", "--version", "9"], "9"),
        (["alias", "set", "--domain", "EOS", "--name", "latest", "--version", "1"], "latest"),
        (["alias", "set", "--domain", "EOS", "--name", "9lives", "--version", "1"], "9lives"),
        (["alias", "rm", "--domain", "EOS", "--name", "nobody"], "nobody"),
        (["alias", "get", "--domain", "EOS", "--name", "champion", "--at", "yesterday"],
         "yesterday"),
    ]
    for argv, message in cases:
        result = cli(*argv)
        assert result.code == 1 and result.out == "", argv
        assert message in result.error_line, (argv, result.err)
    assert store.aliases("EOS") == {}
    usage = cli("alias", "set", "--domain", "EOS", "--name", "champion")
    assert usage.code == 2 and "--version" in usage.err
    assert cli("alias").code == 2 and cli("alias", "promote").code == 2


@SQLITE_ONLY
def test_alias_reads_open_read_only_and_writes_do_not(monkeypatch, cli, store, make_model):
    import ams.cli
    opened = []
    original = ams.cli.AMSDataStore

    class Spy(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, read_only=False, **kwargs):
            opened.append(read_only)
            super().__init__(*args, read_only=read_only, **kwargs)

    monkeypatch.setattr(ams.cli, "AMSDataStore", Spy)
    cli(*model_args(make_model()))
    for action, read_only in [("set", False), ("get", True), ("history", True), ("list", True),
                              ("rm", False)]:
        opened.clear()
        extra = {"set": ["--name", "c", "--version", "1"], "list": []}.get(action, ["--name", "c"])
        result = cli("alias", action, "--domain", "EOS", *extra)
        assert result.code == 0, (action, result.err)
        assert opened == [read_only], action


def test_alias_actions_have_help_and_an_example(run_cli):
    from ams.cli import ALIAS_ACTIONS, build_parser
    parser = build_parser()
    top = next(a for a in parser._actions if a.dest == "command").choices["alias"]
    actions = next(a for a in top._actions if a.dest == "alias_action").choices
    assert set(actions) == {"set", "get", "history", "rm", "list"} == set(ALIAS_ACTIONS)
    for name, sub in actions.items():
        undocumented = [a.dest for a in sub._actions if not (a.help and a.help.strip())]
        assert not undocumented, f"alias {name}: options without help: {undocumented}"
        result = run_cli("alias", name, "--help")
        assert result.code == 0 and ALIAS_ACTIONS[name].help in result.out
        assert f"example:\n  ams-store alias {name} " in result.out
    overview = run_cli("alias", "--help")
    assert overview.code == 0 and all(name in overview.out for name in actions)


def test_version_at_alias_on_the_command_line(cli, store, make_model):
    for _ in range(2):
        cli(*model_args(make_model()))
    store.set_alias("EOS", "champion", 1)
    query = cli("query", "--entry", "models", "--version", "@champion", "--field", "version")
    assert (query.code, query.out) == (0, "1\n"), query.err
    lineage = cli("lineage", "--domain", "EOS", "--version", "@champion")
    assert lineage.code == 0 and lineage.json["version"] == 1, lineage.err
    promoted = cli("alias", "set", "--domain", "EOS", "--name", "prod", "--version", "@champion")
    assert promoted.code == 0 and store.get_alias("EOS", "prod") == 1, promoted.err
