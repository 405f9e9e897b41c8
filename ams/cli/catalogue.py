"""The ``ams-store`` commands over the catalogue: create, add, remove, query, versions, move,
verify, plot, import, lineage, ls."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Iterator, List, Optional, Sequence

from ..errors import InvalidArgumentError, MissingFileError
from ..files import Placement
from ..store import AMSDataStore
from ..store_types import AMSModelDescr, UQAggregate, UQType
from . import (
    ENTRY_TYPES,
    PROG,
    CLIError,
    UsageError,
    _add_domain,
    _add_entry,
    _add_metadata,
    _data_versions,
    _json_object,
    _Progress,
    _version_selector,
    command,
    emit,
    fail,
)


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
    """Yield ``files``, or their copies in ``directory``, removed again if the block fails.

    The copies are made as a move makes them (:class:`ams.files.Placement`):
    temporary names linked into place without replacing anything; a failure
    removes exactly the copies and folders this call made.
    """
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
    placement = Placement()
    progress = _Progress("copying", len(files), verbose)
    try:
        placement.make_folders(root)
        for path, target in zip(files, targets):
            placement.copy(path, target)
            progress(len(placement.files), len(files))
        yield targets
    except BaseException:
        placement.undo()
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
                        help="remove versions deployment aliases point to too (the aliases are "
                             "unset, recorded in their history) and, with --entry data --purge, "
                             "delete files registered models were trained on (see lineage)")


def _check_remove(args: argparse.Namespace) -> None:
    filters = [name for name, value in (("--file", args.files), ("--version", args.version),
                                        ("--metadata", args.metadata)) if value is not None]
    if args.all and filters:
        raise UsageError(f"--all cannot be combined with {', '.join(filters)}")
    if not args.all and not filters:
        raise UsageError(f"refusing to remove every {args.entry_type} file of "
                         f"{args.domain_name!r}: give --file, --version or --metadata, or --all")


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
    parser.add_argument("--force", action="store_true",
                        help="move away versions deployment aliases point to too (the aliases "
                             "are unset)")


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
                    version=args.version, copy=not args.in_place, force=args.force))
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
         arguments=_plot_arguments, read_only=True,
         reported=(("ams.store", "no domain %r in application"),))
def plot(store: AMSDataStore, args: argparse.Namespace) -> int:
    from ..plot import plot_store
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


