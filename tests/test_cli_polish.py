"""Small CLI contracts: ``--version``, and what ``create`` prints (in-process, both backends)."""

from __future__ import annotations

import json

import ams
from ams.cli import build_parser, main
from ams.url import parse_store_url


def test_version_prints_the_package_version(capsys) -> None:
    assert main(["--version"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"ams-store {ams.__version__}\n" and captured.err == ""


def test_version_of_a_command_is_still_its_option() -> None:
    parser = build_parser()
    assert parser.parse_args(["query", "--version", "latest"]).version == "latest"
    assert parser.parse_args(["add", "--entry", "data", "--domain", "EOS", "--file", "a.h5",
                              "--version", "3"]).version == 3


def test_create_reports_the_store_not_its_tables(store_url, capsys, monkeypatch) -> None:
    monkeypatch.delenv("AMS_STORE_URL", raising=False)
    monkeypatch.delenv("AMS_APP_NAME", raising=False)
    expected_url = str(parse_store_url(store_url))  # the masked form
    for created in (True, False):  # then again: already there
        assert main(["--url", store_url, "--name", "my-app", "create"]) == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        assert json.loads(captured.out) == {"url": expected_url, "created": created,
                                            "application_name": "my-app"}
        assert "Record" not in captured.out and "ix_" not in captured.out.lower()
