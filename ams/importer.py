"""Import older AMS catalogues into this store.

Two kinds of source, detected from what they hold:

* ``sql-table``: the SQL-table store, one table ``entries(id, application_name,
  domain_name, filename, entry_type, version, metadata JSON)``, in a SQLite
  file or a MariaDB database;
* ``kosh``: the first Kosh-era store, a Kosh (SQLite) file plus the
  ``ams_config.json`` beside it, ``{"name": <application>,
  "ams_persistent_db": {"path": <folder>, "store": <file>}}`` (older configs
  say ``"db"``; ``store`` defaults to ``ams_store.sql``). That store kept one
  ensemble named after ``name`` (the application) with datasets ``data``,
  ``models`` and ``candidates`` per version (from 0), and the metadata and
  ``date`` on each file's association. Each ensemble becomes a domain of the
  same name; an ensemble that carries ``application_name`` keeps it.

The whole source is read and checked before anything is written; then each
(application, domain, entry, version) group is written in one transaction
through the catalogue, with each record's own metadata. Paths the destination
already holds are skipped, so a re-run imports nothing twice.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sqlite3
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, cast
from urllib.parse import quote

import sqlalchemy as sa

from . import _validate
from .catalog import Catalog, NewFile, now_string
from .catalog.records import Dataset
from .errors import AMSStoreError, ImportSourceError
from .files import fast_sha
from .keys import ENTRY_TYPES, KOSH_FILE_FIELDS, MIME_TYPES
from .progress import ProgressBar
from .url import StoreURL, parse_store_url

__all__ = ["ImportReport", "ImportCounts", "import_catalogue", "CONFIG_NAME"]

LOGGER = logging.getLogger(__name__)

CONFIG_NAME = "ams_config.json"
DEFAULT_STORE_NAME = "ams_store.sql"
SQL_TABLE = "entries"
SQL_COLUMNS = ("id", "application_name", "domain_name", "filename", "entry_type", "version",
               "metadata")
_SQLITE_HEADER = b"SQLite format 3\x00"
_SINA_TABLE = "Record"
_SHOWN_PROBLEMS = 5

Progress = Union[None, bool, Callable[[int, int], None]]


# --------------------------------------------------------------------------- report
@dataclass
class ImportCounts:
    """Records of one entry: ``imported`` (including ``imported_missing``, whose
    file is gone), ``skipped_existing`` (path already in this store),
    ``skipped_missing`` (file gone, ``missing="skip"``) and
    ``skipped_duplicate`` (a path the source lists more than once: the first
    one is imported)."""

    imported: int = 0
    imported_missing: int = 0
    skipped_existing: int = 0
    skipped_missing: int = 0
    skipped_duplicate: int = 0


@dataclass
class ImportReport:
    """What :meth:`AMSDataStore.import_from` did, per application, domain and entry."""

    source: str
    kind: str
    entries: Dict[Tuple[str, str, str], ImportCounts] = field(default_factory=dict)

    def counts(self, application_name: str, domain_name: str, entry_type: str) -> ImportCounts:
        return self.entries.setdefault((application_name, domain_name, entry_type),
                                       ImportCounts())

    @property
    def totals(self) -> ImportCounts:
        total = ImportCounts()
        for counts in self.entries.values():
            for key, value in asdict(counts).items():
                setattr(total, key, getattr(total, key) + value)
        return total

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready values: totals, and one row per application/domain/entry."""
        return {"source": self.source, "kind": self.kind, **asdict(self.totals),
                "entries": [{"application_name": app, "domain_name": domain,
                             "entry_type": entry, **asdict(counts)}
                            for (app, domain, entry), counts in sorted(self.entries.items())]}


@dataclass
class LegacyRecord:
    """One record of an older catalogue, checked; ``origin`` says where it came from."""

    origin: str
    application_name: str
    domain_name: str
    entry_type: str
    version: int
    path: str
    metadata: Dict[str, Any]
    fast_sha: Optional[str] = None


class _Problems:
    """Collects what is wrong with a source so that one error names all of it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: List[str] = []

    def check(self, origin: str, check: Callable[[], Any]) -> Any:
        try:
            return check()
        except AMSStoreError as error:
            self.items.append(f"{origin}: {error}")
            return None

    def add(self, origin: str, message: str) -> None:
        self.items.append(f"{origin}: {message}")

    def raise_if_any(self, what: str = "cannot be imported") -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:_SHOWN_PROBLEMS])
        more = len(self.items) - _SHOWN_PROBLEMS
        raise ImportSourceError(f"{self.source} {what} ({len(self.items)} problem(s), nothing "
                                f"was written): {shown}" + (f"; and {more} more" if more > 0 else ""))


# --------------------------------------------------------------------------- entry point
def import_catalogue(catalog: Catalog, source: Any, application_name: Optional[str],
                     missing: str, progress: Progress,
                     ) -> ImportReport:
    """Read and check ``source`` whole, then write it into ``catalog``'s store."""
    kind, location, records = read_source(source, application_name)
    if application_name is not None:
        applications = sorted({r.application_name for r in records})
        records = [r for r in records if r.application_name == application_name]
        if applications and not records:
            raise ImportSourceError(f"{location} holds no records of application "
                                    f"{application_name!r} (it holds: "
                                    f"{', '.join(map(repr, applications))})")
    report = ImportReport(location, kind)
    groups = _plan(catalog, records, missing, report, location, progress)
    _write(catalog, groups, progress)
    totals = report.totals
    LOGGER.info("imported %d record(s) from %s (%s): %d with a missing file, %d already "
                "registered, %d missing skipped, %d duplicates skipped", totals.imported,
                location, kind, totals.imported_missing, totals.skipped_existing,
                totals.skipped_missing, totals.skipped_duplicate)
    return report


def read_source(source: Any, application_name: Optional[str] = None
                ) -> Tuple[str, str, List[LegacyRecord]]:
    """Detect the kind of ``source``; return (kind, where, its checked records)."""
    url, config = _resolve(source)
    location = str(url) if url.backend != "sqlite" else cast(str, url.path)
    config_app = None
    if config is not None:
        config_app = config[1]
        location = f"{url.path} (from {config[0]})"
    tables = _tables(url, location)
    has_sql, has_kosh = SQL_TABLE in tables, _SINA_TABLE in tables
    if has_sql and has_kosh and config is None:
        raise ImportSourceError(f"{location} holds both a table {SQL_TABLE!r} and a Kosh store; "
                                "give the ams_config.json to import the Kosh store")
    if has_sql and config is None:
        return "sql-table", location, _read_sql_table(url, location, tables[SQL_TABLE])
    if has_kosh:
        if config is None:
            config_app = _config_beside(url)
        return "kosh", location, _read_kosh(url, location, config_app or application_name)
    raise ImportSourceError(f"{location} is neither an older AMS store (no table "
                            f"{SQL_TABLE!r}) nor a Kosh store (no table {_SINA_TABLE!r})"
                            + (f"; tables: {', '.join(sorted(tables))}" if tables else
                               "; it has no tables"))


# --------------------------------------------------------------------------- detection
def _resolve(source: Any) -> Tuple[StoreURL, Optional[Tuple[str, str]]]:
    """The database URL of ``source``, and (config path, application) for a Kosh-era config."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise ImportSourceError(f"the source must be a path or URL, not {source!r}")
    if "://" in source and not source.lower().startswith("sqlite:"):
        try:
            return parse_store_url(source), None
        except AMSStoreError as error:
            raise ImportSourceError(f"bad source URL: {error}") from None
    if source.lower().startswith("sqlite:"):
        try:
            path = cast(str, parse_store_url(source).path)  # a sqlite URL has a path
        except AMSStoreError as error:
            raise ImportSourceError(f"bad source URL: {error}") from None
    else:
        path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ImportSourceError(f"the source folder holds no {CONFIG_NAME}: {path!r}")
    if not os.path.isfile(path):
        raise ImportSourceError(f"the source does not exist: {path!r}")
    with open(path, "rb") as handle:
        head = handle.read(len(_SQLITE_HEADER))
    if head == _SQLITE_HEADER:
        return StoreURL(backend="sqlite", path=path), None
    if path.endswith(".json") or head.lstrip()[:1] == b"{":
        store_path, name = read_config(path)
        return StoreURL(backend="sqlite", path=store_path), (path, name)
    raise ImportSourceError(f"the source is not a SQLite database nor an {CONFIG_NAME}: {path!r}")


def read_config(path: str) -> Tuple[str, str]:
    """(Kosh store file, application name) named by a Kosh-era ``ams_config.json``."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ImportSourceError(f"cannot read {path!r} as JSON: {error}") from None
    db = config.get("ams_persistent_db", config.get("db")) if isinstance(config, dict) else None
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name or not isinstance(db, dict) \
            or not isinstance(db.get("path"), str):
        raise ImportSourceError(f"{path!r} is not an AMS config: it needs \"name\" and "
                                "\"ams_persistent_db\": {\"path\": ..., \"store\": ...}")
    store = db.get("store", DEFAULT_STORE_NAME)
    if not isinstance(store, str) or not store:
        raise ImportSourceError(f"{path!r}: \"store\" must be a file name, not {store!r}")
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), db["path"])  # kept if absolute
    store_path = os.path.abspath(os.path.join(folder, store))
    if not os.path.isfile(store_path):
        raise ImportSourceError(f"the Kosh store {store_path!r} named by {path!r} does not exist")
    return store_path, name


def _config_beside(url: StoreURL) -> Optional[str]:
    """The application of an ``ams_config.json`` next to a Kosh file that names that file."""
    if url.backend != "sqlite":
        return None
    candidate = os.path.join(os.path.dirname(cast(str, url.path)), CONFIG_NAME)
    if not os.path.isfile(candidate):
        return None
    try:
        store_path, name = read_config(candidate)
    except ImportSourceError as error:
        LOGGER.warning("ignoring %s: %s", candidate, error)
        return None
    return name if os.path.samefile(store_path, cast(str, url.path)) else None


def _engine(url: StoreURL) -> sa.engine.Engine:
    """A read-only engine on the source (SQLite opened with mode=ro: never created or changed)."""
    if url.backend == "sqlite":
        target = f"file:{quote(cast(str, url.path))}?mode=ro"
        return sa.create_engine("sqlite://", poolclass=sa.pool.NullPool,
                                creator=lambda: sqlite3.connect(target, uri=True))
    return sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool,
                            connect_args={"connection_timeout": 10, "use_pure": True})


def _tables(url: StoreURL, location: str) -> Dict[str, List[str]]:
    """Table name -> column names of the source database."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {name: [c["name"] for c in inspector.get_columns(name)]
                    if name == SQL_TABLE else [] for name in inspector.get_table_names()}
    except sa.exc.DBAPIError as error:
        raise ImportSourceError(f"cannot read {location}: "
                                f"{str(getattr(error, 'orig', error)).splitlines()[0]}") from None
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- SQL-table store
def _read_sql_table(url: StoreURL, location: str, columns: List[str]) -> List[LegacyRecord]:
    absent = [c for c in SQL_COLUMNS if c not in columns]
    if absent:
        raise ImportSourceError(f"{location}: table {SQL_TABLE!r} lacks the column(s) "
                                f"{', '.join(absent)} (it has: {', '.join(columns)})")
    query: Any = (sa.select(*[sa.column(c) for c in SQL_COLUMNS]).select_from(sa.table(SQL_TABLE))
             .order_by(sa.column("id")))
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.DBAPIError as error:
        raise ImportSourceError(f"cannot read table {SQL_TABLE!r} of {location}: "
                                f"{str(getattr(error, 'orig', error)).splitlines()[0]}") from None
    finally:
        engine.dispose()
    problems = _Problems(location)
    records = []
    for row_id, application, domain, filename, entry_type, version, metadata in rows:
        origin = f"entry id {row_id}"
        if isinstance(metadata, bytes):
            metadata = metadata.decode("utf-8", "replace")
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError as error:
                problems.add(origin, f"metadata is not JSON ({error})")
                continue
        if metadata is not None and not isinstance(metadata, dict):
            problems.add(origin, f"metadata must be a JSON object, not {metadata!r:.80}")
            continue
        record = _check(problems, origin, application, domain, entry_type, version, filename,
                        metadata or {})
        if record is not None:
            records.append(record)
    problems.raise_if_any()
    return records


def _check(problems: _Problems, origin: str, application: Any, domain: Any, entry_type: Any,
           version: Any, path: Any, metadata: Dict[str, Any],
           fast_sha: Optional[str] = None) -> Optional[LegacyRecord]:
    """One record with every field checked as the store's own add checks it."""
    before = len(problems.items)
    application = problems.check(origin, lambda: _validate.name(application, "application_name"))
    domain = problems.check(origin, lambda: _validate.name(domain, "domain_name"))
    entry_type = problems.check(origin, lambda: _validate.entry_type(entry_type))
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        problems.add(origin, f"version must be an integer, not {version!r}")
    else:
        version = problems.check(origin, lambda: _validate.version(version))
    if not isinstance(path, str) or not os.path.isabs(path):
        problems.add(origin, f"filename must be an absolute path, not {path!r}")
    else:
        path = problems.check(origin, lambda: _validate.absolute_path(path, "filename"))
    metadata = problems.check(origin, lambda: _validate.metadata(
        metadata, KOSH_FILE_FIELDS))
    if len(problems.items) > before:
        return None
    return LegacyRecord(origin, application, domain, entry_type, int(version), path, metadata,
                        fast_sha)


# --------------------------------------------------------------------------- Kosh-era store
def _read_kosh(url: StoreURL, location: str,
               application_name: Optional[str]) -> List[LegacyRecord]:
    source = Catalog(url, read_only=True)
    try:
        source.open()
        problems = _Problems(location)
        datasets = []
        for member in source.member_datasets():
            origin = f"ensemble {member.ensemble.domain_name!r} dataset {member.id}"
            if member.name not in ENTRY_TYPES:
                problems.add(origin, f"unknown entry type {member.name!r}")
            elif isinstance(member.version, bool) or not isinstance(member.version,
                                                                    numbers.Integral):
                problems.add(origin, f"version must be an integer, not {member.version!r}")
            else:
                datasets.append(Dataset(member.id, member.ensemble, member.name,
                                        int(member.version)))
        files = source.dataset_files(datasets)
    except ImportSourceError:
        raise
    except AMSStoreError as error:
        raise ImportSourceError(f"cannot read the Kosh store {location}: {error}") from None
    finally:
        source.close()
    records = []
    for file in files:
        ensemble = file.dataset.ensemble
        application = ensemble.application_name or application_name
        origin = (f"{ensemble.domain_name!r}/{file.dataset.entry_type} version "
                  f"{file.dataset.version} file {file.path!r}")
        if application is None:
            problems.add(origin, f"no application: give application_name, or put the store's "
                                 f"{CONFIG_NAME} beside it")
            continue
        record = _check(problems, origin, application, ensemble.domain_name,
                        file.dataset.entry_type, file.dataset.version, file.path, file.metadata,
                        file.fast_sha or None)
        if record is not None:
            records.append(record)
    problems.raise_if_any()
    return records


# --------------------------------------------------------------------------- writing
Group = Tuple[str, str, str, int]


def _plan(catalog: Catalog, records: List[LegacyRecord], missing: str,
          report: ImportReport, location: str,
          progress: Progress) -> Dict[Group, List[NewFile]]:
    """Decide each record's fate and build the files to write, grouped by version.

    Files that exist are checked for their entry's format (HDF5, TorchScript);
    a file that is gone is imported without that check when ``missing`` is
    "import", with the source's checksum or else the one Kosh computes for a
    missing path, so that verification reports it missing.
    """
    seen: Dict[str, str] = {}
    unique = []
    for record in records:
        counts = report.counts(record.application_name, record.domain_name, record.entry_type)
        if record.path in seen:
            counts.skipped_duplicate += 1
            LOGGER.warning("%s: %s lists %r again (first at %s); skipped", location,
                           record.origin, record.path, seen[record.path])
            continue
        seen[record.path] = record.origin
        unique.append(record)
    taken = catalog.locate(seen)
    problems = _Problems(location)
    groups: Dict[Group, List[NewFile]] = defaultdict(list)
    bar = _progress_bar(progress, len(unique), "checking")
    date = now_string()
    for done, record in enumerate(unique, 1):
        counts = report.counts(record.application_name, record.domain_name, record.entry_type)
        bar(done)
        if record.path in taken:
            counts.skipped_existing += 1
            continue
        present = os.path.isfile(record.path)
        if not present and missing == "skip":
            counts.skipped_missing += 1
            continue
        if present:
            try:
                _validate.file_format(record.path, record.entry_type)
            except AMSStoreError as error:
                problems.add(record.origin, str(error))
                continue
        counts.imported += 1
        counts.imported_missing += not present
        metadata = dict(record.metadata)
        metadata.setdefault("date", date)
        groups[(record.application_name, record.domain_name, record.entry_type,
                record.version)].append(
            NewFile(record.path, metadata, record.fast_sha or fast_sha(record.path)))
    bar(None)
    problems.raise_if_any("holds files that are not of their entry's format")
    return groups


def _write(catalog: Catalog, groups: Dict[Group, List[NewFile]], progress: Progress) -> None:
    """One transaction per application/domain/entry/version group."""
    total = sum(len(files) for files in groups.values())
    bar = _progress_bar(progress, total, "importing")
    done = 0
    for (application, domain, entry_type, version), files in sorted(groups.items()):
        catalog.add(application, domain, entry_type, MIME_TYPES[entry_type], files, version,
                    action="import")
        done += len(files)
        bar(done)
        LOGGER.debug("imported %d file(s) into %s/%s/%s version %d", len(files), application,
                     domain, entry_type, version)
    bar(None)


# --------------------------------------------------------------------------- progress
def _progress_bar(progress: Progress, total: int, label: str) -> Callable[[Optional[int]], None]:
    """``update(done)`` for ``progress`` (a callable, or True: the one bar of
    :mod:`ams.progress`); ``update(None)`` ends. Nothing is drawn otherwise."""
    if progress is None or progress is False:
        return lambda done: None
    report = ProgressBar(label, total, always=True) if progress is True else progress
    return lambda done: None if done is None else report(done, total)
