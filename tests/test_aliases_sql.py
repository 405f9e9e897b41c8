"""The alias table on its own (``ams.catalog.aliases``), on SQLite and MariaDB.

Issue 14: aliases are named pointers to a version, per application, domain and
entry type, with a history that answers "which version was live at 14:00?".
These tests drive the SQL layer through real SQLAlchemy engines, with a write
lock of their own (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on
a lock row on MariaDB) standing in for the store's.
"""

from __future__ import annotations

import bisect
import contextlib
import multiprocessing
import queue
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from ams.catalog import aliases
from ams.errors import InvalidArgumentError, InvalidArgumentTypeError, NotFoundError
from ams.url import StoreURL, parse_store_url

KEY = ("app", "EOS", "models")
T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
LOCK_TABLE = "test_write_lock"
DEADLINE = 240  # seconds for the concurrent test; a hang fails instead of blocking CI


# ------------------------------------------------------------------ engines and locks
def make_engine(url: str | StoreURL) -> sa.engine.Engine:
    """An engine like the store's: SQLite emits its own BEGIN; MariaDB reads committed."""
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    if parsed.backend == "sqlite":
        engine = sa.create_engine(parsed.sqlalchemy_url(), connect_args={"timeout": 120})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # BEGIN is ours

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine
    return sa.create_engine(parsed.sqlalchemy_url(), isolation_level="READ COMMITTED",
                            connect_args={"charset": "utf8mb4", "collation": "utf8mb4_bin",
                                          "use_pure": True})


@contextlib.contextmanager
def write(engine: sa.engine.Engine) -> Iterator[sa.engine.Connection]:
    """One write transaction under the test's write lock."""
    with engine.connect() as conn:
        conn.info["write"] = True
        try:
            with conn.begin():
                if conn.dialect.name != "sqlite":
                    conn.execute(sa.text(f"SELECT id FROM {LOCK_TABLE} WHERE id = 1 FOR UPDATE"))
                yield conn
        finally:
            conn.info.pop("write", None)


@contextlib.contextmanager
def read(engine: sa.engine.Engine) -> Iterator[sa.engine.Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


@dataclass
class Database:
    url: str
    engine: sa.engine.Engine


@pytest.fixture
def db(backend, tmp_path, fresh_mariadb_database) -> Iterator[Database]:
    """An empty database with the alias table (and, on MariaDB, the test's lock row)."""
    url = str(tmp_path / "aliases.db") if backend == "sqlite" else fresh_mariadb_database()
    engine = make_engine(url)
    with engine.begin() as conn:
        assert aliases.create_tables(conn) == [aliases.TABLE_NAME, "ams_alias_history_key_id",
                                                "ams_alias_history_key_set_at"]
    if backend != "sqlite":
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {LOCK_TABLE} (id INT PRIMARY KEY)"))
            conn.execute(sa.text(f"INSERT INTO {LOCK_TABLE} VALUES (1)"))
    yield Database(url, engine)
    engine.dispose()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def row_count(db: Database) -> int:
    with read(db.engine) as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {aliases.TABLE_NAME}")).scalar()


# ------------------------------------------------------------------ schema
def test_create_tables_is_idempotent_and_case_sensitive(db, backend):
    with db.engine.begin() as conn:
        assert aliases.create_tables(conn) == []
        conn.execute(sa.text("DROP INDEX ams_alias_history_key_set_at"
                             + ("" if backend == "sqlite" else f" ON {aliases.TABLE_NAME}")))
    with db.engine.begin() as conn:
        assert aliases.create_tables(conn) == ["ams_alias_history_key_set_at"]
        indexes = {ix["name"]: ix["column_names"]
                   for ix in sa.inspect(conn).get_indexes(aliases.TABLE_NAME)}
    assert indexes["ams_alias_history_key_id"] == ["application_name", "domain_name",
                                                   "entry_type", "alias", "id"]
    if backend != "sqlite":
        with read(db.engine) as conn:
            engine_name, collation = conn.execute(sa.text(
                "SELECT engine, table_collation FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_name = :t"),
                {"t": aliases.TABLE_NAME}).one()
        assert (engine_name, collation) == ("InnoDB", "utf8mb4_nopad_bin")
    # Names are exact: "EOS" and "eos", "a" and "a " are different keys.
    with write(db.engine) as conn:
        aliases.set_alias(conn, "app", "EOS", "models", "champion", 1, "alice")
        aliases.set_alias(conn, "app", "eos", "models", "champion", 2, "alice")
        aliases.set_alias(conn, "app ", "EOS", "models", "champion", 3, "alice")
        aliases.set_alias(conn, "app", "EOS", "models", "Champion", 4, "alice")
    with read(db.engine) as conn:
        assert aliases.current(conn, "app", "EOS", "models") == {"Champion": 4, "champion": 1}
        assert aliases.current(conn, "app", "eos", "models") == {"champion": 2}
        assert aliases.current(conn, "app ", "EOS", "models") == {"champion": 3}


def test_alias_table_leaves_the_kosh_layout_alone(store, make_h5):
    """Next to a real store: Kosh's tables and records are what they were."""
    from conftest import snapshot_store
    store.add_data("EOS", [make_h5()])
    before = snapshot_store(store.url)
    engine = make_engine(store.url)
    try:
        with engine.begin() as conn:
            aliases.create_tables(conn)
        with engine.begin() as conn:  # one writer: no lock needed
            aliases.set_alias(conn, "app", "EOS", "data", "champion", 1, "alice")
    finally:
        engine.dispose()
    after = snapshot_store(store.url)
    assert len(after.pop(aliases.TABLE_NAME)) == 1
    assert before.pop(aliases.TABLE_NAME, []) == []  # the store made it, empty, on open
    assert after == before


# ------------------------------------------------------------------ names and selectors
GOOD_NAMES = ["a", "champion", "Champion_v2", "prod-2.1", "z" * 64, "a.b-c_d"]
BAD_NAMES = [
    ("latest", InvalidArgumentError, "reserved"),
    ("Latest", InvalidArgumentError, "reserved"),
    ("1abc", InvalidArgumentError, "'1abc'"),
    ("", InvalidArgumentError, "''"),
    ("a" * 65, InvalidArgumentError, "65 characters"),
    ("a b", InvalidArgumentError, "'a b'"),
    ("_x", InvalidArgumentError, "'_x'"),
    ("-x", InvalidArgumentError, "'-x'"),
    ("a/b", InvalidArgumentError, "'a/b'"),
    ("caf\u00e9", InvalidArgumentError, "'caf\u00e9'"),
    ("a\n", InvalidArgumentError, "'a\\n'"),
    ("@a", InvalidArgumentError, "'@a'"),
    (None, InvalidArgumentTypeError, "NoneType"),
    (3, InvalidArgumentTypeError, "int"),
    (b"abc", InvalidArgumentTypeError, "bytes"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_alias_names(name):
    assert aliases.check_alias_name(name) == name
    assert aliases.parse_selector("@" + name) == name


@pytest.mark.parametrize("name, error, fragment", BAD_NAMES, ids=repr)
def test_bad_alias_names_are_named_in_the_error(name, error, fragment):
    with pytest.raises(error) as info:
        aliases.check_alias_name(name)
    assert fragment in str(info.value)
    if isinstance(name, str):
        with pytest.raises(error):
            aliases.parse_selector("@" + name)


def test_parse_selector_only_takes_at_names():
    for value in (None, "latest", "champion", 3, [1, 2], "", "a@b"):
        assert aliases.parse_selector(value) is None
    assert aliases.parse_selector("@champion") == "champion"
    for value in ("@", "@latest", "@1abc", "@a b"):
        with pytest.raises(InvalidArgumentError):
            aliases.parse_selector(value)


def test_bad_names_versions_and_times_write_nothing(db):
    with write(db.engine) as conn:
        for name, error, _fragment in BAD_NAMES:
            with pytest.raises(error):
                aliases.set_alias(conn, *KEY, name, 1, "alice")
            with pytest.raises(error):
                aliases.remove_alias(conn, *KEY, name, "alice")
            with pytest.raises(error):
                aliases.forget(conn, *KEY, ["ok", name], "alice")
            with pytest.raises(error):
                aliases.get_alias(conn, *KEY, name)
            with pytest.raises(error):
                aliases.history(conn, *KEY, name)
        for version, error in ((-1, InvalidArgumentError), (2**31, InvalidArgumentError),
                               ("three", InvalidArgumentTypeError), (True, InvalidArgumentTypeError),
                               (None, InvalidArgumentTypeError), (1.5, InvalidArgumentTypeError)):
            with pytest.raises(error):
                aliases.set_alias(conn, *KEY, "champion", version, "alice")
        for moment, error in (("yesterday", InvalidArgumentError),
                              ("2024-13-01T00:00:00", InvalidArgumentError),
                              (1714572000, InvalidArgumentTypeError),
                              (T0.date(), InvalidArgumentTypeError)):
            with pytest.raises(error) as info:
                aliases.set_alias(conn, *KEY, "champion", 1, "alice", now=moment)
            assert "now" in str(info.value)
            with pytest.raises(error) as info:
                aliases.get_alias(conn, *KEY, "champion", at=moment)
            assert "at" in str(info.value) and repr(moment)[:20] in str(info.value)
    assert row_count(db) == 0


def test_default_user_is_the_os_user(monkeypatch):
    import getpass
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    assert aliases.default_user() == "alice"

    def no_user():
        raise OSError("no user name")
    monkeypatch.setattr(getpass, "getuser", no_user)
    assert aliases.default_user().startswith("uid")


# ------------------------------------------------------------------ set, get, remove, history
def test_set_get_remove_and_history(db):
    with read(db.engine) as conn:
        assert aliases.get_alias(conn, *KEY, "champion") is None
        assert aliases.history(conn, *KEY, "champion") == []
    with write(db.engine) as conn:
        assert aliases.set_alias(conn, *KEY, "champion", 3, "alice", now=at(0)) is None
        assert aliases.set_alias(conn, *KEY, "champion", 5, "bob", now=at(10)) == 3
        # Pointing it where it already points is not a change: nothing recorded.
        assert aliases.set_alias(conn, *KEY, "champion", 5, "bob", now=at(15)) == 5
        assert aliases.get_alias(conn, *KEY, "champion") == 5
        assert aliases.remove_alias(conn, *KEY, "champion", "carol", now=at(20)) == 5
        assert aliases.get_alias(conn, *KEY, "champion") is None
        with pytest.raises(NotFoundError, match="'champion'.*EOS"):
            aliases.remove_alias(conn, *KEY, "champion", "carol", now=at(25))
        with pytest.raises(NotFoundError, match="'never'"):
            aliases.remove_alias(conn, *KEY, "never", "carol")
        assert aliases.set_alias(conn, *KEY, "champion", 0, "alice", now=at(30)) is None
    with read(db.engine) as conn:
        assert aliases.get_alias(conn, *KEY, "champion") == 0
        assert aliases.history(conn, *KEY, "champion") == [
            {"version": 3, "previous": None, "set_at": "2024-05-01T14:00:00.000000+00:00",
             "set_by": "alice"},
            {"version": 5, "previous": 3, "set_at": "2024-05-01T14:00:10.000000+00:00",
             "set_by": "bob"},
            {"version": None, "previous": 5, "set_at": "2024-05-01T14:00:20.000000+00:00",
             "set_by": "carol"},
            {"version": 0, "previous": None, "set_at": "2024-05-01T14:00:30.000000+00:00",
             "set_by": "alice"},
        ]
        assert aliases.history(conn, *KEY, "never") == []


def test_set_at_defaults_to_now_in_utc(db):
    before = datetime.now(UTC)
    with write(db.engine) as conn:
        aliases.set_alias(conn, *KEY, "champion", 1, "alice")
    after = datetime.now(UTC)
    with read(db.engine) as conn:
        (change,) = aliases.history(conn, *KEY, "champion")
    stamp = datetime.fromisoformat(change["set_at"])
    assert stamp.utcoffset() == timedelta(0) and before <= stamp <= after
    assert len(change["set_at"]) == 32  # fixed width: sorts as text in time order


def test_times_in_any_zone_or_naive_utc_are_one_moment(db):
    paris = timezone(timedelta(hours=2))
    with write(db.engine) as conn:
        aliases.set_alias(conn, *KEY, "champion", 1, "alice", now="2024-05-01T16:00:00+02:00")
        aliases.set_alias(conn, *KEY, "champion", 2, "alice", now=at(60).replace(tzinfo=None))
    with read(db.engine) as conn:
        assert [c["set_at"] for c in aliases.history(conn, *KEY, "champion")] == [
            "2024-05-01T14:00:00.000000+00:00", "2024-05-01T14:01:00.000000+00:00"]
        get = lambda moment: aliases.get_alias(conn, *KEY, "champion", at=moment)
        assert get(at(-0.000001)) is None
        assert get(T0) == get(T0.astimezone(paris)) == get("2024-05-01T14:00:00Z") == 1
        assert get("2024-05-01T14:00:00") == get(T0.replace(tzinfo=None)) == 1  # naive = UTC
        assert get("2024-05-01T16:00:59.999999+02:00") == 1
        assert get("2024-05-01T14:01:00.0000009Z") == 2  # beyond microseconds: truncated
        assert get("2024-05-01") is None  # a date is its midnight
        assert get(datetime.max) == 2


def test_a_clock_going_backwards_keeps_history_in_time_order(db):
    with write(db.engine) as conn:
        aliases.set_alias(conn, *KEY, "champion", 1, "alice", now=at(10))
        aliases.set_alias(conn, *KEY, "champion", 2, "bob", now=at(5))  # bob's clock is behind
        aliases.remove_alias(conn, *KEY, "champion", "bob", now=at(7))
    with read(db.engine) as conn:
        assert [c["set_at"] for c in aliases.history(conn, *KEY, "champion")] == [
            at(10).isoformat(timespec="microseconds")] * 3
        assert aliases.get_alias(conn, *KEY, "champion", at=at(9)) is None
        assert aliases.get_alias(conn, *KEY, "champion", at=at(10)) is None  # the newest wins


def test_current_pointing_at_and_forget(db):
    with write(db.engine) as conn:
        aliases.set_alias(conn, *KEY, "champion", 3, "alice")
        aliases.set_alias(conn, *KEY, "challenger", 4, "alice")
        aliases.set_alias(conn, *KEY, "prod", 3, "alice")
        aliases.set_alias(conn, *KEY, "old", 1, "alice")
        aliases.remove_alias(conn, *KEY, "old", "alice")
        aliases.set_alias(conn, *KEY, "moved", 4, "alice")
        aliases.set_alias(conn, *KEY, "moved", 2, "alice")
    with read(db.engine) as conn:
        assert aliases.current(conn, *KEY) == {"challenger": 4, "champion": 3, "moved": 2,
                                               "prod": 3}
        assert aliases.pointing_at(conn, *KEY, [3]) == {"champion": 3, "prod": 3}
        assert aliases.pointing_at(conn, *KEY, {4, 1, 9}) == {"challenger": 4}
        assert aliases.pointing_at(conn, *KEY, [1]) == {}  # "old" was removed
        assert aliases.pointing_at(conn, *KEY, []) == {}
    rows = row_count(db)
    later = datetime.now(UTC) + timedelta(days=1)
    with write(db.engine) as conn:
        assert aliases.forget(conn, *KEY, [], "alice") == {}
        with pytest.raises(InvalidArgumentTypeError, match="'prod'"):
            aliases.forget(conn, *KEY, "prod", "alice")
        assert aliases.forget(conn, *KEY, iter(["prod", "champion", "old", "never", "prod"]),
                              "carol", now=later) == {"champion": 3, "prod": 3}
    assert row_count(db) == rows + 2
    with read(db.engine) as conn:
        assert aliases.current(conn, *KEY) == {"challenger": 4, "moved": 2}
        assert aliases.history(conn, *KEY, "prod")[-1] == {
            "version": None, "previous": 3, "set_at": later.isoformat(timespec="microseconds"),
            "set_by": "carol"}
        assert len(aliases.history(conn, *KEY, "old")) == 2  # not removed twice


def test_applications_domains_and_entries_never_see_each_others_aliases(db):
    keys = [("app", "EOS", "models"), ("other", "EOS", "models"), ("app", "Hydro", "models"),
            ("app", "EOS", "data"), ("app", "EOS", "candidates")]
    with write(db.engine) as conn:
        for version, key in enumerate(keys, start=1):
            aliases.set_alias(conn, *key, "champion", version, "alice")
            aliases.set_alias(conn, *key, f"only{version}", version, "alice")
        aliases.remove_alias(conn, "other", "EOS", "models", "champion", "alice")
    with read(db.engine) as conn:
        for version, key in enumerate(keys, start=1):
            expected = {f"only{version}": version}
            if key[0] != "other":
                expected["champion"] = version
            assert aliases.current(conn, *key) == expected
            assert aliases.pointing_at(conn, *key, range(10)) == expected
            assert len(aliases.history(conn, *key, "champion")) == (2 if key[0] == "other" else 1)
        assert aliases.current(conn, "nobody", "EOS", "models") == {}
    with write(db.engine) as conn:
        assert aliases.forget(conn, "app", "EOS", "data", ["champion", "only1"], "bob") == {
            "champion": 4}
    with read(db.engine) as conn:
        assert aliases.get_alias(conn, "app", "EOS", "models", "champion") == 1


# ------------------------------------------------------------------ time travel
def test_time_travel_matches_a_plain_python_model(db):
    """1,000 random moves at increasing times; get_alias(at=t) agrees with a list and bisect.

    A random target may be where the alias already is: that set is not a change,
    is not recorded and does not count towards the 1,000.
    """
    rng = random.Random(14)
    times: list[datetime] = []      # the moment of each recorded change
    values: list[int | None] = []  # the alias's version after it
    moment, value = T0, None
    with write(db.engine) as conn:
        while len(times) < 1000:
            moment += timedelta(microseconds=rng.choice([1, 2, 999, 10**6, 3600 * 10**6]))
            if value is not None and rng.random() < 0.1:
                assert aliases.remove_alias(conn, *KEY, "champion", "alice", now=moment) == value
                value = None
            else:
                target = rng.randrange(30)
                previous = aliases.set_alias(conn, *KEY, "champion", target, "alice", now=moment)
                assert previous == value
                if target == value:
                    continue  # not a change: not recorded
                value = target
            times.append(moment)
            values.append(value)
            # Noise under other keys must not leak into the answers.
            if rng.random() < 0.05:
                aliases.set_alias(conn, "app", "EOS", "data", "champion", rng.randrange(30),
                                  "bob", now=moment)

    def model(when: datetime) -> int | None:
        index = bisect.bisect_right(times, when)
        return values[index - 1] if index else None

    probes = [T0, times[0] - timedelta(microseconds=1), times[-1], times[-1] + timedelta(days=9)]
    probes += rng.sample(times, 300)  # exactly at a change
    probes += [times[i] + (times[i + 1] - times[i]) / 2 for i in rng.sample(range(999), 300)]  # between
    probes += [times[0] + (times[-1] - times[0]) * rng.random() for _ in range(300)]
    with read(db.engine) as conn:
        history = aliases.history(conn, *KEY, "champion")
        assert [c["version"] for c in history] == values
        assert [datetime.fromisoformat(c["set_at"]) for c in history] == times
        for number, probe in enumerate(probes):
            # Alternate the forms a caller may use for one moment.
            forms = [probe, probe.isoformat(), probe.astimezone(timezone(timedelta(hours=-7))),
                     probe.replace(tzinfo=None)]
            got = aliases.get_alias(conn, *KEY, "champion", at=forms[number % 4])
            assert got == model(probe), (probe, got, model(probe))


# ------------------------------------------------------------------ atomicity across processes
WRITERS, MOVES_EACH = 4, 50


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sqlalchemy", "ams.catalog.aliases", __name__])
    return ctx


def _writer(url: str, index: int, barrier, results) -> None:
    """Move ``champion`` 50 times, one locked transaction per move, to versions of its own."""
    engine = make_engine(url)
    try:
        barrier.wait(DEADLINE)
        moves = []
        pause = random.Random(index)
        for step in range(1, MOVES_EACH + 1):
            version = index * 1000 + step
            time.sleep(pause.random() * 0.004)  # let the other writers in between moves
            with write(engine) as conn:
                moves.append((version, aliases.set_alias(conn, *KEY, "champion", version,
                                                         f"writer{index}")))
        results.put(("writer", index, moves))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the test
        results.put(("error", index, f"{type(error).__name__}: {error}"))
    finally:
        engine.dispose()


def _reader(url: str, barrier, stop, results) -> None:
    """Read ``champion`` in a loop until told to stop; report every value seen, in order."""
    engine = make_engine(url)
    try:
        barrier.wait(DEADLINE)
        seen = []
        while not stop.is_set() or len(seen) < 10:
            with read(engine) as conn:
                seen.append(aliases.get_alias(conn, *KEY, "champion"))
        results.put(("reader", -1, seen))
    except BaseException as error:  # noqa: BLE001
        results.put(("error", -1, f"{type(error).__name__}: {error}"))
    finally:
        engine.dispose()


def test_concurrent_moves_are_atomic(db):
    ctx = _context()
    barrier, stop, results = ctx.Barrier(WRITERS + 1), ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=_writer, args=(db.url, index, barrier, results))
                for index in range(1, WRITERS + 1)]
    children.append(ctx.Process(target=_reader, args=(db.url, barrier, stop, results)))
    for child in children:
        child.start()
    reports: dict[str, list[tuple[int, Any]]] = {"writer": [], "reader": [], "error": []}
    deadline = time.monotonic() + DEADLINE
    try:
        while len(reports["writer"]) + len(reports["error"]) < WRITERS:
            assert time.monotonic() < deadline, f"writers still running after {DEADLINE} s"
            with contextlib.suppress(queue.Empty):
                kind, index, payload = results.get(timeout=0.1)
                reports[kind].append((index, payload))
        stop.set()
        while not reports["reader"] and not reports["error"]:
            assert time.monotonic() < deadline, "the reader did not stop"
            with contextlib.suppress(queue.Empty):
                kind, index, payload = results.get(timeout=0.1)
                reports[kind].append((index, payload))
    finally:
        stop.set()
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
    assert not reports["error"], reports["error"]
    assert [child.exitcode for child in children] == [0] * len(children)

    with read(db.engine) as conn:
        history = aliases.history(conn, *KEY, "champion")
    versions = [change["version"] for change in history]
    # Exactly 200 changes, each one's "previous" the version of the change before it.
    assert len(history) == WRITERS * MOVES_EACH
    assert [change["previous"] for change in history] == [None] + versions[:-1]
    assert sorted(versions) == sorted(i * 1000 + s for i in range(1, WRITERS + 1)
                                      for s in range(1, MOVES_EACH + 1))
    # What each writer was told it replaced is what the history says it replaced.
    told = {version: previous for _index, moves in reports["writer"] for version, previous in moves}
    assert told == {change["version"]: change["previous"] for change in history}
    # Every read saw a version that had been set, and time never ran backwards for it.
    ((_index, seen),) = reports["reader"]
    position = {version: number for number, version in enumerate(versions)}
    assert len(set(seen)) > 1, "the reader never saw a move happen"
    assert set(seen) <= set(versions) | {None}
    order = [position[version] for version in seen if version is not None]
    assert order == sorted(order)
    assert seen[-1] == versions[-1]
