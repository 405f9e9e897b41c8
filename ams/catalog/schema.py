"""The database schema: Sina's tables (which Kosh stores into) and ams's own, on SQLite and MariaDB.

Why this exists rather than Sina's own ``create_all``:

* On MariaDB with utf8mb4 (the stock default) Sina's ``Document`` table cannot be
  created: its primary key ``(id VARCHAR(255), uri VARCHAR(1500))`` needs 7,020
  bytes, InnoDB allows 3,072 (error 1071). Here ``Document`` gets the same columns
  without a primary key, a long ``UNIQUE (id, uri) USING HASH`` key (MariaDB >= 10.4;
  MariaDB >= 10.6.23 / 10.11.14 also enforce it between concurrent READ COMMITTED
  writers, MDEV-37199) and a prefix index on ``uri`` for lookups. Sina's ORM does not
  need the database-side primary key.
* The server's default collation is case-insensitive. Every MariaDB table here is
  InnoDB, ``utf8mb4`` with ``utf8mb4_nopad_bin``: case-sensitive like ``utf8mb4_bin``
  but without PAD SPACE, so ``'a.h5'`` and ``'a.h5 '`` are two values, as on SQLite.
* The store adapter needs a few extra secondary indexes (named ``ams_*``) so that
  its lookups by metadata value, relationship object or uri are index seeks.

On SQLite the tables are exactly Sina's, plus the ``ams_*`` indexes. Column names and
types are Sina's on both backends, so plain ``sina.connect``/``kosh.connect`` work on
the result and, finding the tables there, create nothing.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import sqlalchemy as sa
from sina.datastores import sql_schema as sina_schema
from sqlalchemy.schema import CreateIndex, CreateTable

__all__ = ["create_tables", "create_own_tables", "MARIADB_COLLATION", "VERSION_MARK", "FILE_INTENT"]

log = logging.getLogger(__name__)

#: Case-sensitive and exact (no trailing-space padding in comparisons).
MARIADB_COLLATION = "utf8mb4_nopad_bin"
#: Characters of ``Document.uri`` indexed on MariaDB: 768 x 4 bytes = InnoDB's 3,072.
URI_PREFIX = 768
#: Characters of the VARCHAR(15000) ``value`` columns indexed on MariaDB.
VALUE_PREFIX = 255

#: ams's own tables beside Kosh's (plain Kosh never reads them): the high-water mark
#: of automatic versions per ensemble and entry type, and the file operations
#: (copies of a move, purges) that a call started and has not finished.
VERSION_MARK = "ams_version_mark"
FILE_INTENT = "ams_file_intent"

# MariaDB "table already exists" and "duplicate key name" error numbers.
_MARIADB_EXISTS = {1050, 1061}

# (table, index name, columns, MariaDB prefix lengths): the adapter's lookups.
_AMS_INDEXES: Tuple[Tuple[str, str, Tuple[str, ...], Dict[str, int]], ...] = (
    ("StringData", "ams_stringdata_name_value", ("name", "value"), {"value": VALUE_PREFIX}),
    ("ScalarData", "ams_scalardata_name_value", ("name", "value"), {}),
    ("ListStringDataEntry", "ams_liststringdataentry_name_value", ("name", "value"),
     {"value": VALUE_PREFIX}),
    ("Relationship", "ams_relationship_object_predicate", ("object_id", "predicate"), {}),
)


def _mariadb_document(metadata: sa.MetaData) -> sa.Table:
    """Sina's ``Document`` columns, with a hash UNIQUE key instead of the too-long PK."""
    return sa.Table(
        "Document",
        metadata,
        sa.Column("id", sa.String(255), sa.ForeignKey("Record.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("uri", sa.String(sina_schema.LARGE_STRING_SIZE), nullable=False),
        sa.Column("mimetype", sa.String(255), nullable=True),
        sa.Column("tags", sa.Text(), nullable=True),
        sa.Index("ams_document_id_uri", "id", "uri", unique=True, mysql_using="hash"),
        # Sina's index name, as a prefix index (the full uri is 6,000 bytes).
        sa.Index("uri_idx", "uri", mysql_length={"uri": URI_PREFIX}),
    )


@functools.lru_cache(maxsize=None)
def _schema(mariadb: bool) -> sa.MetaData:
    """A private copy of Sina's tables (never mutate Sina's own MetaData) plus ours."""
    metadata = sa.MetaData()
    for table in sina_schema.Base.metadata.sorted_tables:
        if mariadb and table.name == "Document":
            _mariadb_document(metadata)
        else:
            table.to_metadata(metadata)
    for table_name, index_name, columns, prefixes in _AMS_INDEXES:
        table = metadata.tables[table_name]
        sa.Index(index_name, *(table.c[c] for c in columns), mysql_length=prefixes)
    if mariadb:
        for table in metadata.tables.values():
            table.dialect_kwargs.update(mysql_engine="InnoDB", mysql_charset="utf8mb4",
                                        mysql_collate=MARIADB_COLLATION)
    return metadata


@functools.lru_cache(maxsize=None)
def _own_schema(mariadb: bool) -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table(VERSION_MARK, metadata,
             sa.Column("ensemble_id", sa.String(255), primary_key=True),
             sa.Column("entry_type", sa.String(255), primary_key=True),
             sa.Column("high", sa.BigInteger, nullable=False))
    sa.Table(FILE_INTENT, metadata,
             sa.Column("id", sa.String(64), primary_key=True),
             sa.Column("operation", sa.String(32), nullable=False),  # "copy" or "purge"
             sa.Column("application_name", sa.String(255), nullable=False),
             sa.Column("path", sa.Text, nullable=False),
             sa.Column("source", sa.Text, nullable=True),
             sa.Column("fast_sha", sa.String(64), nullable=True),
             sa.Column("created", sa.Float, nullable=False))
    if mariadb:
        for table in metadata.tables.values():
            table.dialect_kwargs.update(mysql_engine="InnoDB", mysql_charset="utf8mb4",
                                        mysql_collate=MARIADB_COLLATION)
    return metadata


def _existing(engine: sa.engine.Engine) -> set[tuple[str, str | None]]:
    """``(table, None)`` and ``(table, index)`` already in the database, in one query."""
    if engine.dialect.name == "sqlite":
        query = ("SELECT tbl_name, CASE type WHEN 'index' THEN name END FROM sqlite_master"
                 " WHERE type IN ('table', 'index')")
    else:
        query = ("SELECT table_name, NULL FROM information_schema.tables"
                 " WHERE table_schema = DATABASE()"
                 " UNION SELECT table_name, index_name FROM information_schema.statistics"
                 " WHERE table_schema = DATABASE()")
    with engine.connect() as conn:
        return {(table, index) for table, index in conn.execute(sa.text(query))}


def _already_exists(exc: sa.exc.DBAPIError) -> bool:
    """Whether a CREATE failed only because another process created the object first."""
    return getattr(exc.orig, "errno", None) in _MARIADB_EXISTS or "already exists" in str(exc.orig)


def create_tables(engine: sa.engine.Engine) -> list[str]:
    """Create Sina's tables (and ams's extra indexes) if missing; return the names of what was created.

    Idempotent, and safe when several processes call it at once on a fresh database:
    a statement that fails because another process created the object first
    ("already exists", or a re-check finds it) is not an error.
    """
    return _create(engine, _schema)


def create_own_tables(engine: sa.engine.Engine) -> list[str]:
    """Create ams's own tables if missing: :data:`VERSION_MARK`, :data:`FILE_INTENT`, the
    alias history (:mod:`ams.catalog.aliases`) and the change feed (:mod:`ams.catalog.feed`)."""
    from . import aliases, feed  # they import this module
    created = _create(engine, _own_schema)
    for metadata in (aliases.METADATA, feed.METADATA):
        created += _create(engine, lambda mariadb, metadata=metadata: metadata)
    return created


def _create(engine: sa.engine.Engine, schema: Callable[..., sa.MetaData]) -> list[str]:
    """Each missing table and index in its own transaction (MariaDB commits DDL anyway),
    taking SQLite's write lock up front: two openers upgrading a read lock would deadlock."""
    dialect = engine.dialect.name
    if dialect not in ("sqlite", "mysql", "mariadb"):
        raise ValueError(f"unsupported database backend {dialect!r}: use SQLite or MariaDB")
    metadata = schema(mariadb=dialect != "sqlite")
    existing = _existing(engine)
    created: list[str] = []
    for table in metadata.sorted_tables:
        steps: List[Tuple[Optional[str], Any]] = [(None, CreateTable(table))]
        steps += [(ix.name, CreateIndex(ix)) for ix in sorted(table.indexes, key=lambda i: cast(str, i.name))]
        for index, ddl in steps:
            key = (table.name, index)
            if key in existing:
                continue
            try:
                with engine.connect() as conn:
                    conn.info["ams_write"] = True  # SQLite: BEGIN IMMEDIATE (see transactions)
                    try:
                        with conn.begin():
                            conn.execute(ddl)
                    finally:
                        if not conn.invalidated:
                            conn.info.pop("ams_write", None)
            except sa.exc.DBAPIError as exc:
                # information_schema can miss a table another process is altering:
                # trust the error itself first.
                if not _already_exists(exc) and key not in _existing(engine):
                    raise
                log.debug("%s was created concurrently by another process", index or table.name)
                continue
            created.append(index or table.name)
    if created:
        log.info("created %s", ", ".join(created))
    return created
