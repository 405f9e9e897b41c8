"""Contract: the MariaDB backend (issue 3) and the text/path cases it makes hard.

* Failures (unreachable server, unknown database, bad credentials, a connection
  killed during or between calls) are one-line ``ams.errors.BackendError``\\ s naming
  host and database, never the password (nor in repr or log records).
* The privileges the README lists are enough, and a missing one fails clearly.
* On both backends: non-ASCII names, metadata and paths round-trip; names and paths
  are case-sensitive; paths longer than 255 characters work; a long-lived reader
  sees what other store objects and processes add, without reopening.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Iterator, NamedTuple

import pytest

from ams import AMSDataStore
from ams.catalog import CONNECT_TIMEOUT_SECONDS
from ams.errors import BackendError

from conftest import _server_params, mariadb_admin, snapshot_store

SECRET = "Pw-" + uuid.uuid4().hex  # a password that must never show


def assert_clear(error: BaseException, caplog, *fragments: str, secrets=(SECRET,)) -> None:
    """A one-line BackendError (a RuntimeError) naming ``fragments``, hiding ``secrets``."""
    assert isinstance(error, BackendError) and isinstance(error, RuntimeError)
    text = str(error)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    logged = [record.getMessage() for record in caplog.records]
    for secret in secrets:
        assert secret not in text and secret not in repr(error)
        assert secret not in caplog.text and not any(secret in line for line in logged)


# ------------------------------------------------------------------ unreachable server
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when we leave


@pytest.mark.parametrize("port", [1, None], ids=["port-1", "closed-port"])
def test_unreachable_server_fails_fast(port, caplog):
    caplog.set_level(logging.DEBUG)
    port = port or _closed_port()
    store = AMSDataStore("app", f"mariadb://ams:{SECRET}@127.0.0.1:{port}/catalogue")
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        store.open()
    assert time.monotonic() - started < 3
    assert_clear(info.value, caplog, f"127.0.0.1:{port}", "'catalogue'", "cannot connect")
    assert not store.is_open()


def test_silent_server_times_out(caplog):
    """A server that accepts but never answers: bounded by the connect timeout, no hang."""
    caplog.set_level(logging.DEBUG)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = AMSDataStore("app", f"mariadb://ams:{SECRET}@127.0.0.1:{port}/catalogue")
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            store.open()
        elapsed = time.monotonic() - started
    assert CONNECT_TIMEOUT_SECONDS - 1 < elapsed < CONNECT_TIMEOUT_SECONDS + 4, elapsed
    assert_clear(info.value, caplog, f"127.0.0.1:{port}", "'catalogue'", "cannot connect")


# ------------------------------------------------------------------ a password-protected account
class Account(NamedTuple):
    user: str
    password: str
    server: str      # host:port
    database: str    # a fresh database, granted
    missing: str     # a granted database name that does not exist

    def url(self, database: str = None, password: str = None) -> str:
        return (f"mariadb://{self.user}:{password or self.password}@{self.server}/"
                f"{database or self.database}")


def _admin_execute(*statements: str) -> None:
    admin = mariadb_admin()
    try:
        cursor = admin.cursor()
        for statement in statements:
            cursor.execute(statement)
    finally:
        admin.close()


def make_account(fresh_mariadb_database, privileges: str = "ALL") -> Iterator[Account]:
    url = fresh_mariadb_database()
    database = url.rsplit("/", 1)[1]
    params = _server_params()
    account = Account(f"ams_{uuid.uuid4().hex[:10]}", SECRET, f"{params['host']}:{params['port']}",
                      database, f"ams_missing_{uuid.uuid4().hex[:10]}")
    _admin_execute(f"CREATE USER '{account.user}'@'%' IDENTIFIED BY '{account.password}'",
                   f"GRANT {privileges} ON `{database}`.* TO '{account.user}'@'%'",
                   f"GRANT ALL ON `{account.missing}`.* TO '{account.user}'@'%'")
    try:
        yield account
    finally:
        _admin_execute(f"DROP USER IF EXISTS '{account.user}'@'%'")


@pytest.fixture
def account(fresh_mariadb_database) -> Iterator[Account]:
    """A throwaway user with a password, granted ALL on a fresh database (dropped after)."""
    yield from make_account(fresh_mariadb_database)


def test_unknown_database(account, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as info:
        AMSDataStore("app", account.url(database=account.missing)).open()
    assert_clear(info.value, caplog, account.server, repr(account.missing), "does not exist")


def test_bad_credentials(account, caplog, make_h5):
    with AMSDataStore("app", account.url()) as store:
        store.add_data("EOS", [make_h5()])
    before = snapshot_store(store.url)
    wrong = "Wrong-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as info:
        AMSDataStore("app", account.url(password=wrong)).open()
    assert_clear(info.value, caplog, account.server, repr(account.database), repr(account.user),
                 "denied", secrets=(SECRET, wrong))
    assert snapshot_store(store.url) == before


def _store_connections(account: Account, admin) -> list:
    cursor = admin.cursor()
    cursor.execute("SELECT id, command, info FROM information_schema.processlist "
                   "WHERE user = %s AND db = %s", (account.user, account.database))
    return cursor.fetchall()


def test_connection_killed_during_a_call(account, caplog, make_h5):
    """Decision: the call raises BackendError (nothing of it committed); the store object
    stays usable and the next call reconnects. No silent retry: a connection lost during
    COMMIT leaves the outcome unknown, and retrying could register twice."""
    caplog.set_level(logging.DEBUG)
    first, second = make_h5(), make_h5()
    with AMSDataStore("app", account.url()) as store:
        before = snapshot_store(store.url)
        # Hold the store's write lock from outside so that add_data waits inside its call.
        holder = mariadb_admin()
        holder.cursor().execute(f"USE `{account.database}`")
        holder.start_transaction()
        cursor = holder.cursor()
        cursor.execute("SELECT id FROM Record WHERE id = '__kosh_store_info__' FOR UPDATE")
        cursor.fetchall()
        outcome = {}

        def add() -> None:
            try:
                outcome["version"] = store.add_data("EOS", [first])
            except Exception as error:  # noqa: BLE001 - inspected below
                outcome["error"] = error

        worker = threading.Thread(target=add)
        worker.start()
        monitor = mariadb_admin()
        try:
            deadline = time.monotonic() + 20
            waiting = []
            while not waiting and time.monotonic() < deadline:
                waiting = [row for row in _store_connections(account, monitor)
                           if row[2] and "FOR UPDATE" in row[2]]
                time.sleep(0.02)
            assert waiting, "add_data never reached the lock"
            monitor.cursor().execute(f"KILL {waiting[0][0]}")
            worker.join(30)
            assert not worker.is_alive()
            # The error surfaced without reconnecting first: a reconnect that failed
            # (server down or slow) would have replaced it with a misleading one.
            assert _store_connections(account, monitor) == []
        finally:
            holder.rollback()
            holder.close()
            monitor.close()
        error = outcome.get("error")
        assert isinstance(error, BackendError), outcome
        assert_clear(error, caplog, account.server, repr(account.database), "lost the connection")
        assert snapshot_store(store.url) == before
        # The same store object carries on.
        assert store.add_data("EOS", [first]) == 1
        assert store.add_data("EOS", [second]) == 2
        assert store.get_data_versions("EOS", associate_files=True) == {1: [first], 2: [second]}


def test_connection_killed_between_calls(account, make_h5):
    """An idle connection the server dropped (KILL, wait_timeout) is replaced silently."""
    path = make_h5()
    with AMSDataStore("app", account.url()) as store:
        store.add_data("EOS", [path])
        monitor = mariadb_admin()
        try:
            idle = _store_connections(account, monitor)
            assert idle, "the store keeps no idle connection to kill"
            for connection_id, _command, _info in idle:
                monitor.cursor().execute(f"KILL {connection_id}")
        finally:
            monitor.close()
        assert store.get_data_files("EOS") == [path]
        assert store.add_data("EOS", [make_h5()]) == 2


# ------------------------------------------------------------------ privileges (README)
def test_documented_privileges_are_enough(fresh_mariadb_database, make_h5, tmp_path, caplog):
    """README: CREATE, INDEX, SELECT, INSERT, UPDATE, DELETE create and use a store; a
    created store needs no DDL; SELECT alone reads it; without INSERT, a clear error."""
    tables = "CREATE, INDEX, SELECT, INSERT, UPDATE, DELETE"
    accounts = make_account(fresh_mariadb_database, tables)
    account = next(accounts)
    try:
        data, candidate = make_h5(), make_h5()
        with AMSDataStore("app", account.url()) as store:
            assert "Record" in store.created_tables
            store.add_data("EOS", [data], metadata={"k": 1})
            store.add_candidates("EOS", [candidate])
            moved = store.move("EOS", tmp_path / "promoted", "candidates", "data", [candidate])
            assert store.remove_data("EOS", [data]).removed == [data]
        database = account.database
        for privileges, can_write in (("SELECT, INSERT, UPDATE, DELETE", True), ("SELECT", False)):
            _admin_execute(f"REVOKE ALL ON `{database}`.* FROM '{account.user}'@'%'",
                           f"GRANT {privileges} ON `{database}`.* TO '{account.user}'@'%'")
            with AMSDataStore("app", account.url(), read_only=not can_write) as store:
                assert store.get_data_files("EOS") == moved
                if can_write:
                    store.add_data("EOS", [make_h5()], version=1)
                    moved = store.get_data_files("EOS")
                    assert len(moved) == 2
        fresh = fresh_mariadb_database().rsplit("/", 1)[1]
        _admin_execute(f"GRANT SELECT, UPDATE, DELETE, CREATE, INDEX ON `{fresh}`.* "
                       f"TO '{account.user}'@'%'")
        caplog.set_level(logging.DEBUG)
        with pytest.raises(BackendError) as info:
            AMSDataStore("app", account.url(database=fresh)).open()
        assert_clear(info.value, caplog, "INSERT")
    finally:
        accounts.close()


# ------------------------------------------------------------------ text and paths, both backends
def test_non_ascii_round_trip(store, make_h5, tmp_path):
    domain = "Ωmega-東京-🚀"
    folder = tmp_path / "données" / "ファイル"
    path = make_h5("Düsen_⚛_🚀.h5", directory=folder)
    metadata = {"größe": "çà-ñ-東京-🚀", "ключ": ["α", "β", "🚀"], "n": 3}
    assert store.add_data(domain, [path], metadata=metadata) == 1
    (entry,) = store.find(domain_name=domain)
    assert entry["filename"] == path and entry["domain_name"] == domain
    assert {key: entry["metadata"][key] for key in metadata} == metadata
    assert store.get_data_files(domain) == [path]
    assert [e["filename"] for e in store.search(domain, "data", metadata={"größe": "çà-ñ-東京-🚀"})] == [path]
    assert store.search(domain, "data", metadata={"größe": "ca-n-東京-🚀"}) == []
    assert store.find(filename=path)[0]["domain_name"] == domain
    assert store.remove_data(domain, [path], purge=False).removed == [path]
    assert store.find(domain_name=domain) == []


def test_names_and_paths_are_case_sensitive(store, make_h5, tmp_path):
    lower, upper = make_h5("a.h5"), make_h5("A.h5")
    assert store.add_data("EOS", [lower], metadata={"Key": "X"}) == 1
    assert store.add_data("eos", [upper], metadata={"key": "x"}) == 1  # not a duplicate
    assert store.get_data_files("EOS") == [lower] and store.get_data_files("eos") == [upper]
    assert store.get_data_files("Eos") == []
    assert [e["filename"] for e in store.search(metadata={"Key": "X"})] == [lower]
    assert [e["filename"] for e in store.search(metadata={"key": "x"})] == [upper]
    assert store.search(metadata={"key": "X"}) == []
    assert [e["filename"] for e in store.find(filename=upper)] == [upper]
    report = store.remove_data("EOS", [upper], purge=False)
    assert report.removed == [] and report.not_found == [upper]
    assert store.remove_data("eos", [upper], purge=False).removed == [upper]
    assert store.get_data_files("EOS") == [lower] and os.path.exists(upper)


def test_paths_longer_than_255_characters(store, make_h5, tmp_path):
    deep = tmp_path
    while len(str(deep)) < 1300:
        deep = deep / ("d" * 100)
    first = make_h5("long-one.h5", directory=deep)
    second = make_h5("long-two.h5", directory=deep)  # shares the first ~1300 characters
    assert len(first) > 1300
    assert store.add_data("EOS", [first, second]) == 1
    assert store.get_data_files("EOS") == sorted([first, second])
    assert [e["filename"] for e in store.find(filename=second)] == [second]
    assert store.remove_data("EOS", [first], purge=False).removed == [first]
    assert store.get_data_files("EOS") == [second]


def test_long_lived_reader_sees_other_writers(store_url, make_h5):
    first, second, third = make_h5(), make_h5(), make_h5()
    AMSDataStore("app", store_url).open().close()  # create the store
    with AMSDataStore("app", store_url, read_only=True) as reader:
        assert reader.get_data_versions("EOS") == []
        with AMSDataStore("app", store_url) as writer:  # another store object
            writer.add_data("EOS", [first])
        assert reader.get_data_files("EOS") == [first]
        script = textwrap.dedent("""
            import sys
            from ams import AMSDataStore
            with AMSDataStore("app", sys.argv[1]) as store:
                print(store.add_data("EOS", sys.argv[2:]))
        """)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-c", script, store_url, second, third],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "2"
        assert reader.get_data_versions("EOS", associate_files=True) == {
            1: [first], 2: sorted([second, third])}
        assert {e["filename"] for e in reader.find(domain_name="EOS")} == {first, second, third}
