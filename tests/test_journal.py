"""Deployment aliases and the change feed through AMSDataStore, on both backends.

The SQL layers have their own tests (test_aliases_sql.py, test_feed_sql.py,
test_relay.py); these check what the store does with them: ``"@name"``
wherever ``"latest"`` works, the removal guards, one event per committed
write and none for a failed one, and a relay fed by real store processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from datetime import datetime, timezone
from typing import Any, Dict, List

import pytest

from ams import AMSDataStore, AMSModelDescr, UQType, events
from ams.cli import main
from ams.errors import (
    AliasError,
    InvalidArgumentError,
    LineageError,
    NotFoundError,
    ReadOnlyStoreError,
)

from broker import AMQP_URL, assert_messages_are
from conftest import copy_files, snapshot_store

DEADLINE = 240


def _model(make_model, name: str) -> AMSModelDescr:
    return AMSModelDescr(make_model(name), 0.5, UQType.Random)


@pytest.fixture
def models(store, make_model) -> Dict[int, str]:
    """Models versions 1, 2, 3 of domain EOS; version -> path."""
    out = {}
    for version in (1, 2, 3):
        descr = _model(make_model, f"m{version}.pt")
        assert store.add_model("EOS", descr, 0.1 * version, 0.1 * version) == version
        out[version] = descr.path
    return out


# ------------------------------------------------------------------ aliases
def test_alias_selectors_work_wherever_latest_does(store, models, make_h5):
    assert store.set_alias("EOS", "champion", 2) is None
    assert store.set_alias("EOS", "champion", "1") == 2  # a digit string is a version
    assert store.set_alias("EOS", "champion", 2) == 1
    assert store.get_files("EOS", "models", "@champion") == [models[2]]
    assert store.get_model_files("EOS", "@champion") == [models[2]]
    assert [e["filename"] for e in store.search("EOS", "models", "@champion")] == [models[2]]
    assert [e["filename"] for e in store.find("EOS", entry_type="models", version="@champion")] \
        == [models[2]]
    module, entry = store.load_model("EOS", "@champion")
    assert entry["version"] == 2 and callable(module)
    assert store.model_lineage("EOS", "@champion")["version"] == 2
    assert store.kosh_dataset("EOS", "models", "@champion").version == 2
    assert store.get_files("EOS", "models", "@unset") == []  # unset: nothing selected
    assert store.search("EOS", "models", "@unset") == []
    config = store.deployment_config(["EOS"], "@champion", stage_dir="/scratch")
    assert config["ml_models"]["model_0"]["model_path"] == models[2]
    with pytest.raises(NotFoundError, match="alias 'unset'.*champion"):
        store.deployment_config(["EOS"], "@unset", stage_dir="/scratch")
    # the data entry has aliases of its own
    data = make_h5()
    store.add_data("EOS", [data])
    store.set_alias("EOS", "train-set", 1, entry_type="data")
    assert store.get_data_files("EOS", "@train-set") == [data]
    assert store.aliases("EOS") == {"champion": 2}
    assert store.aliases("EOS", entry_type="data") == {"train-set": 1}
    report = store.remove_data("EOS", None, version="@train-set", purge=False, force=True)
    assert report.removed == [data] and store.aliases("EOS", entry_type="data") == {}


def test_alias_history_and_time_travel(store, models):
    store.set_alias("EOS", "champion", 1)
    between = datetime.now(timezone.utc)
    time.sleep(0.01)
    store.set_alias("EOS", "champion", 3)
    assert store.remove_alias("EOS", "champion") == 3
    history = store.alias_history("EOS", "champion")
    assert [(h["version"], h["previous"]) for h in history] == [(1, None), (3, 1), (None, 3)]
    assert all(h["set_by"] for h in history)
    assert store.get_alias("EOS", "champion") is None
    assert store.get_alias("EOS", "champion", at=between) == 1
    assert store.get_alias("EOS", "champion", at=between.isoformat()) == 1
    assert store.get_alias("EOS", "champion", at=history[1]["set_at"]) == 3
    with pytest.raises(NotFoundError):
        store.remove_alias("EOS", "champion")


def test_bad_aliases_and_unknown_versions_change_nothing(store, models, unchanged):
    guard = unchanged()
    for name in ("latest", "1st", "", "a" * 65, "has space"):
        with pytest.raises(InvalidArgumentError):
            store.set_alias("EOS", name, 1)
    with pytest.raises(NotFoundError, match=r"no models version 9 .*existing: 1, 2, 3"):
        store.set_alias("EOS", "champion", 9)
    with pytest.raises(NotFoundError, match="existing: none"):
        store.set_alias("EOS", "champion", 1, entry_type="candidates")
    with pytest.raises(InvalidArgumentError):
        store.get_files("EOS", "models", "@bad name")
    guard.check()


def test_removing_or_moving_an_aliased_version_is_guarded(store, models, make_h5, tmp_path,
                                                          unchanged):
    store.set_alias("EOS", "champion", 2)
    store.set_alias("EOS", "challenger", 2)
    guard = unchanged()
    with pytest.raises(AliasError, match=r"'challenger' -> version 2, 'champion' -> version 2") \
            as info:
        store.remove_models("EOS", [models[2]])
    assert info.value.aliases == ["challenger", "champion"]
    with pytest.raises(AliasError):
        store.remove_models("EOS", None, version="@champion")
    guard.check()
    report = store.remove_models("EOS", [models[2]], force=True)
    assert report.removed == [models[2]] and store.aliases("EOS") == {}
    assert store.alias_history("EOS", "champion")[-1]["version"] is None  # recorded
    # moving away an aliased candidates version
    candidate = make_h5("cand.h5")
    store.add_candidates("EOS", [candidate])
    store.set_alias("EOS", "next", 1, entry_type="candidates")
    guard = unchanged()
    with pytest.raises(AliasError, match="'next'"):
        store.move("EOS", tmp_path / "promoted", "candidates", "data", [candidate])
    guard.check()
    assert not (tmp_path / "promoted").exists()  # the copy made before the refusal is gone
    (moved,) = store.move("EOS", tmp_path / "promoted", "candidates", "data", [candidate],
                          force=True)
    assert store.get_data_files("EOS") == [moved]
    assert store.aliases("EOS", entry_type="candidates") == {}


def test_lineage_and_alias_guards_are_independent(store, make_h5, make_model):
    data = make_h5()
    store.add_data("EOS", [data])
    store.add_model("EOS", _model(make_model, "m.pt"), 0.1, 0.1, trained_on=[1])
    with pytest.raises(LineageError):
        store.remove_data("EOS", [data])


def test_aliases_of_applications_and_read_only_stores(store, store_url, models):
    store.set_alias("EOS", "champion", 1)
    with AMSDataStore("other", store_url) as other:
        assert other.aliases("EOS") == {}  # another application's domain EOS: not ours
        assert other.get_alias("EOS", "champion") is None
    with AMSDataStore("app", store_url, read_only=True) as reader:
        assert reader.get_alias("EOS", "champion") == 1
        with pytest.raises(ReadOnlyStoreError):
            reader.set_alias("EOS", "champion", 2)
        with pytest.raises(ReadOnlyStoreError):
            reader.remove_alias("EOS", "champion")


def test_cli_force_overrides_the_alias_guard(store, store_url, models, capsys):
    store.set_alias("EOS", "champion", 1)
    base = ["--url", store_url, "--name", "app", "remove", "--entry", "models", "--domain", "EOS",
            "--file", models[1]]
    assert main(base) == 1
    assert "'champion' -> version 1" in capsys.readouterr().err
    assert main(base + ["--force"]) == 0
    assert store.aliases("EOS") == {} and store.get_model_versions("EOS") == [2, 3]


def test_cli_version_takes_an_alias(store, store_url, models, capsys):
    store.set_alias("EOS", "champion", 3)
    assert main(["--url", store_url, "--name", "app", "query", "--entry", "models",
                 "--version", "@champion", "--field", "filename"]) == 0
    assert capsys.readouterr().out.splitlines() == [models[3]]


# ------------------------------------------------------------------ change feed
def _summary(events: List[Dict[str, Any]]) -> List[tuple]:
    return [(e["action"], e["domain_name"], e["entry_type"], e["version"], e["count"])
            for e in events]


def test_every_committed_write_is_one_event_per_version(store, make_h5, make_model, tmp_path):
    a, b, c = make_h5("a.h5"), make_h5("b.h5"), make_h5("c.h5")
    sizes = {path: os.path.getsize(path) for path in (a, b, c)}
    store.add_candidates("EOS", [a, b])
    store.add_candidates("EOS", [c])
    (moved,) = store.move("EOS", tmp_path / "data", "candidates", "data", [c])
    store.add_model("EOS", _model(make_model, "m.pt"), 0.1, 0.2)
    store.set_alias("EOS", "champion", 1)
    store.remove_alias("EOS", "champion")
    store.remove_candidates("EOS", [a], purge=False)
    os.remove(b)
    store.verify(repair=True)
    events = store.changes()
    assert _summary(events) == [
        ("add", "EOS", "candidates", 1, 2), ("add", "EOS", "candidates", 2, 1),
        ("move", "EOS", "candidates", 2, 1), ("add", "EOS", "models", 1, 1),
        ("alias", "EOS", "models", 1, 0), ("alias", "EOS", "models", None, 0),
        ("remove", "EOS", "candidates", 1, 1), ("repair", "EOS", "candidates", 1, 1)]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0]["files"] == sorted([a, b])
    assert (events[0]["bytes"], events[2]["bytes"]) == (sizes[a] + sizes[b], sizes[c])
    move = events[2]
    assert (move["files"], move["to_entry_type"], move["to_version"]) == ([moved], "data", 1)
    assert (events[4]["alias"], events[4]["previous"]) == ("champion", None)
    assert (events[5]["alias"], events[5]["previous"]) == ("champion", 1)
    assert events[6]["bytes"] == 0
    datetime.fromisoformat(events[0]["time"])  # ISO-8601
    # filters and paging
    assert _summary(store.changes(action="alias")) == _summary(events[4:6])
    assert store.changes(after=ids[5], limit=1) == [events[6]]
    assert store.changes(entry_type="models") == events[3:6]
    assert store.changes(domain_name="nowhere") == []


def test_failed_calls_leave_no_event(store, make_h5, make_model, tmp_path, unchanged):
    a = make_h5()
    store.add_data("EOS", [a])
    before = store.changes()
    with pytest.raises(Exception):
        store.add_data("EOS", [a])  # already registered
    with pytest.raises(Exception):
        store.add_data("EOS", [make_h5(), str(tmp_path / "missing.h5")])
    with pytest.raises(NotFoundError):
        store.set_alias("EOS", "x", 5, entry_type="data")
    with pytest.raises(InvalidArgumentError):
        store.remove_data("EOS", None)
    assert store.changes() == before


def test_import_records_import_events(store, make_h5, tmp_path):
    import sqlite3
    source = tmp_path / "old.db"
    path = make_h5()
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, application_name TEXT, "
                     "domain_name TEXT, filename TEXT, entry_type TEXT, version INTEGER, "
                     "metadata TEXT)")
        conn.execute("INSERT INTO entries VALUES (1, 'app', 'EOS', ?, 'data', 4, '{}')", (path,))
    store.import_from(str(source), progress=False)
    assert _summary(store.changes()) == [("import", "EOS", "data", 4, 1)]


def test_pending_bytes_and_prune(store, make_h5):
    files = [make_h5(rows=10 * k) for k in range(1, 4)]
    for path in files:
        store.add_candidates("EOS", [path])
    sizes = [os.path.getsize(p) for p in files]
    assert store.pending_bytes("EOS") == {"files": 3, "bytes": sum(sizes), "versions": [1, 2, 3]}
    assert store.pending_bytes("EOS", since_version=1) == {"files": 2, "bytes": sum(sizes[1:]),
                                                           "versions": [2, 3]}
    assert store.pending_bytes("nowhere") == {"files": 0, "bytes": 0, "versions": []}
    ids = [e["id"] for e in store.changes()]
    store.advance_relay("r1", ids[0])  # a relay has sent only the first
    assert store.prune_changes(ids[2]) == 1  # the second is not sent yet: it stays
    assert [e["id"] for e in store.changes()] == ids[1:]
    store.advance_relay("r1", ids[2])
    assert store.prune_changes(ids[2]) == 1
    assert [e["id"] for e in store.changes()] == ids[2:]
    assert store.relay_cursor("r1") == ids[2] and store.relay_cursor("new") == 0


def test_cli_changes(store, store_url, make_h5, capsys):
    store.add_data("EOS", [make_h5()])
    store.add_data("EOS", [make_h5()])
    assert main(["--url", store_url, "--name", "app", "changes", "--after", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == store.changes(after=1)


# ------------------------------------------------------------------ concurrent writers
def _writer(url: str, paths: List[str], seed: int) -> int:
    """Mixed calls; returns how many committed (each call is one or more events)."""
    rng = random.Random(seed)
    with AMSDataStore("app", url) as store:
        for path in paths:
            version = store.add_candidates("EOS", [path])
            if rng.random() < 0.3:
                store.set_alias("EOS", f"w{seed}", version, entry_type="candidates")
            if rng.random() < 0.2:
                try:
                    store.add_candidates("EOS", [path])  # fails: no event
                except Exception:  # noqa: BLE001
                    pass
            if rng.random() < 0.2:
                store.remove_candidates("EOS", [path], purge=False, force=True)
    return len(paths)


def _poller(url: str, stop_file: str, out: str) -> None:
    seen: List[int] = []
    with AMSDataStore("app", url, read_only=True) as store:
        last = 0
        while True:
            stopping = os.path.exists(stop_file)
            for event in store.changes(after=last):
                seen.append(event["id"])
                last = event["id"]
            if stopping:
                break
    with open(out, "w") as handle:
        json.dump(seen, handle)


def _mover(url: str, versions: List[int]) -> int:
    with AMSDataStore("app", url) as store:
        for version in versions:
            store.set_alias("EOS", "champion", version)
    return len(versions)


def _alias_reader(url: str, stop_file: str, out: str) -> None:
    seen = []
    with AMSDataStore("app", url, read_only=True) as store:
        while not os.path.exists(stop_file):
            seen.append(store.get_alias("EOS", "champion"))
    with open(out, "w") as handle:
        json.dump(seen, handle)


def test_four_processes_moving_one_alias(store, store_url, make_model, tmp_path):
    """4 processes x 50 set_alias calls (each to a version no other call uses) while a reader
    reads: exactly 200 changes, each ``previous`` the version before it, every read a version
    that existed."""
    for version in range(1, 201):
        assert store.add_model("EOS", _model(make_model, f"m{version}.pt"), 0.1, 0.1) == version
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ams", __name__])
    stop_file, seen_file = str(tmp_path / "stop"), str(tmp_path / "seen.json")
    reader = ctx.Process(target=_alias_reader, args=(store_url, stop_file, seen_file))
    reader.start()
    rng = random.Random(4)
    targets = list(range(1, 201))
    rng.shuffle(targets)
    with ctx.Pool(4) as pool:
        jobs = [(store_url, targets[k * 50:(k + 1) * 50]) for k in range(4)]
        assert sum(pool.starmap(_mover, jobs)) == 200
    open(stop_file, "w").close()
    reader.join(DEADLINE)
    history = store.alias_history("EOS", "champion")
    assert len(history) == 200 and sorted(h["version"] for h in history) == list(range(1, 201))
    assert [h["previous"] for h in history] == [None] + [h["version"] for h in history[:-1]]
    with open(seen_file) as handle:
        seen = json.load(handle)
    assert seen and set(seen) <= {None, *range(1, 201)}
    assert store.get_alias("EOS", "champion") == history[-1]["version"]


def _relay(url: str, amqp: str, exchange: str) -> None:
    with AMSDataStore("app", url) as store:
        events.publish(store, amqp, exchange=exchange, relay="kill", interval=0.05)


def test_writers_poller_and_killed_relay_lose_nothing(store, store_url, make_h5, tmp_path,
                                                      broker):
    """4 writer processes x 50 mixed calls; a poller misses nothing; a relay SIGKILLed 5 times
    and restarted delivers every committed event (deduplicated by message_id)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ams", "h5py", "pika", __name__])
    paths = copy_files(make_h5(), tmp_path / "cand", 4 * 50, "c")
    stop_file, seen_file = str(tmp_path / "stop"), str(tmp_path / "seen.json")
    poller = ctx.Process(target=_poller, args=(store_url, stop_file, seen_file))
    poller.start()

    def start_relay():
        process = ctx.Process(target=_relay, args=(store_url, AMQP_URL, broker.exchange))
        process.start()
        return process

    rng = random.Random(14)
    with ctx.Pool(4) as pool:
        jobs = [pool.apply_async(_writer, (store_url, paths[k * 50:(k + 1) * 50], k))
                for k in range(4)]
        relay = start_relay()
        for _ in range(5):
            time.sleep(rng.uniform(0.5, 1.5))
            relay.kill()
            relay.join(DEADLINE)
            relay = start_relay()
        assert sum(job.get(DEADLINE) for job in jobs) == 200
    open(stop_file, "w").close()
    poller.join(DEADLINE)
    relay.kill()
    relay.join(DEADLINE)
    events.publish(store, AMQP_URL, exchange=broker.exchange, relay="kill", once=True)

    expected = store.changes(limit=100_000)
    assert len([e for e in expected if e["action"] == "add"]) == 200
    with open(seen_file) as handle:
        assert json.load(handle) == [e["id"] for e in expected]  # the poller missed nothing
    received: Dict[str, Any] = {}
    for message in broker.drain():
        previous = received.setdefault(message[1].message_id, message)
        assert previous[2] == message[2]
    assert_messages_are(sorted(received.values(), key=lambda m: int(m[1].message_id)), expected)
    assert snapshot_store(store.url)["ams_relay"]  # the cursor is kept in the store


def test_cli_changes_follow_prints_new_events_and_exits_0_on_ctrl_c(store, store_url, make_h5):
    import signal
    import subprocess
    import sys
    store.add_data("EOS", [make_h5()])
    child = subprocess.Popen(
        [sys.executable, "-m", "ams", "--url", store_url, "--name", "app", "changes", "--follow",
         "--interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(child.stdout.readline())
        store.add_data("EOS", [make_h5()])  # committed after the follower started
        second = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=60)
    assert (first["id"], second["id"]) == tuple(e["id"] for e in store.changes())
    assert child.returncode == 0, err
