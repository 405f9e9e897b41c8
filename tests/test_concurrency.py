"""Many writers at once: distinct versions, nothing lost, no lock error surfaced.

SPEC "Versions": two writers adding at once (threads or processes, SQLite or
MariaDB) never receive the same auto-allocated version and never lose a file;
the same holds for removes and moves racing with adds. Every writer here is a
real process (``forkserver``, ``ams`` preloaded once so each child starts in
milliseconds) with its own :class:`AMSDataStore`, or a real thread sharing one.
Children return their results and every exception as text; a "database is
locked" or deadlock reaching a caller fails the test.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Sequence, Tuple

import sqlalchemy as sa

from ams import AMSDataStore

from conftest import copy_files

N_PROCESSES, ADDS_EACH = 4, 40
RACE_EACH = 25  # calls per child in the add/remove/move race
DEADLINE = 240  # seconds for a whole group of children; a hang fails instead of blocking CI


# ------------------------------------------------------------------ helpers

def context():
    """Children fork from a server that imported ams once (spawn would re-import it per child)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ams", "h5py", "kosh.utils", __name__])
    return ctx


class _ConflictCounter(logging.Handler):
    """Counts the adapter's "conflict with another writer" retries in a child."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "conflict with another writer" in record.getMessage():
            self.retries += 1


def _child(index: int, job: str, url: str, args: Tuple[Any, ...], barrier, results) -> None:
    """Run one job in a child process; report (index, 'ok', result, retries) or an error text."""
    counter = _ConflictCounter()
    logging.getLogger("ams").addHandler(counter)
    logging.getLogger("ams").setLevel(logging.INFO)
    try:
        with AMSDataStore("app", url) as store:  # a brand-new store for the open race
            barrier.wait(DEADLINE)
            result = JOBS[job](store, *args)
        results.put((index, "ok", result, counter.retries))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the test
        results.put((index, "error", f"{type(error).__name__}: {error}", counter.retries))


def _add_each(store: AMSDataStore, paths: Sequence[str]) -> List[Tuple[str, int]]:
    return [(path, store.add_data("EOS", [path])) for path in paths]


def _remove_each(store: AMSDataStore, paths: Sequence[str]) -> List[Dict[str, Any]]:
    return [store.remove_data("EOS", [path]).to_dict() for path in paths]


def _move_each(store: AMSDataStore, paths: Sequence[str], dest: str) -> List[Tuple[str, str, int]]:
    out = []
    for path in paths:
        (copy,) = store.move("EOS", dest, "candidates", "data", [path])
        version = store.find(filename=copy)[0]["version"]
        out.append((path, copy, version))
    return out


def _open_and_add(store: AMSDataStore, path: str) -> int:
    return store.add_data("EOS", [path])


JOBS: Dict[str, Callable[..., Any]] = {"add": _add_each, "remove": _remove_each,
                                       "move": _move_each, "open_and_add": _open_and_add}


def run_children(url: str, jobs: Sequence[Tuple[str, Tuple[Any, ...]]],
                 while_running: Callable[[], None] = lambda: None) -> Tuple[List[Any], int]:
    """Start one child per job, all released together; return their results (in job order)
    and the number of conflict retries they logged.

    ``while_running`` is called repeatedly in this process until every child has reported.
    """
    ctx = context()
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    children = [ctx.Process(target=_child, args=(index, job, url, args, barrier, results))
                for index, (job, args) in enumerate(jobs)]
    for child in children:
        child.start()
    reports = []
    deadline = time.monotonic() + DEADLINE
    try:
        while len(reports) < len(children):
            assert time.monotonic() < deadline, f"children still running after {DEADLINE} s"
            try:
                reports.append(results.get(timeout=0.01))
            except queue.Empty:
                while_running()
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
    errors = [text for _, status, text, _ in reports if status == "error"]
    assert not errors, errors
    assert [child.exitcode for child in children] == [0] * len(children)
    return ([result for _, _, result, _ in sorted(reports, key=lambda r: r[0])],
            sum(retries for *_, retries in reports))


def count_rows(url, sql: str, **params) -> int:
    engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()


# ------------------------------------------------------------------ processes
def test_processes_open_a_new_store_at_once(store_url, backend, tmp_path, make_h5):
    """Five processes open a store that does not exist yet (tables, Kosh's records) and add."""
    paths = copy_files(make_h5(), tmp_path / "new", 5, "new")
    if backend == "sqlite":
        assert not os.path.exists(store_url.split("sqlite:///", 1)[1])
    versions, _ = run_children(store_url, [("open_and_add", (path,)) for path in paths])
    assert sorted(versions) == [1, 2, 3, 4, 5]
    with AMSDataStore("app", store_url) as store:
        assert store.get_data_versions("EOS", associate_files=True) == {
            version: [path] for path, version in zip(paths, versions)}
        url = store.url
    # One store-info record and one record per Kosh user, however many opened at once.
    assert count_rows(url, "SELECT COUNT(*) FROM Record WHERE type = '__kosh_storeinfo__'") == 1
    users = count_rows(url, "SELECT COUNT(*) FROM Record WHERE type = 'user'")
    assert users == len({os.environ.get("USER", "default"), "anonymous"})
    assert count_rows(url, "SELECT COUNT(*) FROM Record WHERE type = 'kosh_ensemble'") == 1


def test_processes_adding_auto_versions(store_url, tmp_path, make_h5):
    """4 processes x 40 single-file adds to one entry: 160 distinct versions, 160 files."""
    with AMSDataStore("app", store_url) as store:
        url = store.url
    paths = copy_files(make_h5(), tmp_path / "adds", N_PROCESSES * ADDS_EACH, "add")
    jobs = [("add", (paths[k * ADDS_EACH:(k + 1) * ADDS_EACH],)) for k in range(N_PROCESSES)]
    started = time.monotonic()
    results, retries = run_children(store_url, jobs)
    elapsed = time.monotonic() - started
    got = [pair for result in results for pair in result]
    versions = [version for _, version in got]
    total = N_PROCESSES * ADDS_EACH
    assert len(got) == total
    assert sorted(versions) == list(range(1, total + 1)), Counter(versions).most_common(3)
    for result in results:  # each writer saw its own versions grow
        assert [v for _, v in result] == sorted(v for _, v in result)
    with AMSDataStore("app", store_url) as store:
        assert store.get_data_versions("EOS", associate_files=True) == {
            version: [path] for path, version in got}
        assert len(store.find(domain_name="EOS")) == total
    assert count_rows(url, "SELECT COUNT(*) FROM Record WHERE type = 'file'") == total
    assert count_rows(url, "SELECT COUNT(*) FROM Record WHERE type = 'dataset'") == total
    logging.getLogger(__name__).info("%d adds by %d processes in %.1f s, %d retries",
                                     total, N_PROCESSES, elapsed, retries)


def test_adds_race_removes_and_moves(store_url, tmp_path, make_h5):
    """2 adders, 1 remover and 1 mover (25 single-file calls each) on one domain.

    Meanwhile this process reads: every snapshot must show each promoted file
    exactly once (as its candidate or as its copy in data), never neither or both.
    """
    template = make_h5()
    keeper = copy_files(template, tmp_path / "keep", 1, "keep")[0]
    doomed = copy_files(template, tmp_path / "doomed", RACE_EACH, "rm")
    candidates = copy_files(template, tmp_path / "cand", RACE_EACH, "cand")
    added = copy_files(template, tmp_path / "adds", 2 * RACE_EACH, "add")
    dest = tmp_path / "promoted"
    with AMSDataStore("app", store_url) as store:
        assert store.add_data("EOS", [keeper] + doomed) == 1
        assert store.add_candidates("EOS", candidates) == 1
        promoted = {src: str(dest / os.path.basename(src)) for src in candidates}
        snapshots = Counter()

        def check_snapshot() -> None:
            seen = {(e["entry_type"], e["filename"]) for e in store.find(domain_name="EOS")}
            for src, copy in promoted.items():
                state = (("candidates", src) in seen, ("data", copy) in seen)
                snapshots[state] += 1
                assert state in ((True, False), (False, True)), (src, state)

        results, retries = run_children(store_url, [
            ("add", (added[:RACE_EACH],)), ("add", (added[RACE_EACH:],)),
            ("remove", (doomed,)), ("move", (candidates, str(dest)))], check_snapshot)
        first_adds, second_adds, removes, moves = results
        add_versions = [v for _, v in first_adds + second_adds]
        move_versions = [v for _, _, v in moves]
        # Every add and every move got its own new data version, after version 1.
        assert sorted(add_versions + move_versions) == list(range(2, 2 + 3 * RACE_EACH))
        assert {copy for _, copy, _ in moves} == set(promoted.values())
        for report in removes:
            assert len(report["removed"]) == 1 and report["purged"] == report["removed"]
            assert report["not_found"] == []
        data = store.get_data_files("EOS")
        expected = {keeper} | set(added) | set(promoted.values())
        assert sorted(data) == sorted(expected) and len(data) == 1 + 3 * RACE_EACH
        assert store.get_candidate_versions("EOS") == []
        versions = store.get_data_versions("EOS", associate_files=True)
        assert versions[1] == [keeper]
        assert all(len(files) == 1 for files in versions.values())
        assert not any(os.path.exists(p) for p in doomed + candidates)
        assert all(os.path.isfile(p) for p in expected)
        assert sum(snapshots.values()) > 0


# ------------------------------------------------------------------ threads
def test_threads_share_one_store(store, tmp_path, make_h5):
    """An AMSDataStore may be shared by threads: 4 threads x 20 adds, one reader thread."""
    threads_count, each = 4, 20
    paths = copy_files(make_h5(), tmp_path / "threads", threads_count * each, "t")
    got: List[Tuple[str, int]] = []
    errors: List[str] = []
    done = threading.Event()
    reads = Counter()

    def add(chunk: Sequence[str]) -> None:
        try:
            for path in chunk:
                got.append((path, store.add_data("EOS", [path])))
        except BaseException as error:  # noqa: BLE001
            errors.append(repr(error))

    def read() -> None:
        try:
            while not done.is_set():
                versions = store.get_data_versions("EOS", associate_files=True)
                assert all(len(files) == 1 for files in versions.values())
                reads["n"] += 1
        except BaseException as error:  # noqa: BLE001
            errors.append(repr(error))

    writers = [threading.Thread(target=add, args=(paths[k * each:(k + 1) * each],))
               for k in range(threads_count)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(DEADLINE)
    done.set()
    reader.join(DEADLINE)
    assert not errors, errors
    assert sorted(v for _, v in got) == list(range(1, threads_count * each + 1))
    assert store.get_data_versions("EOS", associate_files=True) == {v: [p] for p, v in got}
    assert reads["n"] > 0
