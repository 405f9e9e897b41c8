"""Issue 16 (CLI rough edges) and issue 14 (the alias commands), in-process on both backends.

Each test names the issue item it covers; each fails on the code before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from ams.cli import main
from ams.errors import BadURLError
from ams.url import mask_secrets, mask_url, parse_store_url, password_of

SECRET = "p/ss?w#rd"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        lines = self.err.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got {self.err!r}"
        assert lines[0].startswith("Error: ") and "Traceback" not in self.err, self.err
        return lines[0]


@pytest.fixture
def run_cli(capsys, monkeypatch):
    monkeypatch.delenv("AMS_STORE_URL", raising=False)
    monkeypatch.delenv("AMS_APP_NAME", raising=False)
    capsys.readouterr()

    def run(*argv) -> Result:
        code = main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli(run_cli, store_url):
    return lambda *argv: run_cli("--url", store_url, "--name", "app", *argv)


SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


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
