"""A stand-in for the store around ``ams/catalog/feed.py``, for the feed and relay tests.

:class:`FeedSource` opens a real SQLite file or MariaDB database, takes the
store's kind of write lock for every write (SQLite ``BEGIN IMMEDIATE``;
MariaDB ``SELECT ... FOR UPDATE`` on a lock row of its own) and offers the
three methods :func:`ams.events.publish` needs of a store. The module-level
functions are the bodies of the tests' worker processes (spawned, so they
must be importable).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from ams.catalog import feed
from ams.url import parse_store_url

LOCK_TABLE = "feed_test_lock"


class Rollback(Exception):
    """Raised inside a write to roll it back on purpose."""


class FeedSource:
    def __init__(self, url: str, application_name: str = "app") -> None:
        self.url = parse_store_url(url)
        self.application_name = application_name
        self.backend = self.url.backend
        self.engine = self._engine()

    def _engine(self) -> sa.engine.Engine:
        if self.backend == "sqlite":
            engine = sa.create_engine(self.url.sqlalchemy_url(), connect_args={"timeout": 120})

            @sa_event.listens_for(engine, "connect")
            def _connect(dbapi_connection, _record):
                dbapi_connection.isolation_level = None  # BEGIN is ours
                dbapi_connection.execute("PRAGMA busy_timeout=120000")

            @sa_event.listens_for(engine, "begin")
            def _begin(connection):
                mode = "BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN"
                connection.exec_driver_sql(mode)

            return engine
        return sa.create_engine(self.url.sqlalchemy_url(), isolation_level="READ COMMITTED",
                                connect_args={"charset": "utf8mb4", "collation": "utf8mb4_bin",
                                              "use_pure": True})

    def create(self) -> list[str]:
        """The feed's tables and the lock row; returns what ``feed.create_tables`` made."""
        with self.engine.connect() as conn:
            with conn.begin():
                created = feed.create_tables(conn)
            with conn.begin():
                conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (id INTEGER PRIMARY KEY)"))
            with conn.begin():
                if not conn.execute(sa.text(f"SELECT id FROM {LOCK_TABLE}")).first():
                    conn.execute(sa.text(f"INSERT INTO {LOCK_TABLE} (id) VALUES (1)"))
        return created

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def write(self, lock: bool = True) -> Iterator[sa.engine.Connection]:
        """One write transaction holding the store's write lock (``lock=False``: only a transaction)."""
        with self.engine.connect() as conn:
            conn.info["write"] = True  # kept by the pooled connection: reset below
            try:
                with conn.begin():
                    if lock and self.backend != "sqlite":
                        conn.execute(sa.text(f"SELECT id FROM {LOCK_TABLE} WHERE id = 1 FOR UPDATE"))
                    yield conn
            finally:
                conn.info.pop("write", None)

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.engine.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # ------------------------------------------------------------------ the store's feed calls
    def append(self, events: list[dict[str, Any]]) -> list[int]:
        with self.write() as conn:
            return feed.append(conn, events)

    def changes(self, after: int = 0, limit: int = 1000, **filters: Any) -> list[dict[str, Any]]:
        with self.read() as conn:
            return feed.read(conn, self.application_name, after=after, limit=limit, **filters)

    def prune(self, before_id: int) -> int:
        with self.write() as conn:
            return feed.prune(conn, self.application_name, before_id)

    def relay_cursor(self, relay: str) -> int:
        with self.read() as conn:
            return feed.relay_cursor(conn, self.application_name, relay)

    def advance_relay(self, relay: str, last_id: int) -> None:
        # An atomic upsert: no need for the store's lock (SQLite locks the file anyway).
        with self.write(lock=False) as conn:
            feed.advance_relay(conn, self.application_name, relay, last_id)


def event(application_name: str = "app", domain_name: str = "EOS", entry_type: str = "candidates",
          action: str = "add", version: int | None = 1, files: list[str] | None = None,
          nbytes: int = 0, **extras: Any) -> dict[str, Any]:
    """An event as the store would append it."""
    files = ["/data/a.h5"] if files is None else files
    return {"application_name": application_name, "domain_name": domain_name,
            "entry_type": entry_type, "action": action, "version": version, "files": files,
            "bytes": nbytes, **extras}


# ---------------------------------------------------------------------- worker processes
def writer(url: str, writer_id: int, transactions: int, rollback_every: int = 0,
           pause: float = 0.0) -> int:
    """Append 1-3 events per transaction; every ``rollback_every``-th rolls back. Returns events committed."""
    source = FeedSource(url)
    rng = random.Random(writer_id)
    committed = 0
    try:
        for number in range(1, transactions + 1):
            count = rng.randint(1, 3)
            events = [event(domain_name=f"D{writer_id}", version=number,
                            files=[f"/data/w{writer_id}/t{number}_{index}.h5"], nbytes=number)
                      for index in range(count)]
            try:
                with source.write() as conn:
                    feed.append(conn, events)
                    time.sleep(rng.random() * 0.002)  # hold the lock a little, like a real add
                    if rollback_every and number % rollback_every == 0:
                        raise Rollback()
                committed += count
            except Rollback:
                pass
            if pause:
                time.sleep(rng.random() * pause)
    finally:
        source.close()
    return committed


def poller(url: str, stop, results) -> None:
    """Poll ``read(after=last)`` until ``stop`` is set and nothing new came; put what was seen."""
    source = FeedSource(url)
    seen: list[int] = []
    reads = 0
    try:
        while True:
            finished = stop.is_set()
            events = source.changes(after=seen[-1] if seen else 0, limit=50)
            if events:
                reads += 1
                seen.extend(e["id"] for e in events)
            elif finished:
                break
            else:
                time.sleep(0.005)
    finally:
        source.close()
    results.put({"seen": seen, "reads": reads})


def relay(url: str, amqp_url: str, exchange: str, relay_name: str, batch: int = 50,
          interval: float = 0.05) -> None:
    """Publish continuously until killed."""
    from ams.events import publish
    source = FeedSource(url)
    publish(source, amqp_url, exchange=exchange, relay=relay_name, interval=interval, batch=batch)
