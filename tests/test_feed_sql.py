"""The change feed's SQL (ams/catalog/feed.py) on SQLite and MariaDB.

Round trip, filters, relay cursors, pruning, and the promise a poller relies
on: with writers under the store's write lock, ids grow in commit order, so
``read(after=last_seen)`` in a loop sees every committed event exactly once.
"""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from ams import _validate
from ams.catalog import feed
from ams.catalog import schema as _sina_schema
from ams.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    UnknownEntryTypeError,
)

from feed_source import FeedSource, Rollback, event, poller, writer

N_WRITERS, TRANSACTIONS_EACH, ROLLBACK_EVERY = 4, 50, 7
DEADLINE = 240  # seconds for the worker processes; a hang fails instead of blocking CI


def context():
    """Children fork from a server that imported the feed once (spawn would re-import per child)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sqlalchemy", "ams.catalog.feed", "feed_source"])
    return ctx


# ------------------------------------------------------------------ tables
def test_create_tables_is_idempotent(backend, feed_url):
    source = FeedSource(feed_url)
    try:
        assert source.create() == ["ams_change", "ams_change_application_id", "ams_relay"]
        assert source.create() == []
        with source.read() as conn:
            if backend == "sqlite":
                sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'ams_change'"))
                assert "AUTOINCREMENT" in sql.scalar()  # never reuses an id
            else:
                rows = conn.execute(sa.text(
                    "SELECT table_name, engine, table_collation FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name LIKE 'ams_%'")).all()
                assert sorted(rows) == [("ams_change", "InnoDB", "utf8mb4_nopad_bin"),
                                        ("ams_relay", "InnoDB", "utf8mb4_nopad_bin")]
    finally:
        source.close()


def test_tables_sit_beside_kosh_s(backend, feed_url):
    """Sina's tables are untouched; the feed only adds its own two."""
    def layout(conn, names):
        inspector = sa.inspect(conn)
        return {name: ([(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
                       sorted((ix["name"], ix["column_names"]) for ix in inspector.get_indexes(name)))
                for name in names}

    engine = sa.create_engine(FeedSource(feed_url).url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        _sina_schema.create_tables(engine)
        with engine.connect() as conn:
            sina_tables = layout(conn, sa.inspect(conn).get_table_names())
        source = FeedSource(feed_url)
        source.create()
        source.close()
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            assert names == set(sina_tables) | {"ams_change", "ams_relay", "feed_test_lock"}
            assert layout(conn, sina_tables) == sina_tables
    finally:
        engine.dispose()


# ------------------------------------------------------------------ append and read
def test_round_trip(source):
    events = [
        event(files=["/data/a.h5", "/data/b.h5"], nbytes=2048),
        event(action="move", entry_type="candidates", version=3, files=["/data/c.h5"],
              nbytes=10, to_entry_type="data", to_version=7),
        event(action="alias", entry_type="models", version=2, files=[], alias="prod", previous=1),
        event(action="remove", domain_name="Équation d'état", version=None,
              files=["/data/ü.h5"]),
    ]
    before = datetime.now().astimezone()
    ids = source.append(events)
    assert len(ids) == 4 and ids == sorted(ids) and len(set(ids)) == 4
    got = source.changes()
    assert [e["id"] for e in got] == ids
    times = {e.pop("time") for e in got}
    assert len(times) == 1  # one call, one time
    stamp = datetime.fromisoformat(times.pop())
    assert stamp.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= stamp <= datetime.now().astimezone() + timedelta(seconds=1)
    assert got == [
        {"id": ids[0], "application_name": "app", "domain_name": "EOS",
         "entry_type": "candidates", "action": "add", "version": 1,
         "files": ["/data/a.h5", "/data/b.h5"], "count": 2, "bytes": 2048},
        {"id": ids[1], "application_name": "app", "domain_name": "EOS",
         "entry_type": "candidates", "action": "move", "version": 3, "files": ["/data/c.h5"],
         "count": 1, "bytes": 10, "to_entry_type": "data", "to_version": 7},
        {"id": ids[2], "application_name": "app", "domain_name": "EOS", "entry_type": "models",
         "action": "alias", "version": 2, "files": [], "count": 0, "bytes": 0,
         "alias": "prod", "previous": 1},
        {"id": ids[3], "application_name": "app", "domain_name": "Équation d'état",
         "entry_type": "candidates", "action": "remove", "version": None,
         "files": ["/data/ü.h5"], "count": 1, "bytes": 0},
    ]
    assert source.append([]) == []


def test_a_large_event_fits(source):
    """One add of many long paths is one event (MariaDB's TEXT would stop at 64 KiB)."""
    files = [f"/scratch/{'x' * 200}/file_{index:06d}.h5" for index in range(2000)]
    source.append([event(files=files, nbytes=123)])
    (got,) = source.changes()
    assert got["files"] == files and got["count"] == 2000


def test_many_large_events_go_in_statements_that_fit(source):
    """An import's events can hold every file imported: one statement per 4 MB of them."""
    big = [[f"/scratch/{'é' * 480}/v{version}_{index:04d}.h5" for index in range(2000)]
           for version in range(4)]  # ~2 MB of UTF-8 each
    ids = source.append([event(action="import", version=v, files=files)
                         for v, files in enumerate(big)])
    got = source.changes()
    assert [e["id"] for e in got] == ids and len(set(ids)) == 4
    assert [e["files"] for e in got] == big and [e["version"] for e in got] == [0, 1, 2, 3]


def test_a_rolled_back_transaction_leaves_no_event(source):
    source.append([event(version=1)])
    with pytest.raises(Rollback), source.write() as conn:
        feed.append(conn, [event(version=2)])
        assert [e["version"] for e in feed.read(conn, "app")] == [1, 2]  # own writes
        raise Rollback()
    assert [e["version"] for e in source.changes()] == [1]
    later = source.append([event(version=3)])
    assert [e["id"] for e in source.changes()][-1] == later[0]


def test_a_bad_event_is_refused(source):
    with pytest.raises(InvalidArgumentError, match="unknown change action 'added'"):
        source.append([event(action="added")])
    with pytest.raises(InvalidArgumentError, match="unknown change event keys: colour"):
        source.append([event(colour="red")])
    assert source.changes() == []


def test_filters_and_paging(source, feed_url):
    source.append([event(domain_name="EOS", entry_type="data", action="add"),
                   event(domain_name="eos", entry_type="data", action="add"),
                   event(domain_name="EOS", entry_type="models", action="add"),
                   event(domain_name="EOS", entry_type="data", action="remove"),
                   event(application_name="other", domain_name="EOS")])
    mine = source.changes()
    assert len(mine) == 4 and {e["application_name"] for e in mine} == {"app"}
    ids = [e["id"] for e in mine]
    assert [e["id"] for e in source.changes(domain_name="EOS")] == [ids[0], ids[2], ids[3]]
    assert [e["id"] for e in source.changes(domain_name="eos")] == [ids[1]]  # case-sensitive
    assert [e["id"] for e in source.changes(entry_type="models")] == [ids[2]]
    assert [e["id"] for e in source.changes(action="remove")] == [ids[3]]
    assert [e["id"] for e in source.changes(domain_name="EOS", entry_type="data",
                                            action="add")] == [ids[0]]
    assert [e["id"] for e in source.changes(after=ids[1])] == ids[2:]
    assert [e["id"] for e in source.changes(after=ids[0], limit=2)] == ids[1:3]
    assert source.changes(after=ids[-1]) == []
    other = FeedSource(feed_url, application_name="other")
    try:
        assert [e["application_name"] for e in other.changes()] == ["other"]
    finally:
        other.close()


# ------------------------------------------------------------------ relays and pruning
def test_relay_cursor_never_moves_backwards(source):
    assert source.relay_cursor("default") == 0
    source.advance_relay("default", 5)
    assert source.relay_cursor("default") == 5
    source.advance_relay("default", 3)
    assert source.relay_cursor("default") == 5
    source.advance_relay("default", 9)
    source.advance_relay("Default", 1)  # names are case-sensitive
    assert (source.relay_cursor("default"), source.relay_cursor("Default")) == (9, 1)
    with source.write(lock=False) as conn:
        assert feed.relay_cursor(conn, "other", "default") == 0  # per application
        feed.advance_relay(conn, "other", "default", 2)
    assert source.relay_cursor("default") == 9


def test_prune_keeps_what_a_relay_has_not_sent(source):
    ids = source.append([event(version=v) for v in range(1, 11)])
    others = source.append([event(application_name="other", version=v) for v in (1, 2)])
    assert source.prune(ids[3]) == 3  # ids[0..2]
    assert [e["id"] for e in source.changes()] == ids[3:]
    source.advance_relay("fast", ids[8])
    source.advance_relay("slow", ids[5])
    with source.write(lock=False) as conn:  # another application's relay is not ours to wait for
        feed.advance_relay(conn, "other", "idle", 0)
    assert source.prune(ids[9] + 1) == 3  # ids[3..5]: up to the slow relay's cursor
    assert [e["id"] for e in source.changes()] == ids[6:]
    source.advance_relay("slow", ids[9])
    assert source.prune(others[-1] + 100) == 3  # ids[6..8]: the fast relay is now the slowest
    source.advance_relay("fast", ids[9])
    assert source.prune(others[-1] + 100) == 1
    assert source.changes() == []
    with source.write() as conn:  # the other application's events are untouched
        assert [e["id"] for e in feed.read(conn, "other")] == others


def test_prune_keeps_the_newest_event_and_ids_are_never_reused(source):
    ids = source.append([event(version=v) for v in (1, 2, 3)])
    assert source.prune(ids[-1] + 100) == 2  # the newest stays
    assert [e["id"] for e in source.changes()] == ids[-1:]
    with source.write() as conn:  # even when every row goes, the counter does not go back
        conn.execute(feed.CHANGE.delete())
    source.close()  # new connections
    new = source.append([event(version=4)])
    assert new[0] > ids[-1]
    assert source.prune(0) == 0


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"after": -1}, InvalidArgumentError, "after must be >= 0"),
    ({"after": "3"}, InvalidArgumentTypeError, "after must be an int"),
    ({"after": True}, InvalidArgumentTypeError, "after must be an int"),
    ({"limit": 0}, InvalidArgumentError, "limit must be between 1 and 100000"),
    ({"limit": 10**6}, InvalidArgumentError, "limit must be between 1"),
    ({"limit": 2.5}, InvalidArgumentTypeError, "limit must be an int"),
    ({"action": "added"}, InvalidArgumentError, "unknown change action 'added'"),
    ({"domain_name": ""}, InvalidArgumentError, "domain name must not be empty"),
    ({"entry_type": "model"}, UnknownEntryTypeError, "unknown entry type 'model'"),
])
def test_changes_arguments_are_checked(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        _validate.changes_arguments(**kwargs)


def test_changes_arguments_pass_through():
    assert _validate.changes_arguments(after=4, limit=10, domain_name="EOS", entry_type="data",
                                       action="move") == {
        "after": 4, "limit": 10, "domain_name": "EOS", "entry_type": "data", "action": "move"}
    assert _validate.event_id(0) == 0


# ------------------------------------------------------------------ concurrency
def test_a_poller_sees_every_committed_event_once(source, feed_url):
    """4 writer processes under the write lock, a poller reading after the last id it saw."""
    ctx = context()
    stop, results = ctx.Event(), ctx.Queue()
    watcher = ctx.Process(target=poller, args=(feed_url, stop, results))
    watcher.start()
    with ctx.Pool(N_WRITERS) as pool:
        jobs = [pool.apply_async(writer, (feed_url, index, TRANSACTIONS_EACH, ROLLBACK_EVERY))
                for index in range(N_WRITERS)]
        committed = sum(job.get(DEADLINE) for job in jobs)
    stop.set()
    outcome = results.get(timeout=DEADLINE)
    watcher.join(DEADLINE)
    assert watcher.exitcode == 0
    seen = outcome["seen"]
    everything = [e["id"] for e in source.changes(limit=100_000)]
    assert len(everything) == committed
    assert seen == everything  # each once, in id order, none filled in behind the poller
    assert outcome["reads"] > 1  # it polled while the writers ran
    files = [f for e in source.changes(limit=100_000) for f in e["files"]]
    assert len(files) == len(set(files)) == committed
    transactions = {int(f.rsplit("/t", 1)[1].split("_")[0]) for f in files}
    assert transactions == {n for n in range(1, TRANSACTIONS_EACH + 1) if n % ROLLBACK_EVERY}
