"""ams/catalog/mysql.py against mysql-connector's own escaping and a real MariaDB server.

ams writes its big INSERTs as SQL text itself (the connector's per-value work
costs more than the server's); these tests check that every literal is what
the connector would have sent, and that the server reads every value back
unchanged, for seeded random values including the characters that need escaping.
"""

from __future__ import annotations

import random
from typing import Any, List

import mysql.connector
import pytest

from ams.catalog.mysql import INSERT_ROWS, MySQLValues, multi_row_inserts, mysql_sql
from ams.url import parse_store_url

from conftest import mariadb_admin, require_mariadb

SPECIAL = ["\\", "\n", "\r", "'", '"', "\x1a", "\x00", "%", "?", "`", ";", "é", "Ω", "😀", " "]


def _strings(rng: random.Random, count: int) -> List[str]:
    alphabet = SPECIAL + list("abcXYZ019 _-/.")
    return [""] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                   for _ in range(count)]


def _values(rng: random.Random) -> List[Any]:
    numbers: List[Any] = [0, -1, 2**63 - 1, -2**63, 0.1, -2.5e-300, 1e300, 3.0, True, False, None]
    return numbers + _strings(rng, 400) + [s.encode() for s in _strings(rng, 50)]


@pytest.fixture(scope="module")
def server():
    require_mariadb()
    conn = mariadb_admin()
    yield conn
    conn.close()


@pytest.mark.parametrize("sql_mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_literals_are_the_connectors(server, sql_mode):
    cursor = server.cursor()
    cursor.execute("SET SESSION sql_mode = %s", (sql_mode,))
    server.sql_mode = sql_mode  # the connector reads it back from the session
    values = MySQLValues.of(server)
    converter = server.converter
    for value in _values(random.Random(7)):
        expected = converter.quote(converter.escape(converter.to_mysql(value), server.sql_mode))
        expected = expected.decode() if isinstance(expected, (bytes, bytearray)) else str(expected)
        if isinstance(value, float):  # repr round-trips exactly; the connector's str may not
            assert float(values.text(value)) == float(expected)
            continue
        assert values.text(value) == expected, value
        assert values.bytes(value).decode() == expected, value


def test_the_server_reads_every_value_back(server, fresh_mariadb_database):
    database = parse_store_url(fresh_mariadb_database()).database
    rng = random.Random(11)
    strings = _strings(rng, 3000)
    cursor = server.cursor()
    cursor.execute(f"USE `{database}`")
    cursor.execute("CREATE TEMPORARY TABLE ams_literals (n INT, s LONGTEXT) "
                   "CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
    values = MySQLValues.of(server)
    rows = list(enumerate(strings))
    big = "x'\\\n" * (2**20 // 4 + 10)  # over BIG_VALUE: a statement of its own, as bytes
    rows.append((len(rows), big))
    statements = list(multi_row_inserts(values, 'INSERT INTO "ams_literals" ("n", "s")',
                                        [(n, s.encode() if n == len(strings) else s)
                                         for n, s in rows]))
    assert len(statements) >= 1 + len(rows) // INSERT_ROWS  # batched, the big row alone
    for statement in statements:
        server.cmd_query(statement)
    cursor.execute("SELECT n, s FROM ams_literals ORDER BY n")
    got = [(n, s.decode() if isinstance(s, (bytes, bytearray)) else s) for n, s in cursor]
    assert got == rows


def test_marks_and_names_become_mysql_syntax():
    assert mysql_sql('SELECT "a" FROM "T" WHERE "b" = ?') == "SELECT `a` FROM `T` WHERE `b` = %s"


def test_the_connector_is_what_the_store_uses():
    assert mysql.connector.__version__  # the escaping compared above is this driver's
