"""The change feed: an outbox of the store's committed writes, read in commit order.

Every write call appends its events with :func:`append` inside its own write
transaction, so an event exists exactly when the change it describes was
committed (a call that fails or rolls back leaves none). Readers poll
:func:`read` with ``after=`` the last id they saw; relays to a message broker
keep a per-name cursor with :func:`relay_cursor` / :func:`advance_relay`; old
events go with :func:`prune`.

Two tables of ams's own sit beside Kosh's (Kosh and Sina never look at them,
so the Kosh layout does not change):

* ``ams_change``: ``id`` (autoincrement integer primary key),
  ``application_name``, ``domain_name``, ``entry_type``, ``action``,
  ``version`` (NULL when the event is not about one version), ``time``
  (ISO-8601, UTC) and ``body``, a JSON object with ``files``, ``count``,
  ``bytes`` and the extras of moves (``to_entry_type``, ``to_version``) and
  alias changes (``alias``, ``previous``). Index ``(application_name, id)``.
* ``ams_relay``: ``(application_name, relay)`` -> ``last_id``, the id of the
  last event a relay of that name had confirmed by its broker.

**Why ids increase in commit order** (what makes ``read(after=last_seen)``
miss nothing): every writer appends while it holds the store's write lock, and
keeps the lock until it has committed. The lock is SQLite's database write
lock (``BEGIN IMMEDIATE``) on SQLite, and on MariaDB the store's lock row
(``SELECT ... FOR UPDATE``). Two writers therefore never interleave: the
later one allocates its ids after the earlier one committed, from a counter
that only grows (SQLite's ``AUTOINCREMENT`` never reuses an id, even one whose
row was deleted or rolled back; InnoDB's auto-increment counter never goes
back, and is persisted since MariaDB 10.2.4), so an event's id is larger than
every id that was visible before it committed. A rolled-back transaction can
leave a hole in the ids on MariaDB (InnoDB does not hand back a counter
value); a hole is never filled later. :func:`prune` also keeps the newest
event of the table, so even a server that derives its counter from the largest
id present cannot reuse an id.

Every ``conn`` is a SQLAlchemy ``Connection`` inside a transaction that the
caller begins and commits; nothing here commits (but MariaDB commits
implicitly around DDL, so call :func:`create_tables` outside a write
transaction, at open time). Writes (:func:`append`, :func:`prune`) expect the
caller to hold the store's write lock; :func:`advance_relay` is a single
atomic upsert and needs no lock beyond its transaction.

>>> import sqlalchemy as sa
>>> engine = sa.create_engine("sqlite://")
>>> with engine.begin() as conn:
...     created = create_tables(conn)
...     ids = append(conn, [{"application_name": "app", "domain_name": "EOS",
...                          "entry_type": "candidates", "action": "add", "version": 1,
...                          "files": ["/data/a.h5"], "bytes": 1024}])
...     [(e["id"], e["action"], e["count"], e["bytes"]) for e in read(conn, "app")]
[(1, 'add', 1, 1024)]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from ..errors import InvalidArgumentError
from ..keys import ACTIONS
from .schema import MARIADB_COLLATION
from .sql import marks, run

__all__ = [
    "ACTIONS",
    "CHANGE",
    "EXTRAS",
    "RELAY",
    "advance_relay",
    "append",
    "create_tables",
    "prune",
    "read",
    "relay_cursor",
]

LOGGER = logging.getLogger(__name__)

#: Optional keys of an event, kept in its JSON body: moves and alias changes.
EXTRAS = ("to_entry_type", "to_version", "alias", "previous")
#: Keys of the JSON body besides the extras.
_BODY = ("files", "count", "bytes")
#: Characters of a name column: Sina's names are VARCHAR(255) too.
_NAME = 255
#: Bytes of event bodies per INSERT statement (MariaDB's default max_allowed_packet is 16 MiB).
_STATEMENT_BYTES = 4_000_000

METADATA = sa.MetaData()
_MARIADB_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": MARIADB_COLLATION}

# The index key is application_name (255 x 4 bytes) + id (8 bytes), and the relay
# primary key 2 x 255 x 4 bytes: both well inside InnoDB's 3,072-byte limit.
CHANGE = sa.Table(
    "ams_change", METADATA,
    # INTEGER PRIMARY KEY AUTOINCREMENT on SQLite (never reuses an id), BIGINT AUTO_INCREMENT on MariaDB.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("application_name", sa.String(_NAME), nullable=False),
    sa.Column("domain_name", sa.String(_NAME), nullable=False),
    sa.Column("entry_type", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=True),
    sa.Column("time", sa.String(40), nullable=False),
    # One event of a large add lists every path: MariaDB's TEXT would stop at 64 KiB.
    sa.Column("body", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"),
              nullable=False),
    sa.Index("ams_change_application_id", "application_name", "id"),
    sqlite_autoincrement=True,
    **_MARIADB_OPTIONS,
)

RELAY = sa.Table(
    "ams_relay", METADATA,
    sa.Column("application_name", sa.String(_NAME), primary_key=True),
    sa.Column("relay", sa.String(_NAME), primary_key=True),
    sa.Column("last_id", sa.BigInteger(), nullable=False),
    **_MARIADB_OPTIONS,
)


# --------------------------------------------------------------------------- tables
def create_tables(conn: Connection) -> list[str]:
    """Create the feed's tables and index if missing; return the names of what was created.

    Idempotent, and safe when several processes open a new store at once: a
    statement that fails because another process created the object first is
    not an error. On MariaDB each CREATE commits implicitly: call this outside
    a write transaction (at open time, as the store creates Sina's tables).
    """
    _check_dialect(conn)
    created: list[str] = []
    for table in METADATA.sorted_tables:
        steps: list[tuple[str, ExecutableDDLElement]] = [(table.name, CreateTable(table))]
        steps += [(str(index.name), CreateIndex(index))
                  for index in sorted(table.indexes, key=lambda ix: str(ix.name))]
        for name, ddl in steps:
            if _exists(conn, table.name, name):
                continue
            try:
                conn.execute(ddl)
            except sa.exc.DBAPIError:
                if not _exists(conn, table.name, name):  # not a concurrent creator: a real failure
                    raise
                LOGGER.debug("%s was created concurrently by another process", name)
                continue
            created.append(name)
    if created:
        LOGGER.info("created %s", ", ".join(created))
    return created


def _check_dialect(conn: Connection) -> None:
    if conn.dialect.name not in ("sqlite", "mysql", "mariadb"):
        raise InvalidArgumentError(f"unsupported database backend {conn.dialect.name!r}: "
                                   "the change feed needs SQLite or MariaDB")


def _exists(conn: Connection, table: str, name: str) -> bool:
    """Whether ``table`` (``name == table``) or its index ``name`` is in the database now."""
    inspector = sa.inspect(conn)  # a fresh one: a cached one misses another process's work
    if not inspector.has_table(table):
        return False
    return name == table or any(ix["name"] == name for ix in inspector.get_indexes(table))


# --------------------------------------------------------------------------- writing
def append(conn: Connection, events: Sequence[Mapping[str, Any]]) -> list[int]:
    """Record ``events`` in the caller's write transaction; return their ids, in order.

    Each event is a mapping with ``application_name``, ``domain_name``,
    ``entry_type``, ``action`` (one of :data:`ACTIONS`), ``version`` (int or
    None), ``files`` (absolute paths) and ``bytes``, and optionally the
    :data:`EXTRAS`. ``count`` is ``len(files)``; all events of one call get
    the same ``time`` (now, UTC). One INSERT statement for all events, or
    one per 4 MB of them (the driver's executemany: one prepared statement on
    SQLite, one multi-row INSERT with mysql-connector); for several events
    one SELECT of the new ids follows: the caller's write lock guarantees that the newest ids in the
    table are this call's, numbered in the order of ``events``.
    """
    if not events:
        return []
    now = utc_now()
    rows = [_row(event, now) for event in events]
    for chunk in _chunks(rows):
        result = conn.execute(CHANGE.insert(), chunk)  # a cached statement, one execute(many)
    key = result.inserted_primary_key if len(rows) == 1 else None  # the driver's lastrowid
    if key is not None and key[0] is not None:
        return [int(key[0])]
    newest = conn.execute(sa.select(CHANGE.c.id).order_by(CHANGE.c.id.desc())
                          .limit(len(rows))).scalars().all()
    return sorted(int(value) for value in newest)


def record(conn: Connection, events: Sequence[Mapping[str, Any]]) -> None:
    """As :func:`append`, without reading the new ids back: the store's writes call this,
    as plain driver SQL (a SQLAlchemy statement costs more than the insert itself)."""
    if not events:
        return
    now = utc_now()
    rows = [_row(event, now) for event in events]
    columns = list(rows[0])
    names = ", ".join(f'"{column}"' for column in columns)
    sql = f'INSERT INTO "{CHANGE.name}" ({names}) VALUES ({marks(len(columns))})'
    for chunk in _chunks(rows):
        run(conn, sql, [tuple(row[column] for column in columns) for row in chunk], many=True)


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in groups whose bodies stay under 4 MB: mysql-connector sends one
    executemany as one multi-row INSERT, which must fit MariaDB's max_allowed_packet."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_size = len(row["body"].encode("utf-8")) + 1024  # plus the other columns, roughly
        if chunk and size + row_size > _STATEMENT_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    yield chunk


def _row(event: Mapping[str, Any], now: str) -> dict[str, Any]:
    """An ``ams_change`` row for one event (a bad event is a programming error: fail loudly)."""
    action = event["action"]
    if action not in ACTIONS:
        raise InvalidArgumentError(f"unknown change action {action!r}; valid: {', '.join(ACTIONS)}")
    unknown = set(event) - {"application_name", "domain_name", "entry_type", "action",
                            "version", *_BODY, *EXTRAS}
    if unknown:
        raise InvalidArgumentError(f"unknown change event keys: {', '.join(sorted(unknown))}")
    files = list(event["files"])
    body: dict[str, Any] = {"files": files, "count": len(files), "bytes": int(event["bytes"])}
    body.update((key, event[key]) for key in EXTRAS if key in event)
    version = event["version"]
    return {"application_name": event["application_name"], "domain_name": event["domain_name"],
            "entry_type": event["entry_type"], "action": action,
            "version": None if version is None else int(version), "time": now,
            "body": json.dumps(body, separators=(",", ":"), ensure_ascii=False)}


def utc_now() -> str:
    """The current time as ISO-8601 in UTC with microseconds, e.g. ``2025-01-31T12:00:00.000001+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- reading
def read(conn: Connection, application_name: str, after: int = 0, limit: int = 1000,
         domain_name: str | None = None, entry_type: str | None = None,
         action: str | None = None) -> list[dict[str, Any]]:
    """The events of ``application_name`` with ``id > after``, in id order, at most ``limit``.

    Each is ``{"id", "time", "application_name", "domain_name", "entry_type",
    "action", "version", "files", "count", "bytes"}`` plus the extras it has.
    The filters narrow the events returned, not the ids they skip: a reader
    with filters continues from the last id it got.
    """
    query = sa.select(CHANGE).where(CHANGE.c.application_name == application_name,
                                    CHANGE.c.id > after)
    for column, value in ((CHANGE.c.domain_name, domain_name),
                          (CHANGE.c.entry_type, entry_type), (CHANGE.c.action, action)):
        if value is not None:
            query = query.where(column == value)
    rows = conn.execute(query.order_by(CHANGE.c.id).limit(limit)).all()
    return [_event(row) for row in rows]


def _event(row: Any) -> dict[str, Any]:
    event = {"id": int(row.id), "time": row.time, "application_name": row.application_name,
             "domain_name": row.domain_name, "entry_type": row.entry_type, "action": row.action,
             "version": None if row.version is None else int(row.version)}
    event.update(json.loads(row.body))
    return event


# --------------------------------------------------------------------------- retention
def prune(conn: Connection, application_name: str, before_id: int) -> int:
    """Delete the application's events with ``id < before_id``; return how many.

    Never deletes an event that a relay of that application has not sent yet
    (an id above the smallest relay cursor), nor the newest event of the table
    (so that no backend can ever hand out its id again).
    """
    bound = before_id
    lowest_cursor = conn.execute(sa.select(sa.func.min(RELAY.c.last_id)).where(
        RELAY.c.application_name == application_name)).scalar()
    if lowest_cursor is not None:
        bound = min(bound, int(lowest_cursor) + 1)
    newest = conn.execute(sa.select(sa.func.max(CHANGE.c.id))).scalar()
    if newest is None:
        return 0
    bound = min(bound, int(newest))
    result = conn.execute(CHANGE.delete().where(CHANGE.c.application_name == application_name,
                                                CHANGE.c.id < bound))
    return int(result.rowcount)


# --------------------------------------------------------------------------- relays
def relay_cursor(conn: Connection, application_name: str, relay: str) -> int:
    """The id of the last event relay ``relay`` had confirmed (0 for a new relay)."""
    value = conn.execute(sa.select(RELAY.c.last_id).where(
        RELAY.c.application_name == application_name, RELAY.c.relay == relay)).scalar()
    return 0 if value is None else int(value)


def advance_relay(conn: Connection, application_name: str, relay: str, last_id: int) -> None:
    """Move relay ``relay``'s cursor to ``last_id``; a smaller ``last_id`` leaves it where it is.

    One atomic upsert (``ON CONFLICT`` on SQLite, ``ON DUPLICATE KEY`` on
    MariaDB), so two relays of one name racing cannot move it backwards.
    """
    values = {"application_name": application_name, "relay": relay, "last_id": int(last_id)}
    if conn.dialect.name == "sqlite":
        sqlite_insert = sqlite.insert(RELAY).values(values)
        statement: Any = sqlite_insert.on_conflict_do_update(
            index_elements=[RELAY.c.application_name, RELAY.c.relay],
            set_={"last_id": sa.func.max(RELAY.c.last_id, sqlite_insert.excluded.last_id)})
    else:
        mysql_insert = mysql.insert(RELAY).values(values)
        statement = mysql_insert.on_duplicate_key_update(
            last_id=sa.func.greatest(RELAY.c.last_id, mysql_insert.inserted.last_id))
    conn.execute(statement)
