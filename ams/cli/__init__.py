"""The ``ams-store`` command line: parse, call ONE public :class:`ams.AMSDataStore` method, print.

The CLI never touches Kosh or SQL: each command opens the store, calls one
library method and prints its result as stable JSON (sorted keys, indent 2) on
stdout. Exit codes: 0 success, 1 store errors (one line ``Error: ...`` on
stderr, no traceback unless ``--verbose``, never a password), 2 usage errors.

Adding a command
----------------
Every command is one entry of the :data:`COMMANDS` registry, made by the
:func:`command` decorator from one function (``run(store, args) -> int``,
which calls one store method and :func:`emit` s the result) and one parser
block (``arguments(parser)``, which adds the command's options). For example::

    def _files_arguments(parser):
        _add_domain(parser)
        _add_entry(parser)

    @command("files", "List the files of an entry, one JSON list.",
             example="ams-store files --domain EOS --entry data",
             arguments=_files_arguments, read_only=True)
    def files(store, args):
        emit(store.get_files(args.domain_name, args.entry_type))
        return 0

The framework supplies the rest: the global options (``--url`` /
``AMS_STORE_URL``, ``--name`` / ``AMS_APP_NAME``, ``-v``), opening and closing
the store (read-only when ``read_only``; a store that does not exist is an
error, ``no store at ...; create it with `ams-store create```, unless the
command is registered with ``creates_store=True``), keeping the warnings a
command reports itself (``reported``) off stderr, the ``--help`` page with its example
(``tests/test_cli.py`` fails when a command lacks either), turning errors into
exit codes and masking passwords. Raise :class:`UsageError` (exit 2) for a bad
combination of options, best from the optional ``check(args)`` hook, which
runs before the store is opened; raise :class:`CLIError` or an
:mod:`ams.errors` exception (exit 1) for a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

from .. import __version__
from ..errors import AMSStoreError, BackendError, InvalidArgumentError
from ..progress import ProgressBar
from ..store import AMSDataStore
from ..url import mask_secrets, parse_store_url, password_of

__all__ = ["main", "COMMANDS", "Command", "command", "emit", "CLIError", "UsageError"]

PROG = "ams-store"
URL_ENV = "AMS_STORE_URL"
NAME_ENV = "AMS_APP_NAME"
AMQP_ENV = "AMS_AMQP_URL"
ENTRY_TYPES = sorted(AMSDataStore.valid_entries)
"""Adds of at least this many files show progress on stderr."""

LOGGER = logging.getLogger(__name__)


class CLIError(Exception):
    """A failure the CLI itself detects (exit code 1)."""


class UsageError(Exception):
    """A bad combination of options (exit code 2, with the command's usage)."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its help, its example, its parser block and its function."""

    name: str
    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[AMSDataStore, argparse.Namespace], int]
    read_only: Union[bool, Callable[[argparse.Namespace], bool]] = False
    check: Optional[Callable[[argparse.Namespace], None]] = None
    creates_store: bool = False
    """Whether the command may create the store (only ``create`` and ``import``); every
    other command refuses a store that does not exist, and creates nothing."""
    reported: Tuple[Tuple[str, str], ...] = ()
    """Log records the command reports itself, as (logger name, start of the message
    format): not echoed on stderr without ``-v`` (one problem, one line)."""

    def opens_read_only(self, args: argparse.Namespace) -> bool:
        return self.read_only(args) if callable(self.read_only) else bool(self.read_only)


COMMANDS: Dict[str, Command] = {}
"""name -> :class:`Command`, in the order the commands are listed in ``--help``."""


def command(name: str, help: str, example: str,
            arguments: Callable[[argparse.ArgumentParser], None],
            read_only: Union[bool, Callable[[argparse.Namespace], bool]] = False,
            check: Optional[Callable[[argparse.Namespace], None]] = None,
            creates_store: bool = False, reported: Tuple[Tuple[str, str], ...] = ()):
    """Register the decorated ``run(store, args) -> int`` as subcommand ``name``."""
    def register(run: Callable[[AMSDataStore, argparse.Namespace], int]):
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, example, arguments, run, read_only, check,
                                 creates_store, reported)
        return run
    return register


# ------------------------------------------------------------------ output helpers
def emit(value: Any) -> None:
    """Print ``value`` as stable JSON (sorted keys, indent 2) on stdout."""
    sys.stdout.write(json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def fail(message: str) -> int:
    """Write the one ``Error: ...`` line to stderr; return exit code 1."""
    sys.stderr.write(f"Error: {_one_line(message)}\n")
    return 1


def _Progress(label: str, total: int, verbose: bool, stream: Optional[TextIO] = None,
              width: int = 30) -> ProgressBar:
    """The CLI's ``progress(done, total)``: a bar on a terminal, count lines with -v otherwise."""
    return ProgressBar(label, total, stream=stream, counts=verbose, width=width, prefix=PROG)


# ------------------------------------------------------------------ argument helpers
def _json_object(text: Optional[str], option: str) -> Dict[str, Any]:
    """Parse a JSON object given on the command line (empty when not given)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{option} is not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{option} must be a JSON object like '{{\"cycle\": 3}}', "
                                   f"not {text!r}")
    return value


def _version_selector(text: str) -> Union[int, str]:
    """An integer, ``latest`` or ``@alias`` (argparse type); the store checks the alias name."""
    if text == "latest" or (text.startswith("@") and len(text) > 1):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'latest' (or '@alias'), "
                                         f"not {text!r}") from None


def _data_versions(text: str) -> List[int]:
    """``1,2``: a comma-separated list of data versions (argparse type)."""
    try:
        versions = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected data versions like 1,2, not {text!r}") from None
    return versions


def _add_domain(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--domain", required=required, dest="domain_name", metavar="D",
                        help="domain name (a physics sub-model such as EOS)")


def _add_entry(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--entry", required=required, dest="entry_type", choices=ENTRY_TYPES,
                        help="entry type")


def _add_metadata(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--metadata", metavar="JSON", help=help)


# ------------------------------------------------------------------ parser and main
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error messages never echo a password."""

    def error(self, message: str):
        super().error(mask_secrets(message))


def _global_options(parser: argparse.ArgumentParser, suppress: bool, app_name: bool = True) -> None:
    """``--url``, ``--name``, ``-v``; on subcommands too (defaults suppressed, not overriding).

    ``app_name=False`` leaves ``--name`` out (the ``alias`` actions use it for the alias).
    """
    url, name, verbose = (argparse.SUPPRESS,) * 3 if suppress else (None, None, 0)
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("--url", default=url,
                       help=f"store URL: sqlite:///path.db, a file path or "
                            f"mariadb://user:password@host:port/database (env {URL_ENV})")
    if app_name:
        group.add_argument("--name", default=name, help=f"application name (env {NAME_ENV})")
    group.add_argument("-v", "--verbose", action="count", default=verbose,
                       help="log what happens (-vv: debug); show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """The ``ams-store`` parser with one subparser per registered command."""
    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The AMS catalogue from the shell: data, candidates and models per "
                    "application and domain, with versions and metadata.",
        epilog=f"The store URL and application name come from --url/--name or from "
               f"{URL_ENV}/{NAME_ENV}.\nOutput is JSON on stdout. Exit codes: 0 success, "
               f"1 store error (one 'Error:' line on stderr), 2 usage error.\n\n"
               f"example:\n  export {URL_ENV}=sqlite:///ams-store/catalogue.db {NAME_ENV}=my-app\n"
               f"  {PROG} create && {PROG} add --entry data --domain EOS --file run-1.h5\n"
               f"  {PROG} <command> --help")
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version of ams-store and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="command", required=True)
    for spec in COMMANDS.values():
        sub = subparsers.add_parser(
            spec.name, help=spec.help, description=spec.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="example:\n" + "\n".join("  " + line for line in spec.example.splitlines()))
        spec.arguments(sub)
        _global_options(sub, suppress=True)
        sub.set_defaults(_subparser=sub)
    return parser


class _MaskingFilter(logging.Filter):
    def __init__(self, password: Optional[str]) -> None:
        super().__init__()
        self.password = password

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_secrets(record.getMessage(), self.password), None
        return True


class _ReportedFilter(logging.Filter):
    """Drop the log records a command reports itself (its ``reported``)."""

    def __init__(self, reported: Tuple[Tuple[str, str], ...]) -> None:
        super().__init__()
        self.reported = reported

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and isinstance(record.msg, str)
                       and record.msg.startswith(start) for name, start in self.reported)


@contextlib.contextmanager
def _logging(verbosity: int, password: Optional[str],
             reported: Tuple[Tuple[str, str], ...] = ()) -> Iterator[None]:
    """Log to stderr while the command runs: warnings by default, INFO with -v, DEBUG with -vv.

    Without ``-v``, the warnings the command reports itself (``reported``) are
    left out, so one problem makes one ``Error:`` line.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
    if verbosity <= 0:
        handler.setLevel(logging.WARNING)
        handler.addFilter(_ReportedFilter(reported))
    handler.addFilter(_MaskingFilter(password))
    old_level = root.level
    root.addHandler(handler)
    if verbosity > 0:
        root.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _open_store(spec: Command, args: argparse.Namespace, name: str, url: str) -> AMSDataStore:
    """Open the store for ``spec``: only ``create`` and ``import`` make a store that is not there.

    For any other command a store that does not exist is an error that creates
    nothing: a SQLite file that is missing (or empty), or a MariaDB database
    without the store's tables (found by opening read-only first, which
    creates nothing).
    """
    read_only = spec.opens_read_only(args)
    if spec.creates_store:
        return AMSDataStore(name, url, read_only=read_only).open()
    where = parse_store_url(url)
    missing = CLIError(f"no store at {where.location}; create it with `{PROG} create`")
    if where.backend == "sqlite":
        path = str(where.path)
        if os.path.isdir(path):
            raise CLIError(f"no store at {path}: it is a folder, not a store file")
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise missing
        return AMSDataStore(name, url, read_only=read_only).open()
    probe = AMSDataStore(name, url, read_only=True)
    try:
        probe.open()
    except BackendError as error:
        if "is not a Kosh store" in str(error):
            raise missing from None
        raise
    if read_only:
        return probe
    probe.close()
    return AMSDataStore(name, url).open()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``ams-store`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse already printed
        return exit.code if isinstance(exit.code, int) else 2
    spec, subparser = COMMANDS[args.command], args._subparser
    url = args.url if args.url is not None else os.environ.get(URL_ENV)
    name = args.name if args.name is not None else os.environ.get(NAME_ENV)
    password = password_of(url)
    try:
        if not url:
            raise UsageError(f"no store URL: give --url or set {URL_ENV}")
        if not name:
            raise UsageError(f"no application name: give --name or set {NAME_ENV}")
        if spec.check is not None:
            spec.check(args)
        with _logging(args.verbose, password, spec.reported):
            with _open_store(spec, args, name, url) as store:
                return spec.run(store, args)
    except UsageError as error:
        try:
            subparser.error(str(error))
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else 2
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except (AMSStoreError, CLIError, OSError, ValueError, TypeError) as error:
        return _failed(error, args.verbose, password, str(error))
    except Exception as error:  # noqa: BLE001 - a bug below us: still one line, no password
        return _failed(error, args.verbose, password,
                       f"unexpected {type(error).__name__}: {error} "
                       f"(please report; -v shows the traceback)")
    return 1  # pragma: no cover - subparser.error always exits


def _failed(error: BaseException, verbosity: int, password: Optional[str], message: str) -> int:
    if verbosity > 0:
        sys.stderr.write(mask_secrets("".join(traceback.format_exception(error)), password))
    return fail(mask_secrets(message, password))




# The commands register themselves in COMMANDS when their modules are imported.
from . import catalogue, journal  # noqa: E402,F401 - registers the commands
from .journal import ALIAS_ACTIONS  # noqa: E402,F401 - re-exported
