"""MariaDB statement text: SQL literals exactly as mysql-connector writes them, multi-row INSERTs.

ams builds its big statements itself: the connector (pure Python) spends ~30
function calls per value, more than the server spends inserting, and copies and
scans a statement several times (a dataset's raw JSON can be 20 MB). Nothing
here talks to a server; :mod:`ams.catalog.sql` runs what it builds.
tests/test_catalog_mysql.py checks every literal against the driver's own
escaping.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, List, Sequence, Tuple, Union

# What mysql-connector's MySQLConverter.escape does to a str (sql_mode without
# NO_BACKSLASH_ESCAPES), as one translate.
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "'": "\\'",
                          '"': '\\"', "\x1a": "\\\x1a"})
_BYTE_ESCAPES = ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"'", b"\\'"),
                 (b'"', b'\\"'), (b"\x1a", b"\\\x1a"))
#: bytes: a row holding a bigger value (a dataset's raw) gets a statement of its own.
BIG_VALUE = 2**20
#: One multi-row INSERT per this many rows or bytes, far under the default 16 MB
#: max_allowed_packet.
INSERT_ROWS = 2000
INSERT_BYTES = 4 * 2**20


class MySQLValues:
    """SQL literals for one connection's ``sql_mode``, as mysql-connector writes parameters."""

    def __init__(self, sql_mode: Any, converter: Any) -> None:
        self.sql_mode = sql_mode
        mode = sql_mode.decode() if isinstance(sql_mode, bytes) else sql_mode
        self.plain = "NO_BACKSLASH_ESCAPES" in (mode or "")
        self.converter = converter

    @classmethod
    def of(cls, driver_connection: Any) -> "MySQLValues":
        return cls(driver_connection.sql_mode, driver_connection.converter)

    def text(self, value: Any) -> str:
        kind = type(value)
        if kind is bytes or kind is bytearray:
            value, kind = value.decode("utf-8"), str
        if kind is str:
            escaped = value.replace("'", "''") if self.plain else value.translate(_ESCAPES)
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
        for char, escaped in _BYTE_ESCAPES:
            if char in value:
                value = value.replace(char, escaped)
        return b"'" + value + b"'"


def multi_row_inserts(values: MySQLValues, head: str,
                      rows: Sequence[Tuple[Any, ...]]) -> Iterator[Union[str, bytes]]:
    """Final INSERT statements for ``rows``, ``head`` being ``INSERT INTO "T" ("a", ...)``.

    Statements stay under :data:`INSERT_BYTES`, except for a row holding a big
    value, sent alone (as bytes, never decoded).
    """
    head = mysql_sql(head) + " VALUES "
    batch: List[str] = []
    size = 0
    for row in rows:
        if any(type(v) is bytes and len(v) > BIG_VALUE for v in row):
            if batch:
                yield head + ",".join(batch)
                batch, size = [], 0
            yield head.encode() + b"(" + b",".join(map(values.bytes, row)) + b")"
            continue
        text = "(" + ",".join(map(values.text, row)) + ")"
        if batch and (size + len(text) > INSERT_BYTES or len(batch) >= INSERT_ROWS):
            yield head + ",".join(batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        yield head + ",".join(batch)


@functools.lru_cache(maxsize=1024)
def mysql_sql(sql: str) -> str:
    """The same statement for MariaDB: `quoted` names and %s marks."""
    return sql.replace('"', "`").replace("?", "%s")
