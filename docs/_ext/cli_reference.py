"""Sphinx extension: the ``ams-store`` reference, generated from the argparse parser at build time.

``.. ams-cli-reference::`` renders the ``--help`` of ``ams-store`` and of each
subcommand (:func:`ams.cli.build_parser`) as literal blocks, one section per
command, and one subsection per subcommand of a command that has its own
(``ams-store alias set``, ``get``...), so the page cannot drift from the parser. :func:`render_cli_reference`
returns the reStructuredText and is tested on its own (``tests/test_docs.py``),
without Sphinx: Sphinx is imported only by :func:`setup`.
"""

from __future__ import annotations

import argparse
import functools

HELP_WIDTH = 88
"""Columns of the rendered help (argparse would otherwise use the terminal's)."""

UNDERLINES = "-~^"
"""Section underlines by depth: commands, their subcommands, and one level more."""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """name -> subparser, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    """``parser --help`` at a fixed width, without colour."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=HELP_WIDTH)
    parser.color = False  # Python 3.14 colours help on a terminal
    return parser.format_help().rstrip()


def _literal(text: str) -> list[str]:
    return [".. code-block:: text", ""] + ["   " + line if line else "" for line in
                                             text.splitlines()] + [""]


def _sections(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> list[str]:
    """The section of command ``names`` (its description and help), then its subcommands'."""
    title = " ".join(("ams-store",) + names)
    lines = [f".. _cli-{'-'.join(names)}:", "", title,
             UNDERLINES[min(len(names), len(UNDERLINES)) - 1] * len(title), ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    lines += _literal(_help(parser))
    for name, subparser in _subcommands(parser).items():
        lines += _sections(subparser, names + (name,))
    return lines


def render_cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The reStructuredText of the reference: ``ams-store --help``, then one section per command.

    Each command's section has the label ``cli-<command>`` for ``:ref:`` links;
    a subcommand's, nested in it, ``cli-<command>-<subcommand>`` (``cli-alias-set``).
    """
    if parser is None:
        from ams.cli import build_parser
        parser = build_parser()
    lines = [".. _cli-global:", "", "ams-store", "---------", "",
             "The global options and the list of commands (``ams-store --help``):", ""]
    lines += _literal(_help(parser))
    for name, subparser in _subcommands(parser).items():
        lines += _sections(subparser, (name,))
    return "\n".join(lines) + "\n"


def setup(app):
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class CLIReference(SphinxDirective):
        """``.. ams-cli-reference::``: the generated sections, parsed in place."""

        has_content = False

        def run(self) -> list[nodes.Node]:
            import ams.cli
            self.env.note_dependency(ams.cli.__file__)  # rebuild the page when the CLI changes
            content = StringList(render_cli_reference().splitlines(), source="<ams-cli-reference>")
            container = nodes.section()  # a throwaway parent: its children are returned
            container.document = self.state.document
            nested_parse_with_titles(self.state, content, container)
            return container.children

    app.add_directive("ams-cli-reference", CLIReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
