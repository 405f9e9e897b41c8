"""Writers killed with SIGKILL: all or nothing recorded, the store opens and takes writes.

SPEC/issue "Atomicity": a process killed in the middle of a 3000-file add leaves
all or none of that call's files recorded; ``move`` killed at any point leaves
no file both unrecorded and deleted. The child is killed while it is really
inside the write transaction, observed from outside without hooks in the
library: on SQLite the rollback journal (``<db>-journal``) exists from the
transaction's first write until its commit; on MariaDB InnoDB lists the
child's open transaction with modified rows (``information_schema.INNODB_TRX``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, List

import pytest

from ams import AMSDataStore

from conftest import copy_files, mariadb_admin, snapshot_store

ADD_FILES = 3000
MOVE_FILES = 600
DEADLINE = 180  # seconds to reach the observed state before the test gives up
LOGGER = logging.getLogger(__name__)


# ------------------------------------------------------------------ helpers

def context():
    """Children fork from a server that imported ams once (fast to start, killable alone)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ams", "h5py", __name__])
    return ctx


def _add(url: str, paths: List[str]) -> None:
    with AMSDataStore("app", url) as store:
        store.add_data("EOS", paths)


def _move(url: str, paths: List[str], dest: str) -> None:
    with AMSDataStore("app", url) as store:
        store.move("EOS", dest, "candidates", "data", paths)


def in_transaction(store: AMSDataStore) -> Callable[[], bool]:
    """True while some connection is writing inside a transaction on the store."""
    url = store.url
    if url.backend == "sqlite":
        journal = url.path + "-journal"
        return lambda: os.path.exists(journal)
    monitor = mariadb_admin()
    monitor.autocommit = True

    def writing() -> bool:
        cursor = monitor.cursor()
        # A connection on the store's database running a write statement: the adapter
        # writes only inside its explicit transactions (autocommit is off), so this is
        # the middle of one. (INNODB_TRX would say so too, but its cache is refreshed
        # only after 0.1 s without readers, so a fast poll never sees it change.)
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND "
            "(INFO LIKE 'INSERT%%' OR INFO LIKE 'UPDATE%%' OR INFO LIKE 'DELETE%%')",
            (url.database,))
        (count,) = cursor.fetchone()
        cursor.close()
        return count > 0
    writing.close = monitor.close  # type: ignore[attr-defined]
    return writing


def kill_when(child, condition: Callable[[], bool], what: str) -> float:
    """SIGKILL ``child`` as soon as ``condition()`` holds; return seconds waited."""
    started = time.monotonic()
    while not condition():
        assert child.is_alive(), f"the child ended (exit code {child.exitcode}) before {what}"
        assert time.monotonic() - started < DEADLINE, f"no {what} after {DEADLINE} s"
        time.sleep(0.0005)
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    return time.monotonic() - started


def recorded(store: AMSDataStore, entry_type: str) -> List[str]:
    return store.get_files("EOS", entry_type)


# ------------------------------------------------------------------ add
def test_add_killed_inside_its_transaction(store, store_url, tmp_path, make_h5):
    """A 3000-file add killed mid-transaction: none recorded (all would also pass), no trace."""
    first = make_h5()
    store.add_data("EOS", [first])
    paths = copy_files(make_h5(), tmp_path / "many", ADD_FILES, "f")
    before = snapshot_store(store.url)
    child = context().Process(target=_add, args=(store_url, paths))
    child.start()
    writing = in_transaction(store)
    try:
        waited = kill_when(child, writing, "the add's write transaction")
        if store.url.backend == "sqlite":  # the killed transaction left its hot journal
            assert os.path.exists(store.url.path + "-journal")
    finally:
        getattr(writing, "close", lambda: None)()
    got = recorded(store, "data")  # reading rolls a hot journal back / sees no uncommitted row
    assert len(set(got) & set(paths)) in (0, ADD_FILES), len(got)
    LOGGER.info("add of %d files killed after %.1f s: %d recorded", ADD_FILES, waited,
                len(set(got) & set(paths)))
    if len(got) == 1:  # none: not one row of the call is left anywhere
        assert snapshot_store(store.url) == before
    with AMSDataStore("app", store_url) as again:  # the store opens and takes writes
        new = make_h5()
        version = again.add_data("EOS", [new])
        assert version == (2 if len(got) == 1 else 3)
        assert again.get_data_files("EOS", "latest") == [new]
    if store.url.backend == "sqlite":
        assert not os.path.exists(store.url.path + "-journal")
    assert all(os.path.isfile(path) for path in paths)  # an add never touches its files


# ------------------------------------------------------------------ move
def _dest_has_a_copy(dest: Path) -> Callable[[], bool]:
    return lambda: dest.is_dir() and any(dest.iterdir())


def _source_purged(source: str) -> Callable[[], bool]:
    return lambda: not os.path.exists(source)


@pytest.mark.parametrize("phase", ["copying", "transaction", "purging"])
def test_move_killed_at_any_point(store, store_url, tmp_path, make_h5, phase):
    """No file both unrecorded and deleted; the call is all or nothing in the store."""
    sources = copy_files(make_h5(), tmp_path / "cand", MOVE_FILES, "c")
    store.add_candidates("EOS", sources)
    dest = tmp_path / "promoted"
    targets = [str(dest / os.path.basename(src)) for src in sources]
    before = snapshot_store(store.url)
    child = context().Process(target=_move, args=(store_url, sources, str(dest)))
    child.start()
    writing = in_transaction(store)
    condition = {"copying": _dest_has_a_copy(dest),
                 # the main transaction: after every copy is in place
                 "transaction": lambda: (dest.is_dir() and len(os.listdir(dest)) >= MOVE_FILES
                                         and writing()),
                 "purging": _source_purged(sorted(sources)[0])}[phase]
    try:
        waited = kill_when(child, condition, f"the move's {phase}")
    finally:
        getattr(writing, "close", lambda: None)()
    candidates, data = recorded(store, "candidates"), recorded(store, "data")
    LOGGER.info("move of %d files killed in its %s after %.1f s: %d candidates, %d data "
                "recorded; %d sources and %d copies on disk", MOVE_FILES, phase, waited,
                len(candidates), len(data), sum(map(os.path.isfile, sources)),
                sum(map(os.path.isfile, targets)))
    # All or nothing: every source still a candidate, or every copy in data.
    assert (candidates, data) in ((sorted(sources), []), ([], sorted(targets))), (
        len(candidates), len(data))
    if candidates:  # the store as before, but the killed move's copy intents
        after = snapshot_store(store.url)
        assert {**after, "ams_file_intent": []} == {**before, "ams_file_intent": []}
        # verify explains what the killed move left on disk, and repair removes it
        report = store.verify()
        left = sorted(str(p) for p in dest.iterdir()) if dest.is_dir() else []
        assert sorted(report.stray_copies) == left  # copies and partial copies
        assert report.ok == (not left)
        repaired = store.verify(repair=True)
        assert repaired.ok and sorted(repaired.cleaned) == sorted(report.stray_copies)
        assert not dest.is_dir() or list(dest.iterdir()) == []  # partial copies too
        assert snapshot_store(store.url) == before
    else:  # committed: verify finishes a purge the kill interrupted
        report = store.verify(repair=True)
        assert report.ok and not any(os.path.exists(src) for src in sources)
    # Nothing recorded is missing on disk; no source is both unrecorded and deleted.
    assert all(os.path.isfile(path) for path in candidates + data)
    for src, target in zip(sources, targets):
        assert os.path.isfile(src) or target in data, src
    if phase != "purging":
        assert candidates and all(os.path.isfile(src) for src in sources)
    else:
        assert data and not os.path.exists(sorted(sources)[0])
    # The store takes the next move (the stray copies of a killed copy phase aside).
    with AMSDataStore("app", store_url) as again:
        if candidates:
            shutil.rmtree(dest, ignore_errors=True)
            moved = again.move("EOS", dest, "candidates", "data", sources[:2])
            assert again.get_data_files("EOS") == moved
        else:
            assert again.add_data("EOS", [make_h5()]) == 2
