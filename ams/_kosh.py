"""The Kosh adapter: the only module that talks to Kosh and Sina.

It reads and writes exactly the records, data rows, documents and
relationships that Kosh itself writes (ensemble per domain, one dataset per
entry and version, one ``file`` record per registered path), but in bulk, on
Sina's tables through SQLAlchemy connections: one transaction per call, a
constant number of round trips per call, and a store-wide write lock so that
concurrent writers allocate versions safely. The statements of every call are
plain SQL run on the driver's cursor (:func:`_run`): at 10^5 files SQLAlchemy's
per-statement and per-row work would cost more than the database's.

The adapter assumes valid input; argument checks live in :mod:`ams.store`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import operator
import os
import random
import time
import warnings
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from numbers import Real
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sina import sjson
from sina.datastores import sql_schema as sina_schema

from . import _sina_schema
from .errors import BackendError, ConcurrencyError, DuplicateEntryError, NotFoundError
from .url import StoreURL, mask_password

LOGGER = logging.getLogger(__name__)

STORE_INFO_ID = "__kosh_store_info__"
# Seconds to wait for a MariaDB server to answer a new connection (a query may take longer).
CONNECT_TIMEOUT_SECONDS = 5
# MariaDB error codes that get their own message (see KoshAdapter._describe_failure).
_ACCESS_DENIED = frozenset({1044, 1045, 1698})
_UNKNOWN_DATABASE = 1049
_CONNECTION_LOST = frozenset({1927, 2006, 2013, 2055, 4031})
_DUPLICATE_KEY = 1062  # a concurrent opener inserted Kosh's records first
# Attributes Kosh keeps on a file record besides the user's metadata.
KOSH_FILE_FIELDS = frozenset({
    "fast_sha", "long_sha", "uri", "mime_type", "associated", "creation_date",
    "last_modified_date", "loader_kwargs",
})
# Ensemble attributes a member dataset does not inherit (Kosh's __ok_duplicates__).
_NOT_INHERITED = frozenset({"creator", "id", "name", "creation_date", "last_modified_date"})
_CHUNK = 500
# One executemany (on MariaDB one multi-row INSERT) per this many rows or bytes,
# well under MariaDB's default 16 MB max_allowed_packet.
_INSERT_ROWS = 2000
_INSERT_BYTES = 4 * 2**20
# Files whose rows one add builds and inserts at a time.
_ADD_BATCH = 2000
# A search narrowed in SQL to at most this many records fetches them by id.
_BY_ID_LIMIT = 5000
_SQLITE_CACHE_KIB = 32768  # page cache per SQLite connection (default: 2 MiB)

_RECORD = sina_schema.Record.__table__
_RELATIONSHIP = sina_schema.Relationship.__table__
_SCALAR = sina_schema.ScalarData.__table__
_STRING = sina_schema.StringData.__table__
_SCALAR_LIST = sina_schema.ListScalarData.__table__
_STRING_LIST_MASTER = sina_schema.ListStringDataMaster.__table__
_STRING_LIST_ENTRY = sina_schema.ListStringDataEntry.__table__
_DOCUMENT = sina_schema.Document.__table__
_CURVE_SET = sina_schema.CurveSetMeta.__table__
_DATA_TABLES = (_SCALAR, _STRING, _SCALAR_LIST, _STRING_LIST_MASTER, _STRING_LIST_ENTRY, _CURVE_SET)


def now_string() -> str:
    """Kosh's and the original store's date format: ``str(datetime.now())``."""
    return str(datetime.now())


# --------------------------------------------------------------------------- records
def new_raw(record_id: str, record_type: str) -> Dict[str, Any]:
    """An empty Sina record in the key order Sina writes."""
    return {"id": record_id, "type": record_type, "data": {}, "curve_sets": {},
            "library_data": {}, "files": {}, "user_defined": {"kosh_information": {}}}


def record_rows(raw: Dict[str, Any]) -> Dict[sa.Table, List[Dict[str, Any]]]:
    """The table rows Sina's ``create_sql_record`` makes for ``raw`` (curves aside)."""
    record_id = raw["id"]
    rows: Dict[sa.Table, List[Dict[str, Any]]] = defaultdict(list)
    rows[_RECORD].append({"id": record_id, "type": raw["type"], "raw": sjson.dumps(raw)})
    for name, datum in raw.get("data", {}).items():
        value = datum["value"]
        tags = sjson.dumps(datum["tags"]).decode() if "tags" in datum else None
        kind = type(value)  # exact-type fast paths first: ABC checks cost ~1 us each
        if kind is str:
            rows[_STRING].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
        elif kind is float or kind is int or kind is bool:
            rows[_SCALAR].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
        elif isinstance(value, list):
            if not value:
                continue
            if isinstance(value[0], Real):
                rows[_SCALAR_LIST].append({"id": record_id, "name": name, "min": min(value),
                                           "max": max(value), "units": datum.get("units"),
                                           "tags": tags})
            else:
                rows[_STRING_LIST_MASTER].append({"id": record_id, "name": name,
                                                  "units": datum.get("units"), "tags": tags})
                rows[_STRING_LIST_ENTRY].extend(
                    {"id": record_id, "name": name, "index": index, "value": item}
                    for index, item in enumerate(value))
        elif isinstance(value, Real):
            rows[_SCALAR].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
        elif isinstance(value, str):
            rows[_STRING].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
    for uri, info in raw.get("files", {}).items():
        tags = sjson.dumps(info["tags"]).decode() if "tags" in info else None
        rows[_DOCUMENT].append({"id": record_id, "uri": uri, "mimetype": info.get("mimetype"),
                                "tags": tags})
    return rows


def new_ids(count: int) -> List[str]:
    """``count`` fresh record ids, increasing within the call: UUIDv7 hex (RFC 9562).

    Kosh makes random ``uuid4().hex`` ids; any unique string works, and these
    have the same form. Ordered by time, they put new records at the end of
    every primary key (Sina's keys all start with the record id) instead of at
    random places: adding 10^5 records touches far fewer index pages (above
    all in InnoDB, whose tables are stored in primary-key order).
    """
    millis = time.time_ns() // 1_000_000
    start = random.SystemRandom().getrandbits(74) % (2**74 - count)  # 74 random bits
    out = []
    for offset in range(count):
        bits = start + offset
        value = ((millis << 80) | (0x7 << 76) | ((bits >> 62) << 64) | (0b10 << 62)
                 | (bits & (2**62 - 1)))
        out.append(f"{value:032x}")
    return out


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- results
@dataclass
class Ensemble:
    id: str
    domain_name: str
    application_name: Optional[str]
    raw: Dict[str, Any]


@dataclass
class Dataset:
    id: str
    ensemble: Ensemble
    entry_type: str
    version: int


class FileRecord:
    """One Kosh ``file`` record, as associated with one dataset.

    Parsed once when read, keeping its path, metadata and checksum; the whole
    raw JSON (needed only to rewrite the record) is parsed again from the
    stored text on each use of :attr:`raw`. Reading 10^5 records then holds
    ~1 KB per record instead of ~5 KB of parsed JSON.
    """

    __slots__ = ("id", "path", "dataset", "metadata", "fast_sha", "associated", "_text")

    def __init__(self, record_id: str, dataset: Dataset, text: Any, keep_raw: bool = True) -> None:
        data = sjson.loads(text)["data"]
        self.id = record_id
        self.path: str = data["uri"]["value"]
        self.dataset = dataset
        self.metadata: Dict[str, Any] = {key: datum["value"] for key, datum in data.items()
                                         if key not in KOSH_FILE_FIELDS}
        sha = data["fast_sha"]["value"] if "fast_sha" in data else None
        #: Kosh's checksum of the file when it was registered (None if Kosh stored none).
        self.fast_sha: Optional[str] = sha if isinstance(sha, str) else None
        #: Ids of every dataset the record is associated with (Kosh's ``associated``).
        self.associated: List[str] = data["associated"]["value"] if "associated" in data else []
        self._text = text if keep_raw else None

    @property
    def raw(self) -> Dict[str, Any]:
        """The record's raw JSON, freshly parsed (a new dict on every access)."""
        if self._text is None:
            raise AttributeError(f"file record {self.id} was read without its raw JSON")
        return sjson.loads(self._text)

    def __repr__(self) -> str:
        return f"FileRecord(id={self.id!r}, path={self.path!r}, dataset={self.dataset.id!r})"


@dataclass
class NewFile:
    """A file to register: absolute path, metadata (already checked) and Kosh's fast sha."""

    path: str
    metadata: Dict[str, Any]
    fast_sha: str


@dataclass
class RemoveResult:
    removed: List[FileRecord] = field(default_factory=list)
    still_referenced: Set[str] = field(default_factory=set)


@dataclass
class MemberDataset:
    """A dataset of an ensemble as stored, before its name and version are checked."""

    id: str
    ensemble: Ensemble
    name: Any
    version: Any


# --------------------------------------------------------------------------- adapter
class KoshAdapter:
    """Bulk access to a Kosh store's Sina tables for one application."""

    def __init__(self, url: StoreURL, read_only: bool = False,
                 connect_timeout: int = CONNECT_TIMEOUT_SECONDS):
        self.url = url
        self.read_only = read_only
        self.connect_timeout = connect_timeout
        self.engine: Optional[Engine] = None
        self.created: List[str] = []
        self._types = {"file": "file", "ensemble": "kosh_ensemble", "dataset": "dataset",
                       "predicate": "is a member of ensemble"}
        self._creator = "anonymous"
        self._max_packet: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        self.engine = self._create_engine()
        try:
            with self._translate_errors("open"):
                if not self.read_only:
                    self.created = _sina_schema.create_tables(self.engine)
                    self._initialise_kosh()
                self._read_store_info(self.engine)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def _create_engine(self) -> Engine:
        if self.url.backend == "sqlite":
            if self.read_only and not os.path.isfile(self.url.path):
                # sqlite3 would create an empty file (and a reader must not write).
                raise BackendError(f"no store at {self.url.path}: the file does not exist")
            os.makedirs(os.path.dirname(self.url.path), exist_ok=True)
            # Pooled: a connection kept between calls saves its setup on every call.
            engine = sa.create_engine(self.url.sqlalchemy_url(), poolclass=sa.pool.QueuePool,
                                      connect_args={"timeout": 120, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection, _record):  # pragma: no cover - driver hook
                dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
                dbapi_connection.execute("PRAGMA foreign_keys=ON")
                dbapi_connection.execute("PRAGMA busy_timeout=120000")
                # Only safe, per-connection settings: the default rollback journal
                # and synchronous=FULL stay (WAL needs shared memory, which a store
                # on a shared/network filesystem cannot rely on). A larger page
                # cache keeps big inserts and their index updates in memory.
                dbapi_connection.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")

            @event.listens_for(engine, "begin")
            def _on_begin(connection):  # pragma: no cover - driver hook
                mode = "BEGIN IMMEDIATE" if connection.info.get("ams_write") else "BEGIN"
                _run(connection, mode)

            _ENGINES.add(engine)
            return engine
        # Pooled, checked with a ping on checkout (the server may have dropped an
        # idle connection); a new connection costs several round trips.
        engine = sa.create_engine(
            self.url.sqlalchemy_url(), poolclass=sa.pool.QueuePool, pool_pre_ping=True,
            pool_recycle=3600, isolation_level="READ COMMITTED",
            connect_args={"connection_timeout": self.connect_timeout, "charset": "utf8mb4",
                          "collation": "utf8mb4_bin", "use_pure": True},
        )
        _ENGINES.add(engine)
        return engine

    def _initialise_kosh(self) -> None:
        """Write Kosh's store-info and user records the way ``kosh.connect`` does.

        ``kosh.connect`` writes them with separate Sina calls that race when
        several processes open a new store at once (and swallow their errors),
        and Sina's own SQLite engine gives up after 5 s on a busy store. So
        Kosh's own functions make the records in a private in-memory Sina store,
        and the missing ones are copied here in one write transaction under the
        store's lock (``BEGIN IMMEDIATE`` on SQLite). On MariaDB, before the
        store-info row exists to be locked, a concurrent opener's duplicate key
        rolls the transaction back and the retry finds the records there.
        """
        wanted = {STORE_INFO_ID, _user_id(_username()), _user_id("anonymous")}

        def present(conn: Connection) -> Set[str]:
            return set(conn.execute(sa.select(_RECORD.c.id).where(_RECORD.c.id.in_(sorted(wanted))))
                       .scalars())

        with self._translate_errors("open"), self.engine.connect() as conn:
            if present(conn) == wanted:
                return
        raws = _kosh_records([_username(), "anonymous"])
        # kosh.connect's close() stamps the store-info record; a new store gets it too.
        raws[STORE_INFO_ID]["data"].setdefault("last_modified_date", {"value": now_string()})

        def work(conn: Connection) -> None:
            inserts: Dict[sa.Table, List[Dict[str, Any]]] = defaultdict(list)
            for record_id in sorted(wanted - present(conn)):
                _extend(inserts, record_rows(raws[record_id]))
            self._insert(conn, inserts)
        self._write("open", work, retry_codes=(_DUPLICATE_KEY,))

    def _read_store_info(self, engine: Engine) -> None:
        with engine.connect() as conn:
            if self.read_only and not sa.inspect(conn).has_table(_RECORD.name):
                raise BackendError(f"{self.url.location} is not a Kosh store (it has no "
                                   f"{_RECORD.name} table); a read-only open creates nothing: "
                                   "open it once without read_only to create it")
            rows = dict(conn.execute(sa.select(_RECORD.c.id, _RECORD.c.raw).where(
                _RECORD.c.id.in_([STORE_INFO_ID, _user_id(_username())]))).all())
        if STORE_INFO_ID not in rows:
            raise BackendError(f"{self.url.location} is not a Kosh store (no store-info record); "
                               "open it once without read_only to initialise it")
        data = sjson.loads(rows[STORE_INFO_ID])["data"]
        for key, name in (("file", "sources_type"), ("ensemble", "ensembles_type"),
                          ("predicate", "ensemble_predicate")):
            if name in data:
                self._types[key] = data[name]["value"]
        self._creator = _user_id(_username()) if _user_id(_username()) in rows else "anonymous"

    @property
    def is_open(self) -> bool:
        return self.engine is not None

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """One read transaction that sees one committed state of the store.

        SQLite's read transaction is a snapshot already (the rollback journal
        keeps writers from committing under a reader). MariaDB's READ COMMITTED
        would let each statement of one call see a different commit (a move
        committing between two statements hid its files from both entries), so
        reads run as REPEATABLE READ: one snapshot per call, never a long-lived
        one (that is what hid new files from Kosh's sessions).
        """
        with self._translate_errors("read"), self.engine.connect() as conn:
            with conn.begin():
                if self.url.backend != "sqlite":
                    # For this transaction only: nothing to reset when the
                    # connection goes back to the pool (one round trip, not four).
                    _run(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield conn

    def _write(self, operation: str, work: Callable[[Connection], Any], attempts: int = 8,
               retry_codes: Tuple[int, ...] = ()) -> Any:
        """Run ``work`` in one write transaction under the store's write lock, with retries.

        A lock timeout, deadlock or "database is locked" (or an error code in
        ``retry_codes``) rolls the whole call back and runs it again after a
        random, growing pause; ``work`` must therefore only read and write the
        database. After ``attempts`` conflicts: :class:`ConcurrencyError`.
        """
        delay = 0.05
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                with self._translate_errors(operation, retryable=True, retry_codes=retry_codes):
                    with self.engine.connect() as conn:
                        conn.info["ams_write"] = True
                        try:
                            with conn.begin():
                                self._lock(conn)
                                return work(conn)
                        finally:
                            # On a dropped connection .info would reconnect (and a failed
                            # reconnect would hide the real error); its info is gone anyway.
                            if not conn.invalidated:
                                conn.info.pop("ams_write", None)
            except _Retry as retry:
                last = str(retry)
                LOGGER.info("%s: conflict with another writer (%s), attempt %d of %d",
                            operation, retry, attempt, attempts)
                if attempt < attempts:
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 2.0)
        raise ConcurrencyError(f"{operation} on {self.url.backend} store {self.url.location}: "
                               f"gave up after {attempts} attempts that conflicted with other "
                               f"writers (last: {last}); nothing of this call was recorded")

    def _lock(self, conn: Connection) -> None:
        """Serialise writers: SQLite's BEGIN IMMEDIATE already did; MariaDB locks a row."""
        if self.url.backend != "sqlite":
            _run(conn, 'SELECT "id" FROM "Record" WHERE "id" = ? FOR UPDATE', (STORE_INFO_ID,))

    @contextlib.contextmanager
    def _translate_errors(self, operation: str, retryable: bool = False,
                          retry_codes: Tuple[int, ...] = ()) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as error:
            message = mask_password(str(getattr(error, "orig", error)).splitlines()[0]
                                    if str(getattr(error, "orig", error)) else repr(error),
                                    self.url.password)
            code = _error_code(error)
            if retryable and (code in (1205, 1213) + tuple(retry_codes)
                              or "database is locked" in message
                              or "deadlock" in message.lower()):
                raise _Retry(message) from None
            raise BackendError(self._describe_failure(operation, code, message,
                                                      connecting=error.statement is None)) from None

    def _describe_failure(self, operation: str, code: Optional[int], message: str,
                          connecting: bool) -> str:
        """One line naming the server and database (never the password) and the likely cause."""
        if self.url.backend == "sqlite":
            return f"{operation} on sqlite store {self.url.location} failed: {message}"
        server = f"MariaDB server {self.url.host}:{self.url.port}"
        database = self.url.database
        if code == _UNKNOWN_DATABASE:
            return (f"{operation}: database {database!r} does not exist on {server}; create it "
                    f"first (CREATE DATABASE `{database}`): {message}")
        if code in _ACCESS_DENIED:
            return (f"{operation}: access to database {database!r} on {server} denied for user "
                    f"{self.url.user!r}; check the user name, password and grants: {message}")
        if connecting:
            if not message.split(":", 1)[-1].strip():
                message = f"{message.strip().rstrip(':')}: no answer"
            return (f"{operation}: cannot connect to {server} for database {database!r} "
                    f"(waited at most {self.connect_timeout} s): {message}")
        if code in _CONNECTION_LOST:
            return (f"{operation} on {server}, database {database!r}: lost the connection "
                    f"({message}); nothing of this call was committed unless the connection "
                    "dropped during the commit itself; the next call reconnects")
        return f"{operation} on {server}, database {database!r} failed: {message}"

    # ------------------------------------------------------------------ reads
    # The reads and writes of every call run as driver SQL (see _run): building and
    # executing a SQLAlchemy statement costs 0.2-2 ms per statement here, 10-100
    # times the database's own work on the small queries that most calls make.
    def ensembles(self, conn: Connection, application_name: Optional[str],
                  domain_names: Optional[Iterable[str]] = None) -> List[Ensemble]:
        """Ensembles visible to the application: its own and legacy (no application_name).

        ``application_name=None``: every ensemble of every application (importer).
        """
        sql = ('SELECT r."id", s."value", r."raw" FROM "Record" r JOIN "StringData" s'
               ' ON s."id" = r."id" AND s."name" = ? WHERE r."type" = ?')
        rows: List[Any] = []
        if domain_names is None:
            rows = _run(conn, sql, ("name", self._types["ensemble"]))
        else:
            for chunk in _chunks(sorted(set(domain_names))):
                rows.extend(_run(conn, sql + f' AND s."value" IN ({_marks(len(chunk))})',
                                 ("name", self._types["ensemble"], *chunk)))
        out = []
        for record_id, name, raw in rows:
            raw = sjson.loads(raw)
            app = raw["data"].get("application_name", {}).get("value")
            if app is None or application_name is None or app == application_name:
                out.append(Ensemble(record_id, name, app, raw))
        # Oldest first, own before legacy, so writes pick a stable target.
        out.sort(key=lambda e: (e.application_name is None,
                                e.raw["data"].get("creation_date", {}).get("value", ""), e.id))
        return out

    def datasets(self, conn: Connection, ensembles: Sequence[Ensemble],
                 entry_types: Optional[Iterable[str]] = None) -> List[Dataset]:
        if not ensembles:
            return []
        by_id = {e.id: e for e in ensembles}
        sql = ('SELECT rel."object_id", r."id", n."value", v."value" FROM "Relationship" rel'
               ' JOIN "Record" r ON r."id" = rel."subject_id"'
               ' JOIN "StringData" n ON n."id" = r."id" AND n."name" = ?'
               ' JOIN "ScalarData" v ON v."id" = r."id" AND v."name" = ?'
               ' WHERE rel."predicate" = ? AND r."type" = ?')
        params: List[Any] = ["name", "version", self._types["predicate"], "dataset"]
        if entry_types is not None:
            names = sorted(set(entry_types))
            sql += f' AND n."value" IN ({_marks(len(names))})'
            params += names
        out = []
        for chunk in _chunks(sorted(by_id)):
            for ensemble_id, dataset_id, entry_type, version in _run(
                    conn, sql + f' AND rel."object_id" IN ({_marks(len(chunk))})',
                    (*params, *chunk)):
                out.append(Dataset(dataset_id, by_id[ensemble_id], entry_type, int(version)))
        out.sort(key=lambda d: (d.ensemble.domain_name, d.entry_type, d.version, d.id))
        return out

    def dataset_paths(self, conn: Connection, datasets: Sequence[Dataset]) -> Dict[str, List[str]]:
        """Dataset id -> associated uris (Kosh's Document rows), sorted."""
        out: Dict[str, List[str]] = {d.id: [] for d in datasets}
        # In (id, uri) order: SQLite reads it straight from the primary key index,
        # and the sort below then only checks it.
        if len(out) <= 20:  # the usual case: uris alone, one query per dataset
            for dataset_id in out:
                out[dataset_id] = [uri for (uri,) in _run(
                    conn, 'SELECT "uri" FROM "Document" WHERE "id" = ? ORDER BY "uri"',
                    (dataset_id,))]
        else:
            for chunk in _chunks(list(out)):
                for dataset_id, uri in _run(conn, 'SELECT "id", "uri" FROM "Document" WHERE "id"'
                                            f' IN ({_marks(len(chunk))}) ORDER BY "id", "uri"',
                                            chunk):
                    out[dataset_id].append(uri)
        for paths in out.values():
            paths.sort()
        return out

    def file_records(self, conn: Connection, datasets: Sequence[Dataset],
                     paths: Optional[Iterable[str]] = None,
                     conditions: Sequence[Tuple[str, str, Any]] = (),
                     keep_raw: bool = True) -> List[FileRecord]:
        """The file records associated with ``datasets`` (optionally only ``paths``).

        ``keep_raw=False``: the records keep path, metadata and checksum only
        (:attr:`FileRecord.raw` is then unavailable), for reads of many records.

        ``conditions`` (``(key, operator, operand)`` triples from
        :func:`ams._match.parse_conditions`) narrow the read in SQL, through the
        (name, value) indexes of Sina's ScalarData and StringData, so that only
        candidate records are fetched and parsed. That narrowing is a necessary
        condition only (every record matching the conditions is returned, maybe
        a few more); the caller applies the exact, type-aware match.
        """
        by_id = {d.id: d for d in datasets}
        if not by_id:
            return []
        candidates = self._candidate_ids(conn, conditions)
        if candidates is not None and not candidates:
            return []
        sql = ('SELECT e."value", r."id", r."raw" FROM "ListStringDataEntry" e'
               ' JOIN "Record" r ON r."id" = e."id"')
        where = ' WHERE e."name" = ? AND r."type" = ?'
        params: Tuple[Any, ...] = ("associated", self._types["file"])
        out = []

        def collect(sql: str, params: Sequence[Any]) -> None:
            for dataset_id, record_id, raw in _stream(conn, sql, params):
                if dataset_id in by_id and (candidates is None or record_id in candidates):
                    out.append(FileRecord(record_id, by_id[dataset_id], raw, keep_raw))

        if paths is not None:  # the records of these uris, by index (never a scan per chunk)
            by_path: Set[str] = set()
            for chunk in _chunks(sorted(set(paths))):
                by_path.update(row[0] for row in _run(
                    conn, 'SELECT "id" FROM "StringData" WHERE "name" = ? AND "value" IN '
                    f'({_marks(len(chunk))})', ("uri", *chunk)))
            candidates = by_path if candidates is None else candidates & by_path
            if not candidates:
                return []
        if candidates is not None and (paths is not None or len(candidates) <= _BY_ID_LIMIT):
            for chunk in _chunks(sorted(candidates)):
                collect(sql + where + f' AND r."id" IN ({_marks(len(chunk))})', (*params, *chunk))
        else:  # most of the datasets' records: read them dataset by dataset
            for chunk in _chunks(sorted(by_id)):
                collect(sql + where + f' AND e."value" IN ({_marks(len(chunk))})',
                        (*params, *chunk))
        return self._sorted(out)

    @staticmethod
    def _sorted(records: List[FileRecord]) -> List[FileRecord]:
        records.sort(key=lambda f: (f.dataset.ensemble.domain_name, f.dataset.entry_type,
                                    f.dataset.version, f.path))
        return records

    def _candidate_ids(self, conn: Connection,
                       conditions: Sequence[Tuple[str, str, Any]]) -> Optional[Set[str]]:
        """Ids of the records that can match all ``conditions``; None: no narrowing."""
        ids: Optional[Set[str]] = None
        for key, op, operand in conditions:
            query = _condition_sql(key, op, operand)
            if query is None:
                continue
            rows = _stream(conn, *query)  # one set of ids alive, however many match
            ids = ({row[0] for row in rows} if ids is None
                   else {row[0] for row in rows if row[0] in ids})
            if not ids:
                break
        return ids

    def locate(self, conn: Connection, paths: Iterable[str]) -> Dict[str, str]:
        """Where each of ``paths`` is registered in the whole store (any application)."""
        path_list = sorted(set(paths))
        found: Dict[str, List[str]] = defaultdict(list)
        for chunk in _chunks(path_list):
            marks = _marks(len(chunk))
            for dataset_id, uri in _run(conn, 'SELECT "id", "uri" FROM "Document" WHERE "uri" IN '
                                        f'({marks})', chunk):
                found[dataset_id].append(uri)
            # A file record left without a dataset still owns its path in Kosh.
            for (uri,) in _run(conn, 'SELECT s."value" FROM "StringData" s JOIN "Record" r ON'
                               ' r."id" = s."id" WHERE s."name" = ? AND r."type" = ? AND'
                               f' s."value" IN ({marks})', ("uri", self._types["file"], *chunk)):
                found.setdefault("", []).append(uri)
        out: Dict[str, str] = {}
        descriptions = self._describe_datasets(conn, [d for d in found if d])
        for dataset_id, uris in found.items():
            for uri in uris:
                if dataset_id:
                    out[uri] = descriptions.get(dataset_id, f"dataset {dataset_id}")
                else:
                    out.setdefault(uri, "a Kosh file record of this store")
        return out

    def _describe_datasets(self, conn: Connection, dataset_ids: List[str]) -> Dict[str, str]:
        out = {}
        for chunk in _chunks(dataset_ids):
            rows = conn.execute(
                sa.select(_RECORD.c.id, _RECORD.c.raw, _RELATIONSHIP.c.object_id)
                .outerjoin(_RELATIONSHIP, sa.and_(_RELATIONSHIP.c.subject_id == _RECORD.c.id,
                                                  _RELATIONSHIP.c.predicate == self._types["predicate"]))
                .where(_RECORD.c.id.in_(chunk))).all()
            ensemble_ids = [r[2] for r in rows if r[2]]
            ensembles = dict(conn.execute(sa.select(_RECORD.c.id, _RECORD.c.raw)
                                          .where(_RECORD.c.id.in_(ensemble_ids))).all()) if ensemble_ids else {}
            for dataset_id, raw, ensemble_id in rows:
                data = sjson.loads(raw)["data"]
                ensemble = sjson.loads(ensembles[ensemble_id])["data"] if ensemble_id in ensembles else {}
                out[dataset_id] = (
                    f"application {ensemble.get('application_name', {}).get('value')!r}, "
                    f"domain {ensemble.get('name', {}).get('value')!r}, "
                    f"entry {data.get('name', {}).get('value')!r}, "
                    f"version {_as_int(data.get('version', {}).get('value'))}")
        return out

    def member_datasets(self, conn: Connection,
                        ensembles: Sequence[Ensemble]) -> List[MemberDataset]:
        """Every dataset of ``ensembles`` with its raw ``name`` and ``version`` (None if absent).

        Unlike :meth:`datasets`, a dataset without an integer version is not
        skipped, so the importer can name it.
        """
        by_id = {e.id: e for e in ensembles}
        out = []
        query = (sa.select(_RELATIONSHIP.c.object_id, _RECORD.c.id, _RECORD.c.raw)
                 .join(_RECORD, _RECORD.c.id == _RELATIONSHIP.c.subject_id)
                 .where(_RELATIONSHIP.c.predicate == self._types["predicate"]))
        for chunk in _chunks(sorted(by_id)):
            for ensemble_id, dataset_id, raw in conn.execute(
                    query.where(_RELATIONSHIP.c.object_id.in_(chunk))):
                data = sjson.loads(raw)["data"]
                out.append(MemberDataset(dataset_id, by_id[ensemble_id],
                                         data.get("name", {}).get("value"),
                                         data.get("version", {}).get("value")))
        out.sort(key=lambda d: (d.ensemble.domain_name, str(d.name), str(d.version), d.id))
        return out

    def files_listing(self, conn: Connection, attribute: str,
                      values: Iterable[str]) -> Dict[str, Tuple[str, List[str]]]:
        """File records whose list attribute ``attribute`` holds any of ``values``.

        Returns path -> (where it is registered, the matching values).
        """
        hits: Dict[str, List[str]] = defaultdict(list)
        query = (sa.select(_STRING_LIST_ENTRY.c.id, _STRING_LIST_ENTRY.c.value)
                 .join(_RECORD, _RECORD.c.id == _STRING_LIST_ENTRY.c.id)
                 .where(_STRING_LIST_ENTRY.c.name == attribute,
                        _RECORD.c.type == self._types["file"]))
        for chunk in _chunks(sorted(set(values))):
            for record_id, value in conn.execute(query.where(_STRING_LIST_ENTRY.c.value.in_(chunk))):
                hits[record_id].append(value)
        if not hits:
            return {}
        raws = self._raws(conn, list(hits))
        dataset_ids = sorted({d for raw in raws.values()
                              for d in raw["data"].get("associated", {}).get("value", [])})
        where = self._describe_datasets(conn, dataset_ids)
        out = {}
        for record_id, matched in hits.items():
            data = raws[record_id]["data"]
            places = [where.get(d, f"dataset {d}") for d in data.get("associated", {}).get("value", [])]
            out[data["uri"]["value"]] = ("; ".join(places) or "no dataset", sorted(matched))
        return out

    # ------------------------------------------------------------------ public reads
    def read(self) -> contextlib.AbstractContextManager:
        return self._read()

    # ------------------------------------------------------------------ writes
    def add_files(self, application_name: str, domain_name: str, entry_type: str,
                  mime_type: str, files: Sequence[NewFile], version: Optional[int],
                  precommit: Optional[Callable[[], None]] = None,
                  prepare: Optional[Callable[[Connection], None]] = None) -> int:
        """Register ``files`` in one version of one entry; return the version.

        ``prepare(conn)`` runs first inside the transaction (reads that must be
        consistent with the write, e.g. lineage); ``precommit`` runs last.
        Raising in either rolls back.
        """
        def work(conn: Connection) -> int:
            if prepare is not None:
                prepare(conn)
            result = self._add_in(conn, application_name, domain_name, entry_type, mime_type,
                                  files, version)
            if precommit is not None:
                precommit()
            return result
        return self._write("add", work)

    def remove_files(self, application_name: str, domain_name: str, entry_type: str,
                     select: Callable[[FileRecord], bool], versions: Optional[Sequence[int]],
                     paths: Optional[Sequence[str]],
                     guard: Optional[Callable[[Connection, List[FileRecord]], None]] = None,
                     ) -> RemoveResult:
        """Remove the selected records; ``guard(conn, chosen)`` may refuse by raising."""
        def work(conn: Connection) -> RemoveResult:
            records = self._records_of(conn, application_name, domain_name, entry_type,
                                       versions, paths)
            chosen = [r for r in records if select(r)]
            if guard is not None and chosen:
                guard(conn, chosen)
            return self._remove_in(conn, chosen)
        return self._write("remove", work)

    def move_files(self, application_name: str, domain_name: str, src_type: str,
                   dest_type: str, dest_mime_type: str, moves: Sequence[Tuple[str, NewFile]],
                   version: Optional[int], date: str) -> Tuple[int, RemoveResult]:
        """Register the copies and remove the sources in one transaction.

        Each copy's metadata is the source's (``date`` renewed); the sources must
        all be registered in ``src_type`` of this domain.
        """
        def work(conn: Connection) -> Tuple[int, RemoveResult]:
            sources = self._records_of(conn, application_name, domain_name, src_type, None,
                                       [src for src, _ in moves])
            by_path = {r.path: r for r in sources}
            missing = [src for src, _ in moves if src not in by_path]
            if missing:
                raise NotFoundError(f"not registered as {src_type} of domain {domain_name!r}: "
                                    + ", ".join(map(repr, missing)))
            copies = []
            for src, new in moves:
                metadata = dict(by_path[src].metadata)
                metadata.update(new.metadata)
                metadata["date"] = date
                copies.append(NewFile(new.path, metadata, new.fast_sha))
            new_version = self._add_in(conn, application_name, domain_name, dest_type,
                                       dest_mime_type, copies, version)
            return new_version, self._remove_in(conn, [by_path[src] for src, _ in moves])
        return self._write("move", work)

    def application_files(self, conn: Connection, application_name: str,
                          domain_name: Optional[str] = None,
                          keep_raw: bool = True) -> List[FileRecord]:
        """Every file record of the application's (and legacy) ensembles, or of one domain."""
        ensembles = self.ensembles(conn, application_name,
                                   None if domain_name is None else [domain_name])
        return self.file_records(conn, self.datasets(conn, ensembles), keep_raw=keep_raw)

    def remove_where(self, application_name: str, domain_name: Optional[str],
                     select: Callable[[FileRecord], bool], operation: str = "repair") -> RemoveResult:
        """Remove, in one transaction, the application's records that ``select`` picks.

        The records are re-read and ``select`` is asked again under the write
        lock, so a decision made on an earlier read cannot act on a stale record.
        """
        def work(conn: Connection) -> RemoveResult:
            records = self.application_files(conn, application_name, domain_name)
            return self._remove_in(conn, [r for r in records if select(r)])
        return self._write(operation, work)

    def _records_of(self, conn: Connection, application_name: str, domain_name: str,
                    entry_type: str, versions: Optional[Sequence[int]],
                    paths: Optional[Sequence[str]]) -> List[FileRecord]:
        datasets = self.datasets(conn, self.ensembles(conn, application_name, [domain_name]),
                                 [entry_type])
        if versions is not None:
            wanted = set(versions)
            datasets = [d for d in datasets if d.version in wanted]
        return self.file_records(conn, datasets, paths, keep_raw=False)

    def _add_in(self, conn: Connection, application_name: str, domain_name: str,
                entry_type: str, mime_type: str, files: Sequence[NewFile],
                version: Optional[int]) -> int:
        taken = self.locate(conn, [f.path for f in files])
        if taken:
            path, where = next(iter(sorted(taken.items())))
            raise DuplicateEntryError(f"{path!r} is already registered ({where})"
                                      + (f" and {len(taken) - 1} more" if len(taken) > 1 else ""))
        # Fail fast when the new files alone overflow the dataset record (MariaDB).
        limit = self._packet_limit(conn)
        if limit and sum(2 * len(f.path) + 120 for f in files) > limit:
            raise self._too_big(entry_type, domain_name, version, len(files), None, limit)
        now = time.time()
        ensembles = self.ensembles(conn, application_name, [domain_name])
        inserts: Dict[sa.Table, List[Dict[str, Any]]] = defaultdict(list)
        if not ensembles:
            ensemble = self._new_ensemble(application_name, domain_name, now, inserts)
            datasets: List[Dataset] = []
        else:
            ensemble = ensembles[0]
            datasets = self.datasets(conn, ensembles, [entry_type])
        if version is None:
            version = max((d.version for d in datasets), default=0) + 1
        target = next((d for d in datasets if d.version == version), None)
        is_new_dataset = target is None
        if is_new_dataset:
            dataset_raw = self._new_dataset_raw(ensemble, entry_type, version, now)
            target = Dataset(dataset_raw["id"], ensemble, entry_type, version)
        else:
            dataset_raw = self._raws(conn, [target.id])[target.id]
        had_files = bool(dataset_raw["files"])

        date = now_string()
        for new, file_id in zip(files, new_ids(len(files))):
            raw = new_raw(file_id, self._types["file"])
            data = raw["data"]
            info = raw["user_defined"]["kosh_information"]
            values = dict(new.metadata)
            values.update({"fast_sha": new.fast_sha, "uri": new.path, "mime_type": mime_type,
                           "associated": [target.id]})
            for key, value in values.items():
                data[key] = {"value": value}
                info[f"{key}_last_modified"] = now
            data["last_modified_date"] = {"value": date}
            data["creation_date"] = {"value": date}
            _extend(inserts, record_rows(raw))
            dataset_raw["files"][new.path] = {"mimetype": mime_type, "kosh_id": file_id}
            dataset_raw["user_defined"]["kosh_information"][
                f"{new.path}___associated_last_modified"] = now
            if len(inserts[_RECORD]) >= _ADD_BATCH:  # stream: memory stays flat at 10^5 files
                self._insert(conn, inserts)
                inserts = defaultdict(list)
        dataset_raw["data"]["last_modified_date"] = {"value": date}
        self._check_fits(conn, dataset_raw, target, len(files))

        if is_new_dataset:
            inserts[_RELATIONSHIP].append({"subject_id": target.id, "object_id": ensemble.id,
                                           "predicate": self._types["predicate"]})
            _extend(inserts, record_rows(dataset_raw))
        elif had_files:  # append in place: raw, its date, the new documents
            self._update_dataset(conn, target.id, dataset_raw, date)
            inserts[_DOCUMENT].extend({"id": target.id, "uri": new.path, "mimetype": mime_type,
                                       "tags": None} for new in files)
        else:  # an empty dataset left by plain Kosh: rewrite it whole
            self._replace_records(conn, [dataset_raw])
        self._insert(conn, inserts)
        if is_new_dataset:
            self._check_version_unique(conn, application_name, domain_name, entry_type, version)
        return version

    def _packet_limit(self, conn: Connection) -> Optional[int]:
        """MariaDB's max_allowed_packet (bytes), read once; None on SQLite."""
        if self.url.backend == "sqlite":
            return None
        if self._max_packet is None:
            self._max_packet = int(_run(conn, "SELECT @@max_allowed_packet")[0][0])
        return self._max_packet

    def _check_fits(self, conn: Connection, dataset_raw: Dict[str, Any], target: Dataset,
                    added: int) -> None:
        """Refuse, before writing it, a dataset record MariaDB would reject.

        Kosh keeps a dataset's whole file list in its record (~150 bytes plus
        twice the path per file), and the server refuses statements over its
        max_allowed_packet (16 MiB by default, ~50,000-100,000 files).
        """
        limit = self._packet_limit(conn)
        if not limit:
            return
        text = sjson.dumps(dataset_raw)
        size = len(text) + text.count(b'"') + text.count(b"\\") + 1024  # escaped, plus SQL
        if size > limit:
            raise self._too_big(target.entry_type, target.ensemble.domain_name, target.version,
                                added, size, limit)

    def _too_big(self, entry_type: str, domain_name: str, version: Optional[int], added: int,
                 size: Optional[int], limit: int) -> BackendError:
        where = f"version {version} of" if version is not None else "one version of"
        record = f"a record of {size:,} bytes" if size else "one record"
        return BackendError(
            f"cannot add {added} file(s) to {where} {entry_type} in domain {domain_name!r}: "
            f"Kosh keeps a dataset's file list in {record}, over the max_allowed_packet "
            f"({limit:,} bytes) of the MariaDB server {self.url.host}:{self.url.port}; "
            "raise it on the server (SET GLOBAL max_allowed_packet=1073741824 and in its "
            "configuration) or spread the files over several versions; nothing was added")

    def _check_version_unique(self, conn: Connection, application_name: str, domain_name: str,
                              entry_type: str, version: int) -> None:
        """Re-check, inside the locked transaction, that ``version`` is ours alone.

        The write lock already serialises every ams writer; this catches a writer
        that does not take it (plain Kosh, a foreign tool) committing the same
        version of the entry meanwhile. Kosh's tables cannot hold a unique
        constraint across a dataset's version and its ensemble, so the guarantee
        is this check: a duplicate rolls the call back and it runs again (and
        allocates past the other writer's version).
        """
        ensembles = self.ensembles(conn, application_name, [domain_name])
        same = [d for d in self.datasets(conn, ensembles, [entry_type]) if d.version == version]
        if len(same) > 1:
            raise _Retry(f"{len(same)} datasets hold version {version} of {entry_type} in "
                         f"domain {domain_name!r}")

    def _new_ensemble(self, application_name: str, domain_name: str, now: float,
                      inserts: Dict[sa.Table, List[Dict[str, Any]]]) -> Ensemble:
        raw = new_raw(new_ids(1)[0], self._types["ensemble"])
        date = now_string()
        raw["data"] = {"application_name": {"value": application_name},
                       "creator": {"value": self._creator},
                       "creation_date": {"value": date},
                       "name": {"value": domain_name},
                       "last_modified_date": {"value": date}}
        _extend(inserts, record_rows(raw))
        return Ensemble(raw["id"], domain_name, application_name, raw)

    def _new_dataset_raw(self, ensemble: Ensemble, entry_type: str, version: int,
                         now: float) -> Dict[str, Any]:
        raw = new_raw(new_ids(1)[0], "dataset")
        date = now_string()
        raw["data"] = {"version": {"value": version}, "creator": {"value": self._creator},
                       "creation_date": {"value": date}, "name": {"value": entry_type},
                       "last_modified_date": {"value": date}}
        for key, datum in ensemble.raw["data"].items():  # Kosh's attribute inheritance
            if key not in _NOT_INHERITED:
                raw["data"][key] = {"value": datum["value"]}
                raw["user_defined"]["kosh_information"][f"{key}_last_modified"] = now
        return raw

    def _remove_in(self, conn: Connection, records: Sequence[FileRecord]) -> RemoveResult:
        result = RemoveResult(removed=list(records))
        if not records:
            return result
        now = time.time()
        date = now_string()
        by_dataset: Dict[str, List[FileRecord]] = defaultdict(list)
        for record in records:
            by_dataset[record.dataset.id].append(record)
        dataset_raws = self._raws(conn, list(by_dataset))
        # Kosh's dissociate: drop these datasets from each record's 'associated';
        # a record left with none is deleted, one still shared is rewritten.
        leaving: Dict[str, Set[str]] = defaultdict(set)
        associated: Dict[str, List[str]] = {}
        for record in records:
            leaving[record.id].add(record.dataset.id)
            associated[record.id] = record.associated
        left = {record_id: [a for a in associated[record_id] if a not in gone]
                for record_id, gone in leaving.items()}
        delete_ids = [record_id for record_id, still in left.items() if not still]
        rewrite: List[Dict[str, Any]] = []
        shared = [record_id for record_id, still in left.items() if still]
        for record_id, raw in self._raws(conn, shared).items():  # plain-Kosh stores only
            raw["data"]["associated"]["value"] = left[record_id]
            raw["data"]["last_modified_date"] = {"value": date}
            rewrite.append(raw)
        empty_datasets = []
        for dataset_id, gone in by_dataset.items():
            raw = dataset_raws[dataset_id]
            for record in gone:
                raw["files"].pop(record.path, None)
                raw["user_defined"]["kosh_information"][f"{record.path}___associated_last_modified"] = now
            for chunk in _chunks([r.path for r in gone]):
                _run(conn, f'DELETE FROM "Document" WHERE "id" = ? AND "uri" IN ({_marks(len(chunk))})',
                     (dataset_id, *chunk))
            if raw["files"]:
                self._update_dataset(conn, dataset_id, raw, date)
            else:
                empty_datasets.append(dataset_id)
        self._delete_records(conn, delete_ids + empty_datasets)
        if rewrite:  # file records shared with other datasets (plain-Kosh stores)
            self._replace_records(conn, rewrite)
        remaining = self.locate(conn, [r.path for r in records])
        result.still_referenced = set(remaining)
        return result

    @staticmethod
    def _update_dataset(conn: Connection, dataset_id: str, raw: Dict[str, Any], date: str) -> None:
        """A dataset's new file list: its raw and its last_modified_date, in place.

        Kosh keeps the file list inside the dataset's raw JSON, so this rewrites
        it whole (O(files of the dataset)); the data rows are left alone.
        """
        raw["data"]["last_modified_date"] = {"value": date}
        text = sjson.dumps(raw)
        if conn.dialect.name == "sqlite":
            _run(conn, 'UPDATE "Record" SET "raw" = ? WHERE "id" = ?', (text, dataset_id))
        else:  # built here: the connector would copy and scan the big value several times
            values = _MySQLValues(conn)
            _run(conn, b"UPDATE `Record` SET `raw` = " + values.bytes(text)
                 + b" WHERE `id` = " + values.bytes(dataset_id), literal_sql=True)
        _run(conn, 'UPDATE "StringData" SET "value" = ? WHERE "id" = ? AND "name" = ?',
             (date, dataset_id, "last_modified_date"))

    def _raws(self, conn: Connection, record_ids: List[str]) -> Dict[str, Dict[str, Any]]:
        out = {}
        for chunk in _chunks(record_ids):
            for record_id, raw in _run(conn, 'SELECT "id", "raw" FROM "Record" WHERE "id" IN '
                                       f'({_marks(len(chunk))})', chunk):
                out[record_id] = sjson.loads(raw)
        return out

    def _delete_records(self, conn: Connection, record_ids: List[str]) -> None:
        """Delete records and every row that hangs off them (Sina's cascade, explicitly)."""
        for chunk in _chunks(record_ids):
            marks = _marks(len(chunk))
            self._delete_rows(conn, chunk)
            _run(conn, f'DELETE FROM "Relationship" WHERE "subject_id" IN ({marks})'
                 f' OR "object_id" IN ({marks})', (*chunk, *chunk))
            _run(conn, f'DELETE FROM "Record" WHERE "id" IN ({marks})', chunk)

    def _replace_records(self, conn: Connection, raws: List[Dict[str, Any]]) -> None:
        """Sina's update (delete and re-insert), keeping the records' relationships."""
        inserts: Dict[sa.Table, List[Dict[str, Any]]] = defaultdict(list)
        for chunk in _chunks([raw["id"] for raw in raws]):
            self._delete_rows(conn, chunk)
        for raw in raws:
            rows = record_rows(raw)
            _run(conn, 'UPDATE "Record" SET "raw" = ? WHERE "id" = ?',
                 (rows.pop(_RECORD)[0]["raw"], raw["id"]))
            _extend(inserts, rows)
        self._insert(conn, inserts)

    @staticmethod
    def _delete_rows(conn: Connection, record_ids: Sequence[str]) -> None:
        marks = _marks(len(record_ids))
        for table in _DATA_TABLES + (_DOCUMENT,):
            _run(conn, f'DELETE FROM "{table.name}" WHERE "id" IN ({marks})', record_ids)

    @staticmethod
    def _insert(conn: Connection, inserts: Dict[sa.Table, List[Dict[str, Any]]]) -> None:
        """executemany straight to the driver: SQLAlchemy's per-row parameter
        processing would cost more than the database's work at 10^5-10^6 rows."""
        order = (_RECORD, _RELATIONSHIP, _SCALAR, _STRING, _SCALAR_LIST, _STRING_LIST_MASTER,
                 _STRING_LIST_ENTRY, _DOCUMENT)
        for table in order:
            rows = inserts.get(table)
            if not rows:
                continue
            columns = list(rows[0])
            names = ", ".join(f'"{column}"' for column in columns)
            sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({_marks(len(columns))})'
            values = list(map(operator.itemgetter(*columns), rows))
            if conn.dialect.name == "sqlite":  # binds row by row: any batch size works
                for chunk in _chunks(values, _INSERT_ROWS):
                    _run(conn, sql, chunk, many=True)
            else:
                _mysql_insert(conn, sql.split(" VALUES ")[0], values)


class _Retry(Exception):
    """A transient conflict with another writer."""


def _condition_sql(key: str, op: str, operand: Any) -> Optional[Tuple[str, Tuple[Any, ...]]]:
    """SQL for the ids of records whose data can satisfy ``key op operand``; None: any can.

    A necessary condition only, as Sina stores it: str values in StringData,
    numbers and bools in ScalarData as floating point. So numbers are compared
    as floats, and strict comparisons as non-strict ones (an int beyond 2**53
    and its float differ), which keeps every true match.
    """
    if op == "in":
        parts = [_equality_sql(key, item) for item in operand]
        if any(part is None for part in parts):
            return None
        if not parts:  # "in []" matches nothing
            return 'SELECT "id" FROM "Record" WHERE 1 = 0', ()
        return (" UNION ".join(sql for sql, _ in parts),
                tuple(value for _, params in parts for value in params))
    if op == "==":
        return _equality_sql(key, operand)
    if op not in ("<", "<=", ">", ">=") or isinstance(operand, (list, bool)):
        return None  # "!=" and lists: no index helps
    if isinstance(operand, str):
        table, value, compare = "StringData", operand, op
    else:
        table, value, compare = "ScalarData", float(operand), op.rstrip("=") + "="
    return f'SELECT "id" FROM "{table}" WHERE "name" = ? AND "value" {compare} ?', (key, value)


def _equality_sql(key: str, value: Any) -> Optional[Tuple[str, Tuple[Any, ...]]]:
    if isinstance(value, list):
        return None
    if isinstance(value, str):
        return 'SELECT "id" FROM "StringData" WHERE "name" = ? AND "value" = ?', (key, value)
    return 'SELECT "id" FROM "ScalarData" WHERE "name" = ? AND "value" = ?', (key, float(value))


def _marks(count: int) -> str:
    return ", ".join(["?"] * count)


def _run(conn: Connection, sql: str, params: Sequence[Any] = (), many: bool = False,
         literal_sql: bool = False) -> List[Tuple[Any, ...]]:
    """Run ``sql`` (``"quoted"`` names, ``?`` marks) on the driver's own cursor; all rows.

    ``many``: ``params`` is a sequence of rows (executemany). ``literal_sql``:
    ``sql`` is final driver SQL with no parameters. Inside the connection's
    current transaction. Driver errors become SQLAlchemy's ``DBAPIError`` so
    that :meth:`KoshAdapter._translate_errors` handles them.
    """
    with _driver_errors(conn, sql, params) as cursor:
        if many:
            cursor.executemany(_driver_sql(conn, sql), params)
            return []
        if literal_sql:  # no parameters: nothing in it is taken for a %s mark
            if conn.dialect.name == "sqlite":
                cursor.execute(sql)
            else:  # a plain COM_QUERY: the cursor would scan the statement for ";"s
                conn.connection.driver_connection.cmd_query(sql)
            return []
        cursor.execute(_driver_sql(conn, sql), tuple(params))
        return cursor.fetchall() if cursor.description is not None else []


def _stream(conn: Connection, sql: str, params: Sequence[Any] = (),
            size: int = 2000) -> Iterator[Tuple[Any, ...]]:
    """Like :func:`_run`, but the rows come ``size`` at a time, so that memory stays
    flat; the caller consumes them all before running another statement."""
    with _driver_errors(conn, sql, params) as cursor:
        cursor.execute(_driver_sql(conn, sql), tuple(params))
        while True:
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield from rows


def _driver_sql(conn: Connection, sql: str) -> str:
    return sql if conn.dialect.name == "sqlite" else _mysql_sql(sql)


@contextlib.contextmanager
def _driver_errors(conn: Connection, sql: str, params: Sequence[Any]) -> Iterator[Any]:
    """The connection's kept cursor; driver errors raised as SQLAlchemy's ``DBAPIError``."""
    dialect = conn.dialect
    # One cursor per database connection, kept across calls: mysql-connector
    # pings the server each time a cursor is made.
    info = conn.connection.info
    cursor = info.get("ams_cursor")
    if cursor is None:
        cursor = info["ams_cursor"] = conn.connection.driver_connection.cursor()
    try:
        yield cursor
    except dialect.loaded_dbapi.Error as error:
        info.pop("ams_cursor", None)
        wrapped = sa.exc.DBAPIError.instance(sql, params, error, dialect.loaded_dbapi.Error,
                                             dialect=dialect)
        if dialect.is_disconnect(error, conn.connection.dbapi_connection, cursor):
            # As SQLAlchemy does for its own statements: drop the dead connection
            # (no rollback is sent on it; the pool opens a new one next time).
            wrapped.connection_invalidated = True
            conn.invalidate(wrapped)
        raise wrapped from error


# What mysql-connector's MySQLConverter.escape does to a str (sql_mode without
# NO_BACKSLASH_ESCAPES), as one translate.
_MYSQL_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "'": "\\'",
                                '"': '\\"', "\x1a": "\\\x1a"})


class _MySQLValues:
    """SQL literals for MariaDB, exactly as mysql-connector writes parameters.

    ams builds its big statements itself: the connector (pure Python) spends
    ~30 function calls per value, more than the server spends inserting, and
    copies and scans a statement several times (a dataset's raw can be 20 MB).
    """

    def __init__(self, conn: Connection) -> None:
        driver = conn.connection.driver_connection
        self.sql_mode = driver.sql_mode
        mode = self.sql_mode.decode() if isinstance(self.sql_mode, bytes) else self.sql_mode
        self.plain = "NO_BACKSLASH_ESCAPES" in (mode or "")
        self.converter = driver.converter

    def text(self, value: Any) -> str:
        kind = type(value)
        if kind is bytes or kind is bytearray:
            value, kind = value.decode("utf-8"), str
        if kind is str:
            escaped = value.replace("'", "''") if self.plain else value.translate(_MYSQL_ESCAPES)
            return f"'{escaped}'"
        if value is None:
            return "NULL"
        if kind is bool:
            return "1" if value else "0"
        if kind is int or kind is float:
            return repr(value)
        converter = self.converter
        return bytes(converter.quote(converter.escape(converter.to_mysql(value), self.sql_mode))
                     ).decode("utf-8")

    def bytes(self, value: Any) -> bytes:
        """As :meth:`text`, encoded; a big bytes value is escaped without decoding it."""
        if type(value) is not bytes:
            return self.text(value).encode("utf-8")
        if self.plain:
            return b"'" + value.replace(b"'", b"''") + b"'"
        for char, escaped in _MYSQL_BYTE_ESCAPES:
            if char in value:
                value = value.replace(char, escaped)
        return b"'" + value + b"'"


_MYSQL_BYTE_ESCAPES = ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"'", b"\\'"),
                       (b'"', b'\\"'), (b"\x1a", b"\\\x1a"))
_BIG_VALUE = 2**20  # bytes: such a value (a dataset's raw) gets a statement of its own


def _mysql_insert(conn: Connection, head: str, rows: Sequence[Tuple[Any, ...]]) -> None:
    """Multi-row INSERTs for MariaDB, ``head`` being ``INSERT INTO "T" ("a", ...)``.

    Statements stay under 4 MB, far below the server's max_allowed_packet,
    except for a row holding a big value, sent alone.
    """
    values = _MySQLValues(conn)
    head = _mysql_sql(head) + " VALUES "
    batch: List[str] = []
    size = 0

    def flush() -> None:
        _run(conn, head + ",".join(batch), literal_sql=True)

    for row in rows:
        if any(type(v) is bytes and len(v) > _BIG_VALUE for v in row):
            if batch:
                flush()
                batch, size = [], 0
            _run(conn, head.encode() + b"(" + b",".join(map(values.bytes, row)) + b")",
                 literal_sql=True)
            continue
        text = "(" + ",".join(map(values.text, row)) + ")"
        if batch and (size + len(text) > _INSERT_BYTES or len(batch) >= _INSERT_ROWS):
            flush()
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        flush()


@functools.lru_cache(maxsize=1024)
def _mysql_sql(sql: str) -> str:
    """The same statement for MariaDB: `quoted` names and %s marks."""
    return sql.replace('"', "`").replace("?", "%s")


# Engines of open stores: a forked child must not use its parent's pooled connections.
_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _forget_pooled_connections() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pooled_connections)


def _extend(into: Dict[sa.Table, List[Dict[str, Any]]],
            rows: Dict[sa.Table, List[Dict[str, Any]]]) -> None:
    for table, table_rows in rows.items():
        into[table].extend(table_rows)


def _error_code(error: sa.exc.DBAPIError) -> Optional[int]:
    return getattr(getattr(error, "orig", None), "errno", None)


def _as_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, Real) else None


def _username() -> str:
    return os.environ.get("USER", "default")


def _user_id(username: str) -> str:
    return hashlib.md5(username.encode()).hexdigest()


def _kosh_records(usernames: List[str]) -> Dict[str, Dict[str, Any]]:
    """Kosh's store-info and user records (id -> raw), as ``kosh.connect`` makes them.

    Made by Kosh's own functions in a private in-memory Sina store, so nothing
    touches the real store until the caller copies them in one transaction.
    """
    import sina
    from kosh.utils import create_kosh_users, update_store_and_get_info_record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datastore = sina.connect()  # in-memory SQLite
        try:
            update_store_and_get_info_record(datastore.records)
            create_kosh_users(datastore.records, users=usernames)
            ids = [STORE_INFO_ID] + [_user_id(name) for name in usernames]
            return {record.id: record.raw for record in datastore.records.get(ids)}
        finally:
            datastore.close()


def fast_sha(path: str, n_samples: int = 10) -> str:
    """Kosh's fast checksum of a file (what ``associate`` stores), bit for bit.

    The same digest as ``kosh.utils.compute_fast_sha``: sha256 of the size and
    of 2 KiB read at ``n_samples + 2`` offsets spread like ``numpy.linspace(0,
    size - 2048, n_samples + 2)``; without numpy, whose per-call overhead
    was most of its cost on small files.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:  # Kosh hashes the uri of a missing file
        return hashlib.sha256(path.encode()).hexdigest()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        sha = hashlib.sha256(str(size).encode())
        count = n_samples + 2
        stop = size - 2048
        if stop <= 0:
            positions = [0] * count
        else:  # linspace: i * (stop / (count - 1)), the last one exactly stop
            step = stop / (count - 1)
            positions = [int(i * step) for i in range(count - 1)] + [stop]
        if size <= _WHOLE_READ:  # one read, then the same 2 KiB slices
            content = handle.read()
            sha.update(b"".join(content[p:p + 2048] for p in positions))
            return sha.hexdigest()
        previous, chunk = -1, b""
        for position in positions:
            if position != previous:
                handle.seek(position)
                chunk = handle.read(2048)
                previous = position
            sha.update(chunk)
    return sha.hexdigest()


_WHOLE_READ = 64 * 1024  # fast_sha reads files up to this size at once
