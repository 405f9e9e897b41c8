"""Driver-level statements: run SQL on the connection's own cursor, stream rows, bulk insert.

Every read and write of a call runs as plain SQL written with ``"quoted"`` names
and ``?`` marks (rewritten for MariaDB): building and executing a SQLAlchemy
statement costs 0.2-2 ms here, 10-100 times the database's own work on the
small queries most calls make, and SQLAlchemy's per-row parameter handling
would dominate inserts of 10^5-10^6 rows. Driver errors are raised as
SQLAlchemy's ``DBAPIError`` so that :mod:`ams.catalog.transactions` translates
them in one place.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Dict, Iterator, List, Sequence, Tuple, cast

import sqlalchemy as sa
from sina.datastores import sql_schema as sina_schema
from sqlalchemy.engine import Connection

from .mysql import INSERT_ROWS, MySQLValues, multi_row_inserts, mysql_sql

RECORD = sina_schema.Record.__table__
RELATIONSHIP = sina_schema.Relationship.__table__
SCALAR = sina_schema.ScalarData.__table__
STRING = sina_schema.StringData.__table__
SCALAR_LIST = sina_schema.ListScalarData.__table__
STRING_LIST_MASTER = sina_schema.ListStringDataMaster.__table__
STRING_LIST_ENTRY = sina_schema.ListStringDataEntry.__table__
DOCUMENT = sina_schema.Document.__table__
CURVE_SET = sina_schema.CurveSetMeta.__table__
#: Tables of a record's data (its Document rows aside).
DATA_TABLES = (SCALAR, STRING, SCALAR_LIST, STRING_LIST_MASTER, STRING_LIST_ENTRY, CURVE_SET)
#: Parameters per IN (...) list.
CHUNK = 500

Rows = Dict[sa.Table, List[Dict[str, Any]]]


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def marks(count: int) -> str:
    return ", ".join(["?"] * count)


def is_sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def run(conn: Connection, sql: Any, params: Sequence[Any] = (), many: bool = False,
        literal_sql: bool = False) -> List[Tuple[Any, ...]]:
    """Run ``sql`` on the driver's own cursor in the current transaction; all rows.

    ``many``: ``params`` is a sequence of rows (executemany). ``literal_sql``:
    ``sql`` is final driver SQL (str or bytes) with no parameters.
    """
    with driver_errors(conn, sql, params) as cursor:
        if many:
            cursor.executemany(_driver_sql(conn, sql), params)
            return []
        if literal_sql:  # no parameters: nothing in it is taken for a %s mark
            if is_sqlite(conn):
                cursor.execute(sql)
            else:  # a plain COM_QUERY: the cursor would scan the statement for ";"s
                cast(Any, conn.connection.driver_connection).cmd_query(sql)
            return []
        cursor.execute(_driver_sql(conn, sql), tuple(params))
        return cursor.fetchall() if cursor.description is not None else []


def stream(conn: Connection, sql: str, params: Sequence[Any] = (),
           size: int = 2000) -> Iterator[Tuple[Any, ...]]:
    """Like :func:`run`, but rows come ``size`` at a time so that memory stays flat;
    the caller consumes them all before running another statement."""
    with driver_errors(conn, sql, params) as cursor:
        cursor.execute(_driver_sql(conn, sql), tuple(params))
        while True:
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield from rows


def _driver_sql(conn: Connection, sql: str) -> str:
    return sql if is_sqlite(conn) else mysql_sql(sql)


@contextlib.contextmanager
def driver_errors(conn: Connection, sql: Any, params: Sequence[Any]) -> Iterator[Any]:
    """The connection's kept cursor; driver errors raised as SQLAlchemy's ``DBAPIError``."""
    dialect = conn.dialect
    # One cursor per database connection, kept across calls: mysql-connector
    # pings the server each time a cursor is made.
    info = conn.connection.info
    cursor = info.get("ams_cursor")
    if cursor is None:
        cursor = info["ams_cursor"] = cast(Any, conn.connection.driver_connection).cursor()
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


def insert(conn: Connection, rows: Rows) -> None:
    """Insert rows table by table, in foreign-key order, straight to the driver."""
    order = (RECORD, RELATIONSHIP, SCALAR, STRING, SCALAR_LIST, STRING_LIST_MASTER,
             STRING_LIST_ENTRY, DOCUMENT)
    for table in order:
        table_rows = rows.get(table)
        if not table_rows:
            continue
        columns = list(table_rows[0])
        names = ", ".join(f'"{column}"' for column in columns)
        head = f'INSERT INTO "{table.name}" ({names})'
        values = list(map(operator.itemgetter(*columns), table_rows))
        if is_sqlite(conn):  # binds row by row: any batch size works
            for chunk in chunks(values, INSERT_ROWS):
                run(conn, f"{head} VALUES ({marks(len(columns))})", chunk, many=True)
        else:
            literals = MySQLValues.of(conn.connection.driver_connection)
            for statement in multi_row_inserts(literals, head, values):
                run(conn, statement, literal_sql=True)


def extend(into: Rows, rows: Rows) -> None:
    for table, table_rows in rows.items():
        into.setdefault(table, []).extend(table_rows)
