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
import shutil
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

from . import __version__
from .errors import AMSStoreError, BackendError, InvalidArgumentError, MissingFileError
from .keys import ACTIONS
from .store import AMSDataStore
from .store_types import AMSModelDescr, UQAggregate, UQType
from .url import mask_secrets, parse_store_url, password_of

__all__ = ["main", "COMMANDS", "Command", "command", "emit", "CLIError", "UsageError"]

PROG = "ams-store"
URL_ENV = "AMS_STORE_URL"
NAME_ENV = "AMS_APP_NAME"
AMQP_ENV = "AMS_AMQP_URL"
ENTRY_TYPES = sorted(AMSDataStore.valid_entries)
PROGRESS_MIN_FILES = 10
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


class _Progress:
    """``progress(done, total)`` callback: a bar on a terminal, count lines with -v otherwise."""

    def __init__(self, label: str, total: int, verbose: bool, stream: Optional[TextIO] = None,
                 width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.total, self.width = label, total, width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = total >= PROGRESS_MIN_FILES and (self.tty or verbose)
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or not total:
            return
        step = done * (100 if self.tty else 10) // total
        if step == self._shown:
            return
        self._shown = step
        if self.tty:
            filled = self.width * done // total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                              f"{done}/{total}")
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{PROG}: {self.label}: {done}/{total} files\n")
        self.stream.flush()


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


# ------------------------------------------------------------------ create
def _create_arguments(parser: argparse.ArgumentParser) -> None:
    """No options besides the global ones."""


@command("create", "Create the store (its tables) if needed; report whether it was created.",
         example=f"{PROG} --url sqlite:///ams-store/catalogue.db --name my-app create",
         arguments=_create_arguments, creates_store=True)
def create(store: AMSDataStore, args: argparse.Namespace) -> int:
    emit({"url": str(store.url), "application_name": store.application_name,
          "created": bool(store.created_tables)})
    return 0


# ------------------------------------------------------------------ add
_MODEL_OPTIONS = ("threshold", "uq_type", "uq_aggregate", "val_error", "test_error", "trained_on")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_entry(parser)
    _add_domain(parser)
    parser.add_argument("--file", dest="files", action="append", required=True, metavar="F",
                        help="file to register (repeat for several; one for models)")
    parser.add_argument("--version", type=int, metavar="V",
                        help="version to add to (default: a new version, max + 1)")
    _add_metadata(parser, "metadata of every added file, a JSON object")
    parser.add_argument("--copy-to", metavar="DIR",
                        help="copy the files into DIR first (same names, never overwriting) "
                             "and register the copies")
    models = parser.add_argument_group("models (with --entry models)")
    models.add_argument("--threshold", type=float, help="uncertainty threshold")
    models.add_argument("--uq-type", help="one of " + ", ".join(m.name for m in UQType))
    models.add_argument("--uq-aggregate",
                        help="one of " + ", ".join(m.name for m in UQAggregate)
                             + " (required unless --uq-type Random)")
    models.add_argument("--val-error", type=float, help="validation error")
    models.add_argument("--test-error", type=float, help="test error")
    models.add_argument("--trained-on", type=_data_versions, metavar="V,V",
                        help="data versions of the domain the model was trained on, e.g. 1,2 "
                             "(recorded for lineage; purging those files is then refused)")


def _check_add(args: argparse.Namespace) -> None:
    given = [name for name in _MODEL_OPTIONS if getattr(args, name) is not None]
    option = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    if args.entry_type != "models":
        if given:
            raise UsageError(f"{', '.join(map(option, given))} only apply to --entry models")
        return
    if len(args.files) != 1:
        raise UsageError(f"add one model file per call, not {len(args.files)}")
    missing = [option(name) for name in ("threshold", "uq_type", "val_error", "test_error")
               if getattr(args, name) is None]
    if missing:
        raise UsageError(f"--entry models needs {', '.join(missing)}")


@command("add", "Register files (one version per call) in data, candidates or models.",
         example=f"{PROG} add --entry data --domain EOS --file run-1.h5 --file run-2.h5 \\\n"
                 f"      --metadata '{{\"cycle\": 3}}'\n"
                 f"{PROG} add --entry models --domain EOS --file eos.pt --threshold 0.5 \\\n"
                 f"      --uq-type DeltaUQ --uq-aggregate mean --val-error 0.03 --test-error 0.02 \\\n"
                 f"      --trained-on 1,2",
         arguments=_add_arguments, check=_check_add)
def add(store: AMSDataStore, args: argparse.Namespace) -> int:
    metadata = _json_object(args.metadata, "--metadata")
    model = None
    if args.entry_type == "models":  # built (and checked) before anything is copied
        model = AMSModelDescr(args.files[0], args.threshold, args.uq_type, args.uq_aggregate)
    verbose = args.verbose > 0
    with _copied_into(args.copy_to, args.files, verbose) as files:
        if model is not None:
            version = store.add_model(args.domain_name, dataclasses.replace(model, path=files[0]),
                                      test_error=args.test_error, val_error=args.val_error,
                                      version=args.version, metadata=metadata,
                                      trained_on=args.trained_on)
        else:
            method = store.add_data if args.entry_type == "data" else store.add_candidates
            version = method(args.domain_name, files, args.version, metadata,
                             progress=_Progress("checking", len(files), verbose))
    emit({"domain_name": args.domain_name, "entry_type": args.entry_type, "version": version,
          "files": [os.path.realpath(path) for path in files]})
    return 0


@contextlib.contextmanager
def _copied_into(directory: Optional[str], files: Sequence[str], verbose: bool) -> Iterator[List[str]]:
    """Yield ``files``, or their copies in ``directory``, deleted again if the block fails."""
    if directory is None:
        yield list(files)
        return
    root = os.path.abspath(directory)
    targets = [os.path.join(root, os.path.basename(os.path.normpath(path))) for path in files]
    for path, target in zip(files, targets):
        if not os.path.isfile(path):
            raise MissingFileError(f"file does not exist: {path!r}")
        if os.path.lexists(target):
            raise InvalidArgumentError(f"--copy-to: {target!r} already exists; refusing to overwrite")
    if len(set(targets)) != len(targets):
        raise InvalidArgumentError("--copy-to: two files have the same name: "
                                   + ", ".join(sorted({t for t in targets if targets.count(t) > 1})))
    if os.path.exists(root) and not os.path.isdir(root):
        raise InvalidArgumentError(f"--copy-to: {root!r} is not a directory")
    made = []  # directories we create, innermost first
    parent = root
    while not os.path.exists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    copies: List[str] = []
    progress = _Progress("copying", len(files), verbose)
    try:
        os.makedirs(root, exist_ok=True)
        for path, target in zip(files, targets):
            with open(path, "rb") as source, open(target, "xb") as copy:
                copies.append(target)
                shutil.copyfileobj(source, copy)
            shutil.copystat(path, target)
            progress(len(copies), len(files))
        yield targets
    except BaseException:
        for copied in copies:
            with contextlib.suppress(OSError):
                os.remove(copied)
        for folder in made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


# ------------------------------------------------------------------ remove
def _remove_arguments(parser: argparse.ArgumentParser) -> None:
    _add_entry(parser)
    _add_domain(parser)
    parser.add_argument("--file", dest="files", action="append", metavar="F",
                        help="file to remove (repeat for several); without it, remove what "
                             "--version/--metadata match")
    parser.add_argument("--version", type=_version_selector, metavar="V|latest|@alias",
                        help="only this version ('latest': the highest matching one; "
                             "'@champion': the version the alias champion points at)")
    _add_metadata(parser, "only entries whose metadata match, a JSON object "
                          "(operators as in query)")
    parser.add_argument("--all", action="store_true",
                        help="remove every file of the entry (required when no filter is given)")
    parser.add_argument("--purge", action="store_true",
                        help="also delete the files from disk (default: keep them)")
    parser.add_argument("--force", action="store_true",
                        help="with --entry data --purge: delete files that registered models "
                             "were trained on too (refused otherwise; see lineage)")


def _check_remove(args: argparse.Namespace) -> None:
    filters = [name for name, value in (("--file", args.files), ("--version", args.version),
                                        ("--metadata", args.metadata)) if value is not None]
    if args.all and filters:
        raise UsageError(f"--all cannot be combined with {', '.join(filters)}")
    if not args.all and not filters:
        raise UsageError(f"refusing to remove every {args.entry_type} file of "
                         f"{args.domain_name!r}: give --file, --version or --metadata, or --all")
    if args.force and not (args.purge and args.entry_type == "data"):
        raise UsageError("--force only applies to --entry data --purge")


@command("remove", "Remove entries from the store (and their files with --purge).",
         example=f"{PROG} remove --entry candidates --domain EOS --version 3 --purge\n"
                 f"{PROG} remove --entry data --domain EOS --file run-1.h5",
         arguments=_remove_arguments, check=_check_remove,
         reported=(("ams.store", "%d file(s) to remove are not in"),
                   ("ams.catalog.file_effects", "purge: not deleting")))
def remove(store: AMSDataStore, args: argparse.Namespace) -> int:
    metadata = _json_object(args.metadata, "--metadata")
    if args.metadata is not None and not metadata:
        raise InvalidArgumentError("--metadata '{}' matches everything; use --all to mean that")
    method = {"data": store.remove_data, "models": store.remove_models,
              "candidates": store.remove_candidates}[args.entry_type]
    force = {"force": True} if args.force else {}
    report = method(args.domain_name, args.files, version=args.version,
                    metadata=metadata or None, purge=args.purge, remove_all=args.all, **force)
    emit(report.to_dict())
    problems = []
    if report.not_found:
        problems.append(f"{len(report.not_found)} file(s) not in {args.domain_name}/"
                        f"{args.entry_type}: {', '.join(report.not_found)}")
    if report.purge_errors:
        problems.append(f"could not delete {len(report.purge_errors)} file(s): "
                        + ", ".join(f"{path}: {why}" for path, why in report.purge_errors.items()))
    return fail("; ".join(problems)) if problems else 0


# ------------------------------------------------------------------ query
def _query_arguments(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser, required=False)
    _add_entry(parser, required=False)
    parser.add_argument("--version", type=_version_selector, metavar="V|latest|@alias",
                        help="only this version ('latest': the highest matching one per "
                             "domain and entry; '@champion': the version the alias "
                             "champion points at)")
    _add_metadata(parser, "metadata filter, a JSON object: {\"key\": value} for equality or "
                          "{\"key\": {\"op\": value}} with op one of == != < <= > >= in")
    parser.add_argument("--file", metavar="F", help="only the entry of this file "
                                                   "(cannot be combined with --metadata)")
    parser.add_argument("--field", metavar="NAME",
                        help="print only this field, one value per line: an entry key "
                             "(filename, version, id, domain_name, entry_type, "
                             "application_name) or a metadata key")


def _check_query(args: argparse.Namespace) -> None:
    if args.file is not None and args.metadata is not None:
        raise UsageError("--file and --metadata cannot be combined")


@command("query", "List entries (JSON) matching a domain, entry, version and metadata.",
         example=f"{PROG} query --domain EOS --entry models --version latest \\\n"
                 f"      --metadata '{{\"val_error\": {{\"<\": 0.1}}}}' --field filename",
         arguments=_query_arguments, read_only=True, check=_check_query)
def query(store: AMSDataStore, args: argparse.Namespace) -> int:
    if args.file is not None:
        entries = store.find(args.domain_name, filename=args.file, entry_type=args.entry_type,
                             version=args.version)
    else:
        entries = store.search(args.domain_name, args.entry_type, args.version,
                               _json_object(args.metadata, "--metadata"))
    if args.field is None:
        emit(entries)
        return 0
    values = [entry[args.field] if args.field in entry else entry["metadata"][args.field]
              for entry in entries if args.field in entry or args.field in entry["metadata"]]
    if entries and not values:
        raise CLIError(f"no matching entry has a field {args.field!r} "
                       f"(entry keys: {', '.join(sorted(entries[0]))}, or a metadata key)")
    for value in values:
        sys.stdout.write((value if isinstance(value, str) else json.dumps(value)) + "\n")
    return 0


# ------------------------------------------------------------------ versions
def _versions_arguments(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser)
    _add_entry(parser)
    parser.add_argument("--files", action="store_true",
                        help="map each version to its files instead of listing versions")


@command("versions", "List the versions of an entry (JSON), optionally with their files.",
         example=f"{PROG} versions --domain EOS --entry data --files",
         arguments=_versions_arguments, read_only=True)
def versions(store: AMSDataStore, args: argparse.Namespace) -> int:
    method = {"data": store.get_data_versions, "models": store.get_model_versions,
              "candidates": store.get_candidate_versions}[args.entry_type]
    emit(method(args.domain_name, associate_files=args.files))
    return 0


# ------------------------------------------------------------------ move
def _move_arguments(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser)
    parser.add_argument("--from", dest="src_type", required=True, choices=ENTRY_TYPES,
                        help="entry the files are registered in")
    parser.add_argument("--to", dest="dest_type", required=True, choices=ENTRY_TYPES,
                        help="entry to register the moved files in")
    parser.add_argument("--dest", metavar="DIR",
                        help="directory the files are copied into (sources are deleted after); "
                             "with --in-place, their own folder (the default then)")
    parser.add_argument("--file", dest="files", action="append", required=True, metavar="F",
                        help="registered file to move (repeat for several)")
    parser.add_argument("--version", type=int, metavar="V",
                        help="version of --to to add to (default: a new version)")
    parser.add_argument("--in-place", action="store_true",
                        help="change the files' entry without copying or touching them on disk "
                             "(for big files on a parallel filesystem)")


def _folders(files: Sequence[str]) -> List[str]:
    return sorted({os.path.dirname(os.path.realpath(path)) for path in files})


def _check_move(args: argparse.Namespace) -> None:
    if not args.in_place:
        if args.dest is None:
            raise UsageError("the following arguments are required: --dest (or give --in-place)")
        return
    folders = _folders(args.files)
    if args.dest is None and len(folders) > 1:
        raise UsageError(f"--in-place moves files where they are, and these are in "
                         f"{len(folders)} folders ({', '.join(folders)}): move one folder per call")
    if args.dest is not None and [os.path.realpath(args.dest)] != folders:
        raise UsageError(f"--in-place moves files where they are: --dest must be their folder "
                         f"{folders[0] if len(folders) == 1 else ', '.join(folders)}, not "
                         f"{args.dest} (or leave --dest out)")


@command("move", "Move registered files to another entry (promote candidates to data).",
         example=f"{PROG} move --domain EOS --from candidates --to data --dest /pfs/eos/data \\\n"
                 f"      --file cand-1.h5 --file cand-2.h5\n"
                 f"{PROG} move --domain EOS --from candidates --to data --in-place "
                 f"--file /pfs/eos/cand-3.h5",
         arguments=_move_arguments, check=_check_move)
def move(store: AMSDataStore, args: argparse.Namespace) -> int:
    dest = args.dest if args.dest is not None else _folders(args.files)[0]
    emit(store.move(args.domain_name, dest, args.src_type, args.dest_type, args.files,
                    version=args.version, copy=not args.in_place))
    return 0


# ------------------------------------------------------------------ verify
def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser, required=False)
    parser.add_argument("--repair", action="store_true",
                        help="also repair what can be repaired (opens the store for writing)")


@command("verify", "Check the store's consistency; exit 1 when problems are found.",
         example=f"{PROG} verify --domain EOS",
         arguments=_verify_arguments, read_only=lambda args: not args.repair,
         reported=(("ams.store", "verify: %d record(s) checked"),))
def verify(store: AMSDataStore, args: argparse.Namespace) -> int:
    if not hasattr(store, "verify"):
        raise CLIError("this version of ams has no AMSDataStore.verify")
    report = store.verify(domain_name=args.domain_name, repair=args.repair)
    emit(report.to_dict())
    return 0 if report.ok else fail("verify found problems (see the report on stdout)")


# ------------------------------------------------------------------ plot
def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser)
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="image to write, its format from the suffix: .png, .pdf or .svg "
                             "(its folder is created if needed)")


@command("plot", "Draw a domain's model errors and data files per version into a PNG, PDF "
                 "or SVG (needs matplotlib: the 'plot' extra).",
         example=f"{PROG} plot --domain EOS --out eos.png",
         arguments=_plot_arguments, read_only=True)
def plot(store: AMSDataStore, args: argparse.Namespace) -> int:
    from .plot import plot_store
    emit({"domain_name": args.domain_name, "plot": plot_store(store, args.domain_name, args.out)})
    return 0


# ------------------------------------------------------------------ import
def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="URL",
                        help="the older catalogue: a SQLite path or URL or a MariaDB URL "
                             "holding the SQL table 'entries', or a Kosh-era store (its "
                             "ams_config.json, the folder holding it, or the Kosh file)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out records whose file is gone (default: import them)")
    parser.add_argument("--application", metavar="NAME",
                        help="import only this application's records (and name the "
                             "application of a Kosh file that has no ams_config.json)")


@command("import", "Import an older catalogue (SQL-table or Kosh-era store); a re-run "
                   "imports nothing twice.",
         example=f"{PROG} import --from sqlite:////pfs/ams/old-store.db --skip-missing\n"
                 f"{PROG} import --from /pfs/ams/kosh-store/ams_config.json",
         arguments=_import_arguments, creates_store=True)
def import_(store: AMSDataStore, args: argparse.Namespace) -> int:
    emit(store.import_from(args.source, application_name=args.application,
                           missing="skip" if args.skip_missing else "import").to_dict())
    return 0


# ------------------------------------------------------------------ lineage
def _lineage_arguments(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser)
    parser.add_argument("--version", type=_version_selector, required=True,
                        metavar="V|latest|@alias", help="models version (or '@champion': the "
                                                        "version the alias champion points at)")


@command("lineage", "Show which data versions and files trained a models version "
                    "(present, or missing: no longer registered).",
         example=f"{PROG} lineage --domain EOS --version latest",
         arguments=_lineage_arguments, read_only=True)
def lineage(store: AMSDataStore, args: argparse.Namespace) -> int:
    emit(store.model_lineage(args.domain_name, args.version))
    return 0


# ------------------------------------------------------------------ ls
def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@command("ls", "Show what the store holds for the application: domains, entries, versions, "
               "files and bytes.",
         example=f"{PROG} ls", arguments=_ls_arguments, read_only=True)
def ls(store: AMSDataStore, args: argparse.Namespace) -> int:
    emit(store.summary())
    return 0


# ------------------------------------------------------------------ changes
def _changes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--after", type=int, default=0, metavar="ID",
                        help="only events with a larger id (default 0: from the first)")
    parser.add_argument("--limit", type=int, default=1000, metavar="N",
                        help="events per read (default 1000)")
    _add_domain(parser, required=False)
    _add_entry(parser, required=False)
    parser.add_argument("--action", choices=ACTIONS, help="only events of this action")
    parser.add_argument("--follow", action="store_true",
                        help="keep polling for new events until interrupted (Ctrl-C: exit 0)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="with --follow: seconds between polls (default 1)")


@command("changes", "Print the store's committed changes as JSON lines, in commit order.",
         example=f"{PROG} changes --after 120 --domain EOS --follow",
         arguments=_changes_arguments, read_only=True)
def changes(store: AMSDataStore, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    after = args.after
    try:
        while True:
            events = store.changes(after=after, limit=args.limit, domain_name=args.domain_name,
                                   entry_type=args.entry_type, action=args.action)
            for event in events:
                sys.stdout.write(json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n")
                after = event["id"]
            sys.stdout.flush()
            if len(events) == args.limit:
                continue  # more are waiting
            if not args.follow:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


# ------------------------------------------------------------------ publish
def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amqp", default=os.environ.get(AMQP_ENV), metavar="URL",
                        help=f"the broker, e.g. amqp://guest:guest@127.0.0.1:5672/%%2F "
                             f"(or {AMQP_ENV})")
    parser.add_argument("--exchange", default="ams.store",
                        help="durable topic exchange to publish to (default ams.store)")
    parser.add_argument("--relay", default="default",
                        help="relay name: its cursor is kept in the store (default 'default')")
    parser.add_argument("--once", action="store_true",
                        help="publish what is pending, then exit")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between polls when not --once (default 1)")


def _check_publish(args: argparse.Namespace) -> None:
    if not args.amqp:
        raise UsageError(f"no broker: give --amqp or set {AMQP_ENV}")


@command("publish", "Relay the store's changes to RabbitMQ (persistent JSON messages, "
                    "publisher confirms; resumes where it stopped).",
         example=f"{PROG} publish --amqp amqp://guest:guest@127.0.0.1:5672/%2F --once",
         arguments=_publish_arguments, check=_check_publish)
def publish(store: AMSDataStore, args: argparse.Namespace) -> int:
    from .events import publish as relay
    logging.getLogger("pika").setLevel(logging.DEBUG if args.verbose > 1 else logging.CRITICAL)
    try:
        sent = relay(store, args.amqp, exchange=args.exchange, relay=args.relay,
                     once=args.once, interval=args.interval)
    except KeyboardInterrupt:
        return 0
    emit({"published": sent, "relay": args.relay, "exchange": args.exchange,
          "cursor": store.relay_cursor(args.relay)})
    return 0


# ------------------------------------------------------------------ alias
@dataclasses.dataclass(frozen=True)
class _AliasAction:
    """One ``alias`` subcommand: help, example, extra options, whether it writes, what it does."""

    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    writes: bool
    run: Callable[[AMSDataStore, argparse.Namespace], Any]


def _alias_key(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser)
    parser.add_argument("--entry", dest="entry_type", choices=ENTRY_TYPES, default="models",
                        help="entry type the alias belongs to (default: models)")


def _alias_name(parser: argparse.ArgumentParser) -> None:
    _alias_key(parser)
    parser.add_argument("--name", "--alias", dest="alias", required=True, metavar="ALIAS",
                        help="alias name: 1-64 letters, digits, _ - ., starting with a letter "
                             "('latest' is reserved); here --name is the alias: give the "
                             f"application name before 'alias' or in {NAME_ENV}")


def _alias_set_arguments(parser: argparse.ArgumentParser) -> None:
    _alias_name(parser)
    parser.add_argument("--version", type=_version_selector, required=True, metavar="V|@alias",
                        help="the existing version to point at (or '@other': the version "
                             "the alias other points at)")


def _alias_get_arguments(parser: argparse.ArgumentParser) -> None:
    _alias_name(parser)
    parser.add_argument("--at", metavar="ISO",
                        help="the version the alias pointed at then: an ISO-8601 time such as "
                             "2024-05-01T14:00:00 (naive times are UTC)")


def _alias_result(args: argparse.Namespace, **values: Any) -> Dict[str, Any]:
    return {"domain_name": args.domain_name, "entry_type": args.entry_type, "alias": args.alias,
            **values}


ALIAS_ACTIONS: Dict[str, _AliasAction] = {
    "set": _AliasAction(
        "Point an alias at an existing version; prints the version it pointed at before.",
        f"{PROG} alias set --domain EOS --name champion --version 3",
        _alias_set_arguments, True,
        lambda store, args: _alias_result(
            args, version=args.version,
            previous=store.set_alias(args.domain_name, args.alias, args.version,
                                     entry_type=args.entry_type))),
    "get": _AliasAction(
        "Print the version an alias points at (null when unset), or pointed at --at a time.",
        f"{PROG} alias get --domain EOS --name champion --at 2024-05-01T14:00:00",
        _alias_get_arguments, False,
        lambda store, args: _alias_result(
            args, at=args.at, version=store.get_alias(args.domain_name, args.alias,
                                                      entry_type=args.entry_type, at=args.at))),
    "history": _AliasAction(
        "List every change of an alias, oldest first (version, previous, set_at, set_by).",
        f"{PROG} alias history --domain EOS --name champion",
        _alias_name, False,
        lambda store, args: store.alias_history(args.domain_name, args.alias,
                                                entry_type=args.entry_type)),
    "rm": _AliasAction(
        "Unset an alias (kept in its history); prints the version it pointed at.",
        f"{PROG} alias rm --domain EOS --name challenger",
        _alias_name, True,
        lambda store, args: _alias_result(
            args, removed=store.remove_alias(args.domain_name, args.alias,
                                             entry_type=args.entry_type))),
    "list": _AliasAction(
        "Map the aliases set on an entry of a domain to their versions.",
        f"{PROG} alias list --domain EOS",
        _alias_key, False,
        lambda store, args: store.aliases(args.domain_name, entry_type=args.entry_type)),
}
"""The ``alias`` subcommands, in the order ``ams-store alias --help`` lists them."""


def _alias_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="alias_action", metavar="action", required=True,
                                    help="one of: " + ", ".join(ALIAS_ACTIONS))
    for name, action in ALIAS_ACTIONS.items():
        sub = actions.add_parser(name, help=action.help, description=action.help,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"example:\n  {action.example}")
        action.arguments(sub)
        _global_options(sub, suppress=True, app_name=False)
        sub.set_defaults(_subparser=sub)


@command("alias", "Deployment aliases (champion, challenger...): set, get (also at a past "
                  "time), history, rm, list.",
         example="\n".join(action.example for action in ALIAS_ACTIONS.values()),
         arguments=_alias_arguments,
         read_only=lambda args: not ALIAS_ACTIONS[args.alias_action].writes)
def alias(store: AMSDataStore, args: argparse.Namespace) -> int:
    emit(ALIAS_ACTIONS[args.alias_action].run(store, args))
    return 0


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
