"""Connections and transactions: engines, fork safety, read snapshots, the write lock, retries.

Every write runs in one transaction under a store-wide write lock (SQLite
``BEGIN IMMEDIATE``; MariaDB ``SELECT ... FOR UPDATE`` on Kosh's store-info row),
so concurrent writers allocate versions safely; a lock timeout or deadlock rolls
the whole call back and runs it again. Backend errors become
:class:`ams.errors.BackendError` here, through one table of known causes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import weakref
from typing import Callable, Dict, Iterator, Optional, Tuple, Type, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..errors import BackendError, ConcurrencyError
from ..url import StoreURL, mask_password
from .sql import run

LOGGER = logging.getLogger(__name__)

STORE_INFO_ID = "__kosh_store_info__"
#: Seconds to wait for a MariaDB server to answer a new connection (a query may take longer).
CONNECT_TIMEOUT_SECONDS = 5
#: Write attempts before :class:`ConcurrencyError`.
WRITE_ATTEMPTS = 8
_SQLITE_CACHE_KIB = 32768  # page cache per SQLite connection (default: 2 MiB)
_SQLITE_BUSY_SECONDS = 120

# The one table of MariaDB error codes with a cause of their own.
ACCESS_DENIED = frozenset({1044, 1045, 1698})
UNKNOWN_DATABASE = 1049
CONNECTION_LOST = frozenset({1927, 2006, 2013, 2055, 4031})
PACKET_TOO_LARGE = frozenset({1153, 1301, 2020})
DUPLICATE_KEY = 1062
CONFLICT = frozenset({1205, 1213})  # lock wait timeout, deadlock: retried

T = TypeVar("T")


class Retry(Exception):
    """A transient conflict with another writer: the transaction runs again."""


# Engines of open stores: a forked child must not use its parent's pooled connections.
_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _forget_pooled_connections() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pooled_connections)


def create_engine(url: StoreURL, connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> Engine:
    """A pooled engine for ``url``, with the session settings the catalogue relies on."""
    if url.backend == "sqlite":
        # Pooled: a connection kept between calls saves its setup on every call.
        engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.QueuePool,
                                  connect_args={"timeout": _SQLITE_BUSY_SECONDS,
                                                "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # pragma: no cover - driver hook
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            dbapi_connection.execute("PRAGMA foreign_keys=ON")
            dbapi_connection.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_SECONDS * 1000}")
            # Only safe, per-connection settings: the default rollback journal and
            # synchronous=FULL stay (WAL needs shared memory). A larger page cache
            # keeps big inserts and their index updates in memory.
            dbapi_connection.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")

        @event.listens_for(engine, "begin")
        def _on_begin(connection):  # pragma: no cover - driver hook
            run(connection, "BEGIN IMMEDIATE" if connection.info.get("ams_write") else "BEGIN")
    else:
        # Pooled, checked with a ping on checkout (the server may have dropped an
        # idle connection); a new connection costs several round trips.
        engine = sa.create_engine(
            url.sqlalchemy_url(), poolclass=sa.pool.QueuePool, pool_pre_ping=True,
            pool_recycle=3600, isolation_level="READ COMMITTED",
            connect_args={"connection_timeout": connect_timeout, "charset": "utf8mb4",
                          "collation": "utf8mb4_bin", "use_pure": True})
    _ENGINES.add(engine)
    return engine


class Transactions:
    """Read and write transactions on one store's engine, with error translation."""

    def __init__(self, url: StoreURL, engine: Engine,
                 connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.engine = engine
        self.connect_timeout = connect_timeout

    @contextlib.contextmanager
    def read(self, operation: str = "read") -> Iterator[Connection]:
        """One read transaction that sees one committed state of the store.

        SQLite's read transaction is a snapshot already (the rollback journal keeps
        writers from committing under a reader). MariaDB's READ COMMITTED would let
        each statement of one call see a different commit, so reads run as
        REPEATABLE READ: one snapshot per call, never a long-lived one.
        """
        with self.translate_errors(operation), self.engine.connect() as conn:
            with conn.begin():
                if self.url.backend != "sqlite":
                    # For this transaction only: nothing to reset when the
                    # connection goes back to the pool.
                    run(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield conn

    def write(self, operation: str, work: Callable[[Connection], T],
              attempts: int = WRITE_ATTEMPTS, retry_codes: Tuple[int, ...] = ()) -> T:
        """Run ``work(conn)`` in one write transaction under the store's write lock.

        A lock timeout, deadlock or "database is locked" (or an error code in
        ``retry_codes``, or :class:`Retry` raised by ``work``) rolls the whole call
        back and runs it again after a random, growing pause; ``work`` therefore
        only reads and writes the database. After ``attempts`` conflicts:
        :class:`ConcurrencyError`. Whatever ``work`` raises otherwise rolls back
        and propagates: nothing of the call is committed.
        """
        delay = 0.05
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                with self.translate_errors(operation, retryable=True, retry_codes=retry_codes):
                    with self.engine.connect() as conn:
                        conn.info["ams_write"] = True
                        try:
                            with conn.begin():
                                self._lock(conn)
                                return work(conn)
                        finally:
                            # On a dropped connection .info would reconnect (and a failed
                            # reconnect would hide the real error).
                            if not conn.invalidated:
                                conn.info.pop("ams_write", None)
            except Retry as retry:
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
            run(conn, 'SELECT "id" FROM "Record" WHERE "id" = ? FOR UPDATE', (STORE_INFO_ID,))

    @contextlib.contextmanager
    def translate_errors(self, operation: str, retryable: bool = False,
                         retry_codes: Tuple[int, ...] = ()) -> Iterator[None]:
        """Backend errors -> :class:`BackendError` (or :class:`Retry` for conflicts)."""
        try:
            yield
        except sa.exc.DBAPIError as error:
            original = str(getattr(error, "orig", error))
            message = mask_password(original.splitlines()[0] if original else repr(error),
                                    self.url.password)
            code = error_code(error)
            if retryable and (code in CONFLICT | set(retry_codes)
                              or "database is locked" in message
                              or "deadlock" in message.lower()):
                raise Retry(message) from None
            raise BackendError(self.describe_failure(operation, code, message,
                                                     connecting=error.statement is None)) from None
        except sa.exc.TimeoutError as error:  # every pooled connection in use
            raise BackendError(f"{operation} on {self.url.backend} store {self.url.location}: "
                               f"no free database connection ({error}); use fewer threads per "
                               "store object or one store object per thread") from None
        except (json.JSONDecodeError, _orjson_error()) as error:
            raise BackendError(f"{operation}: the store {self.url.location} holds a damaged "
                               f"record ({error}); the database file may be corrupt (check it "
                               "with: sqlite3 FILE 'PRAGMA quick_check')") from None

    def describe_failure(self, operation: str, code: Optional[int], message: str,
                         connecting: bool) -> str:
        """One line naming the server and database (never the password) and the likely cause."""
        if self.url.backend == "sqlite":
            hint = ""
            if "malformed" in message or "not a database" in message:
                hint = " (the file is damaged; check it with: sqlite3 FILE 'PRAGMA quick_check')"
            return f"{operation} on sqlite store {self.url.location} failed: {message}{hint}"
        server = f"MariaDB server {self.url.host}:{self.url.port}"
        database = self.url.database
        if code == UNKNOWN_DATABASE:
            return (f"{operation}: database {database!r} does not exist on {server}; create it "
                    f"first (CREATE DATABASE `{database}`): {message}")
        if code in ACCESS_DENIED:
            return (f"{operation}: access to database {database!r} on {server} denied for user "
                    f"{self.url.user!r}; check the user name, password and grants: {message}")
        if code in PACKET_TOO_LARGE or "max_allowed_packet" in message:
            return (f"{operation} on {server}, database {database!r}: a statement is larger than "
                    f"the server's max_allowed_packet ({message}); raise it on the server (SET "
                    "GLOBAL max_allowed_packet=1073741824) or store less per call; nothing of "
                    "this call was recorded")
        if connecting:
            if not message.split(":", 1)[-1].strip():
                message = f"{message.strip().rstrip(':')}: no answer"
            return (f"{operation}: cannot connect to {server} for database {database!r} "
                    f"(waited at most {self.connect_timeout} s): {message}")
        if code in CONNECTION_LOST:
            return (f"{operation} on {server}, database {database!r}: lost the connection "
                    f"({message}); nothing of this call was committed unless the connection "
                    "dropped during the commit itself; the next call reconnects")
        return f"{operation} on {server}, database {database!r} failed: {message}"


def error_code(error: sa.exc.DBAPIError) -> Optional[int]:
    return getattr(getattr(error, "orig", None), "errno", None)


def _orjson_error() -> Type[Exception]:
    try:
        import orjson
    except ImportError:  # sina falls back to json
        return json.JSONDecodeError
    return orjson.JSONDecodeError


def table_exists(conn: Connection, name: str, cache: Dict[str, bool]) -> bool:
    """Whether ``name`` exists (cached per store: an older store may lack ams's tables)."""
    if name not in cache:
        cache[name] = sa.inspect(conn).has_table(name)
    return cache[name]
