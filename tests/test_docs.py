"""The documentation cannot drift from the code: the generated CLI reference, the store URLs.

The Sphinx builds themselves (html and doctest, warnings as errors) run in ``.ci/run``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from ams.cli import ALIAS_ACTIONS, COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  ROOT / "docs" / "_ext" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> str:
    return _cli_reference().render_cli_reference()


def test_cli_page_is_generated_into_the_docs() -> None:
    assert ".. ams-cli-reference::" in (ROOT / "docs" / "cli.rst").read_text()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_section_in_the_cli_reference(reference: str, name: str) -> None:
    spec = COMMANDS[name]
    title = f"ams-store {name}"
    assert f".. _cli-{name}:\n\n{title}\n{'-' * len(title)}\n" in reference
    section = reference.split(f".. _cli-{name}:", 1)[1].split("\n.. _cli-", 1)[0]
    assert f"usage: ams-store {name} " in section
    assert " ".join(spec.help.split()) in section
    for line in spec.example.splitlines():  # the example, as --help shows it
        assert line.strip() in section


@pytest.mark.parametrize("action", list(ALIAS_ACTIONS))
def test_every_alias_subcommand_has_its_section_in_the_cli_reference(reference: str,
                                                                     action: str) -> None:
    title = f"ams-store alias {action}"
    assert f".. _cli-alias-{action}:\n\n{title}\n{'~' * len(title)}\n" in reference
    section = reference.split(f".. _cli-alias-{action}:", 1)[1].split("\n.. _cli-", 1)[0]
    assert f"usage: ams-store alias {action} " in section
    assert " ".join(ALIAS_ACTIONS[action].help.split()) in section
    assert ALIAS_ACTIONS[action].example in section
    # nested in the alias section: after it, before the next command's
    assert reference.index(".. _cli-alias:") < reference.index(f".. _cli-alias-{action}:")


def test_cli_reference_lists_the_global_options_and_every_command(reference: str) -> None:
    overview = reference.split("\n.. _cli-", 1)[0]  # ams-store --help
    assert "usage: ams-store " in overview and "--version" in overview and "--url URL" in overview
    assert all(re.search(rf"^ +{re.escape(name)} ", overview, re.MULTILINE) for name in COMMANDS)
    assert "\x1b[" not in reference  # no terminal colours
    assert max(map(len, reference.splitlines())) <= 140


def test_cli_reference_follows_the_parser_it_is_given() -> None:
    parser = build_parser()
    for action in parser._actions:  # a command that exists only in this parser
        if action.dest == "command":
            action.add_parser("brand-new", help="A command added after the docs were written.")
    reference = _cli_reference().render_cli_reference(parser)
    assert "ams-store brand-new\n-------------------" in reference


# A relative SQLite path whose first folder is "ams" creates ./ams/, which then shadows
# the package for every script or notebook run from that folder.
_SHADOWING_URL = re.compile(r"sqlite:///(?:\./)*ams/")
_DOCUMENTED = ["README.rst", "docs/*.rst", "docs/conf.py", "docs/_ext/*.py", "examples/*",
               "scripts/*", "ams/cli.py"]


def test_no_documented_store_url_can_shadow_the_package() -> None:
    files = sorted({path for pattern in _DOCUMENTED for path in ROOT.glob(pattern) if path.is_file()})
    assert ROOT / "README.rst" in files and len(files) > 10
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in files
                 for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if _SHADOWING_URL.search(line)]
    assert offenders == [], "store URLs that create a folder named 'ams':\n" + "\n".join(offenders)


def test_the_shadowing_pattern() -> None:
    assert _SHADOWING_URL.search("AMS_STORE_URL=sqlite:///ams/catalogue.db")
    assert _SHADOWING_URL.search('"sqlite:///./ams/x.db"')
    for fine in ("sqlite:///ams-store/catalogue.db", "sqlite:///catalogue.db",
                 "sqlite:////pfs/ams/old.db", "sqlite:///ams.db"):
        assert not _SHADOWING_URL.search(fine), fine
