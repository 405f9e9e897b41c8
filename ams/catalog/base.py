"""The catalogue's plumbing: opening a store (checks, Kosh's bootstrap records), transactions.

:class:`CatalogBase` holds what every part of :class:`~ams.catalog.Catalog` shares:
the engine and its transactions, the store's Kosh kinds, the write context, the
test hooks, and the one way to pick an entry's records by version.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import BackendError
from ..url import StoreURL
from . import aliases, reads, schema, writes
from .filesystems import refuse_network_filesystem
from .records import (
    Dataset,
    FileRecord,
    StoreKinds,
    bootstrap_records,
    now_string,
    record_rows,
    user_id,
    username,
)
from .sql import RECORD, Rows, extend, insert
from .transactions import CONNECT_TIMEOUT_SECONDS, DUPLICATE_KEY, STORE_INFO_ID, Transactions, create_engine

LOGGER = logging.getLogger(__name__)

VersionSelector = Union[None, str, Sequence[int]]


class CatalogBase:
    """Kosh's tables of one store, for any application: lifecycle and transactions."""

    def __init__(self, url: StoreURL, read_only: bool = False,
                 allow_network_filesystem: bool = False,
                 connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.read_only = read_only
        self.allow_network_filesystem = allow_network_filesystem
        self.connect_timeout = connect_timeout
        self.created: List[str] = []
        self.kinds = StoreKinds()
        self.transactions: Optional[Transactions] = None
        self._context: Optional[writes.WriteContext] = None
        self._tables: Dict[str, bool] = {}
        #: Test hooks: name -> callable, run at named points of a call (races, kills).
        self.hooks: Dict[str, Callable[[], None]] = {}

    def open(self) -> None:
        if self.url.backend == "sqlite":
            self._check_sqlite_file()
        engine = create_engine(self.url, self.connect_timeout)
        self.transactions = Transactions(self.url, engine, self.connect_timeout)
        try:
            with self.transactions.translate_errors("open"):
                if not self.read_only:
                    self.created = schema.create_tables(engine) + schema.create_own_tables(engine)
                    self._initialise_kosh()
                self._read_store_info()
        except BaseException:
            self.close()
            raise
        self._context = writes.WriteContext(self.kinds, self.url)

    def close(self) -> None:
        if self.transactions is not None:
            self.transactions.engine.dispose()
            self.transactions = None

    def _check_sqlite_file(self) -> None:
        path = cast(str, self.url.path)  # a sqlite URL always has a path
        if os.path.isdir(path):
            raise BackendError(f"no store at {path}: it is a folder, not a store file")
        if self.read_only:
            if not os.path.isfile(path):
                # sqlite3 would create an empty file (and a reader must not write).
                raise BackendError(f"no store at {path}: the file does not exist")
            return
        if not self.allow_network_filesystem:
            refuse_network_filesystem(path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as error:
            raise BackendError(f"cannot create the folder of the store {path}: "
                               f"{error.strerror}") from None
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            self._refuse_foreign_sqlite(path)

    def _refuse_foreign_sqlite(self, path: str) -> None:
        """A SQLite file holding tables but no Kosh store is someone else's: never add to it."""
        import sqlite3
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                names = {row[0] for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise BackendError(f"{path} is not a SQLite database ({error}); the store needs "
                               "its own file") from None
        if names and "Record" not in names:
            raise BackendError(
                f"{path} holds a database that is not a Kosh store (tables: "
                f"{', '.join(sorted(names)[:5])}); refusing to add the store's tables to it. "
                "Use another file, or import an older AMS catalogue with import_from "
                "(ams-store import)")

    def _initialise_kosh(self) -> None:
        """Write Kosh's store-info and user records the way ``kosh.connect`` does.

        ``kosh.connect`` writes them with separate Sina calls that race when
        several processes open a new store at once (and swallow their errors). So
        Kosh's own functions make the records in a private in-memory Sina store,
        and the missing ones are copied here in one write transaction under the
        store's lock. On MariaDB, before the store-info row exists to be locked, a
        concurrent opener's duplicate key rolls back and the retry finds the records.
        """
        transactions = self._transactions()
        wanted = {STORE_INFO_ID, user_id(username()), user_id("anonymous")}

        def present(conn: Connection) -> Set[str]:
            return set(conn.execute(sa.select(RECORD.c.id).where(RECORD.c.id.in_(sorted(wanted))))
                       .scalars())

        with transactions.read("open") as conn:
            if present(conn) == wanted:
                return
        raws = bootstrap_records([username(), "anonymous"])
        # kosh.connect's close() stamps the store-info record; a new store gets it too.
        raws[STORE_INFO_ID]["data"].setdefault("last_modified_date", {"value": now_string()})

        def work(conn: Connection) -> None:
            inserts: Rows = {}
            for record_id in sorted(wanted - present(conn)):
                extend(inserts, record_rows(raws[record_id]))
            insert(conn, inserts)
        transactions.write("open", work, retry_codes=(DUPLICATE_KEY,))

    def _read_store_info(self) -> None:
        with self._transactions().engine.connect() as conn:
            if self.read_only and not sa.inspect(conn).has_table(RECORD.name):
                raise BackendError(f"{self.url.location} is not a Kosh store (it has no "
                                   f"{RECORD.name} table); a read-only open creates nothing: "
                                   "create the store first (ams-store create)")
            rows: Dict[Any, Any] = dict(conn.execute(sa.select(RECORD.c.id, RECORD.c.raw).where(
                RECORD.c.id.in_([STORE_INFO_ID, user_id(username())]))).all())
        if STORE_INFO_ID not in rows:
            raise BackendError(f"{self.url.location} is not a Kosh store (no store-info record); "
                               "create the store first (ams-store create)")
        self.kinds = StoreKinds.from_store_info(rows[STORE_INFO_ID], set(rows))

    def _transactions(self) -> Transactions:
        if self.transactions is None:
            raise BackendError(f"the catalogue of {self.url} is closed")
        return self.transactions

    @property
    def engine(self) -> sa.engine.Engine:
        return self._transactions().engine

    def _hook(self, name: str) -> None:
        hook = self.hooks.get(name)
        if hook is not None:
            hook()

    def _write(self, operation: str, work: Callable[[Connection], Any]) -> Any:
        return self._transactions().write(operation, work)

    def _context_(self) -> writes.WriteContext:
        if self._context is None:
            raise BackendError(f"the catalogue of {self.url} is closed")
        return self._context


    # ------------------------------------------------------------------ shared reads
    def _entry_records(self, conn: Connection, application_name: str, domain_name: str,
                       entry_type: str, versions: VersionSelector,
                       paths: Optional[Sequence[str]]) -> List[FileRecord]:
        """The entry's records of ``versions`` (None: all; "latest" is left to the caller,
        which resolves it among its matches; "@alias": the version it points to)."""
        versions = self._resolve(conn, application_name, domain_name, entry_type, versions)
        datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                        [entry_type])
        if versions is not None and versions != "latest":
            datasets = select_versions(datasets, versions)
        return reads.file_records(conn, self.kinds, datasets, paths, keep_raw=False)

    def _resolve(self, conn: Connection, application_name: str, domain_name: str,
                 entry_type: str, versions: VersionSelector) -> VersionSelector:
        """An ``"@alias"`` selector as the list of its one version ([] when unset); others as given."""
        name = aliases.parse_selector(versions)
        if name is None:
            return versions
        if not self.has_table(conn, aliases.TABLE_NAME):
            return []
        version = aliases.get_alias(conn, application_name, domain_name, entry_type, name)
        return [] if version is None else [version]

    def has_table(self, conn: Connection, name: str) -> bool:
        """Whether ams's table ``name`` exists (a store older than it, opened read-only, lacks it)."""
        if name not in self._tables:
            self._tables[name] = sa.inspect(conn).has_table(name)
        return self._tables[name]


def select_versions(datasets: List[Dataset], only: VersionSelector) -> List[Dataset]:
    if only is None:
        return datasets
    if only == "latest":
        top = max((d.version for d in datasets), default=None)
        return [d for d in datasets if d.version == top]
    wanted = set(only)
    return [d for d in datasets if d.version in wanted]


