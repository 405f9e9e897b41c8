"""Issue 12, "Files as safe as the rows": one section per numbered item.

Every data loss the issue found is on the *file* side (copies and deletions
outside the transaction). Each test below fails on the behaviour the issue
describes and passes once file effects follow the transaction. Races run in
real processes (``multiprocessing`` "forkserver", as ``tests/test_kill.py``);
windows are widened with the catalogue's test hooks
(``store._catalog.hooks[name] = callable``: ``after_copy``, ``before_commit``,
``before_purge``) or with barriers in the test's own code, never with sleeps
in the library. ENOSPC and read-only folders use a real tmpfs (mounting needs
root; without it those tests are skipped with the reason).

Item 9 (the HDF5 check agrees with h5py) is covered by ``tests/test_formats.py``.
The last section kills a remove between its commit and its purge and checks
that ``verify`` explains and finishes it (``tests/test_kill.py`` covers moves).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from ams import AMSDataStore, AMSModelDescr, UQType
from ams.errors import (
    AMSStoreError,
    DestinationExistsError,
    FileOperationError,
    InvalidArgumentError,
    InvalidMetadataError,
    LineageError,
    UnsafeFilesystemError,
)

DEADLINE = 60  # seconds any child may take to reach the awaited point
RACE_TRIALS = 10


# ======================================================================= helpers
def context():
    """Children fork from a server that imported ams once (fast to start, killable alone)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ams", "h5py", __name__])
    return ctx


def read_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def registered(store: AMSDataStore, entry_type: str, domain: str = "EOS") -> List[str]:
    return sorted(store.get_files(domain, entry_type))


def all_registered_present(store: AMSDataStore, domain: str = "EOS") -> List[str]:
    """Registered files of every entry that are missing on disk (must be empty)."""
    return [path for entry in ("data", "candidates", "models")
            for path in store.get_files(domain, entry) if not os.path.isfile(path)]


def leftovers(folder) -> List[str]:
    """Temporary copies (``.<name>.<call>.ams-part``) left in ``folder``."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".ams-part"))


def model_descr(path: str, threshold=0.5) -> AMSModelDescr:
    return AMSModelDescr(path, threshold, UQType.Random)


class Mounts:
    """tmpfs filesystems mounted for one test, unmounted at teardown (needs root)."""

    def __init__(self) -> None:
        self.mounted: List[str] = []

    def tmpfs(self, folder: Path, size: str = "200k") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (this test runs as uid "
                        f"{os.geteuid()})")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(str(folder))
        return folder

    @staticmethod
    def read_only(folder: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    def unmount_all(self) -> None:
        for folder in reversed(self.mounted):
            if subprocess.run(["umount", folder], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", folder], capture_output=True)
        self.mounted.clear()


@pytest.fixture
def mounts():
    handler = Mounts()
    try:
        yield handler
    finally:
        handler.unmount_all()


# ======================================================================= item 1
def _racing_move(url: str, source: str, dest: str, barrier, release, results, name: str) -> None:
    """One side of the race: pass the destination check, wait for the other, copy, commit.

    The barrier (in the test's code, around the facade's destination check)
    makes both moves pass "destination does not exist" before either copies,
    as in the issue. ``after_copy`` then holds this move between its copy and
    its commit until the parent says so (after the other move ended), which
    is when the old clean-up deleted the winner's copy.
    """
    import ams._validate as validate
    checked = validate.move_targets

    def check_then_meet(sources, dest_root):
        targets = checked(sources, dest_root)
        barrier.wait(DEADLINE)
        return targets
    validate.move_targets = check_then_meet
    try:
        with AMSDataStore("app", url) as store:
            store._catalog.hooks["after_copy"] = lambda: release.wait(DEADLINE)
            store.move("EOS", dest, "candidates", "data", [source])
        results.put((name, "ok", True, ""))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        results.put((name, type(error).__name__, isinstance(error, InvalidArgumentError),
                     str(error)))


def test_item1_concurrent_moves_same_name_never_lose_a_file(store, store_url, tmp_path, make_h5):
    """Item 1: two processes move different ``run.h5`` into one folder, 10 times over.

    Exactly one succeeds; the other gets DestinationExistsError (an
    InvalidArgumentError); the winner's copy is registered, present and
    byte-identical to its source; the loser's source is still a registered,
    untouched candidate; no registered file is missing on disk.
    """
    ctx = context()
    trials = []
    for trial in range(RACE_TRIALS):
        sources = {side: make_h5("run.h5", directory=tmp_path / f"t{trial}{side}",
                                 seed=100 * trial + index)
                   for index, side in enumerate("ab")}
        trials.append(sources)
    store.add_candidates("EOS", [src for sources in trials for src in sources.values()])
    for trial, sources in enumerate(trials):
        dest = tmp_path / f"dest{trial}"
        target = str(dest / "run.h5")
        contents = {side: read_bytes(src) for side, src in sources.items()}
        assert contents["a"] != contents["b"]
        barrier, release, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
        children = {side: ctx.Process(target=_racing_move,
                                      args=(store_url, src, str(dest), barrier, release,
                                            results, side))
                    for side, src in sources.items()}
        for child in children.values():
            child.start()
        started = time.monotonic()
        while all(child.is_alive() for child in children.values()):
            if time.monotonic() - started > DEADLINE:
                break
            time.sleep(0.01)
        release.set()  # the first one ended (the loser): let the other commit
        for child in children.values():
            child.join(DEADLINE)
            assert child.exitcode == 0, (trial, child.exitcode)
        outcome = {}
        for _ in children:
            name, kind, is_invalid, message = results.get(timeout=DEADLINE)
            outcome[name] = (kind, is_invalid, message)
        winners = [side for side, (kind, _i, _m) in outcome.items() if kind == "ok"]
        assert len(winners) == 1, (trial, outcome)
        (winner,) = winners
        loser = "b" if winner == "a" else "a"
        kind, is_invalid, message = outcome[loser]
        assert kind == "DestinationExistsError" and is_invalid, (trial, outcome)
        assert target in message
        # the winner's copy: registered, present, its source's bytes; its source purged
        data = registered(store, "data")
        assert target in data
        assert read_bytes(target) == contents[winner], f"trial {trial}: copy differs"
        assert not os.path.exists(sources[winner])
        # the loser changed nothing: its source is still a candidate, untouched
        assert sources[loser] in registered(store, "candidates")
        assert read_bytes(sources[loser]) == contents[loser]
        assert sorted(os.listdir(dest)) == ["run.h5"], os.listdir(dest)  # no partial copies
        assert all_registered_present(store) == [], trial
    report = store.verify()
    assert report.ok and not report.stray_copies and not report.unpurged, report
    assert len(registered(store, "data")) == RACE_TRIALS
    assert len(registered(store, "candidates")) == RACE_TRIALS


# ======================================================================= item 2
def test_item2_purge_keeps_a_path_registered_again_after_the_commit(store, store_url, make_h5):
    """Item 2: a path registered again (by another store object) between the remove's
    commit and its purge is not deleted, and the report lists it in ``kept``."""
    path, other_path = make_h5(), make_h5()
    content = read_bytes(path)
    store.add_data("EOS", [path, other_path])
    registered_again = []

    def register_again() -> None:  # after the commit, before the purge
        with AMSDataStore("app", store_url) as other:
            registered_again.append(other.add_data("EOS", [path]))
    store._catalog.hooks["before_purge"] = register_again
    report = store.remove_data("EOS", [path, other_path], purge=True)
    assert registered_again == [2]
    assert report.removed == sorted([path, other_path])
    assert report.kept == [path]
    assert report.purged == [other_path] and not os.path.exists(other_path)
    assert os.path.isfile(path) and read_bytes(path) == content
    assert registered(store, "data") == [path]
    assert store.verify().ok


# ======================================================================= item 3
def test_item3_purge_does_not_follow_a_folder_swapped_for_a_symlink(store, tmp_path, make_h5):
    """Item 3: register ``scratch/run.h5``, replace ``scratch`` by a symlink to
    ``precious/`` holding a ``run.h5`` (same bytes, so the checksum alone would not
    save it): the purge leaves ``precious/run.h5`` and names the path in purge_errors."""
    path = make_h5("run.h5", directory=tmp_path / "scratch")
    store.add_data("EOS", [path])
    precious = tmp_path / "precious"
    precious.mkdir()
    shutil.copy2(path, precious / "run.h5")  # byte-identical: same fast_sha
    shutil.rmtree(tmp_path / "scratch")
    os.symlink(precious, tmp_path / "scratch")
    before = read_bytes(precious / "run.h5")
    # By version: the path given as a filename would itself resolve to precious/.
    report = store.remove_data("EOS", None, version=1, purge=True)
    assert report.removed == [path]
    assert (precious / "run.h5").is_file() and read_bytes(precious / "run.h5") == before
    assert report.purged == []
    assert path in report.purge_errors, report
    assert "symlink" in report.purge_errors[path] or "resolve" in report.purge_errors[path]


# ======================================================================= item 4
def test_item4_exception_after_the_move_committed_keeps_the_copies(store, tmp_path, make_h5):
    """Item 4: an exception after the move's commit (hook ``before_purge`` raising)
    propagates, but the copies stay registered and present; the sources stay on disk
    for ``verify`` to name and ``verify(repair=True)`` to purge."""
    sources = [make_h5(), make_h5()]
    contents = [read_bytes(src) for src in sources]
    store.add_candidates("EOS", sources)
    dest = tmp_path / "promoted"

    def fail() -> None:
        raise RuntimeError("boom after the commit")
    store._catalog.hooks["before_purge"] = fail
    with pytest.raises(RuntimeError, match="boom after the commit"):
        store.move("EOS", dest, "candidates", "data", sources)
    targets = sorted(str(dest / os.path.basename(src)) for src in sources)
    assert registered(store, "data") == targets
    assert registered(store, "candidates") == []
    for target, content in zip(targets, contents):
        assert os.path.isfile(target) and read_bytes(target) == content
    assert all(os.path.isfile(src) for src in sources)  # not purged yet
    del store._catalog.hooks["before_purge"]
    report = store.verify()
    assert report.unpurged == sorted(sources) and report.stray_copies == []
    repaired = store.verify(repair=True)
    assert repaired.cleaned == sorted(sources)
    assert not any(os.path.exists(src) for src in sources)
    assert all(os.path.isfile(target) for target in targets)
    assert store.verify().ok


# ======================================================================= item 5
def test_item5_disk_full_leaves_no_partial_copy_and_no_folders(store, tmp_path, make_h5,
                                                              unchanged, mounts):
    """Item 5: on a 200 KiB tmpfs, move a small file and one that does not fit into
    ``new/deeper``: FileOperationError (an OSError), no partial copy, no folder made by
    the call left, store and files unchanged."""
    small = mounts.tmpfs(tmp_path / "small", "200k")
    fits = make_h5("a.h5", rows=4)
    too_big = make_h5("b.h5", rows=20000)  # ~480 KB
    store.add_candidates("EOS", [fits, too_big])
    guard = unchanged()
    dest = small / "new" / "deeper"
    with pytest.raises(FileOperationError) as info:
        store.move("EOS", dest, "candidates", "data", [fits, too_big])
    error = info.value
    assert isinstance(error, AMSStoreError) and isinstance(error, OSError)
    assert "b.h5" in str(error)
    assert os.listdir(small) == [], os.listdir(small)  # no copy, no partial copy, no folder
    guard.check()
    assert store.verify().ok


def test_item5_destination_made_by_someone_else_after_the_checks(store, tmp_path, make_h5,
                                                                 unchanged):
    """Item 5: a destination created by someone else after the checks (hook after the
    first copy creates the second target) is an error and is never overwritten; the
    first copy is removed, the store unchanged."""
    first, second = make_h5("a.h5"), make_h5("b.h5")
    store.add_candidates("EOS", [first, second])
    dest = tmp_path / "dest"
    dest.mkdir()
    theirs = dest / "b.h5"
    guard = unchanged()

    def someone_else_writes() -> None:
        if not theirs.exists():
            theirs.write_bytes(b"someone else's file")
    store._catalog.hooks["after_copy"] = someone_else_writes
    with pytest.raises(DestinationExistsError) as info:
        store.move("EOS", dest, "candidates", "data", [first, second])
    assert isinstance(info.value, InvalidArgumentError) and str(theirs) in str(info.value)
    assert read_bytes(theirs) == b"someone else's file"
    assert sorted(os.listdir(dest)) == ["b.h5"]  # our a.h5 copy and every partial copy gone
    theirs.unlink()
    guard.check()


# ======================================================================= item 6
def test_item6_remove_without_any_filter_refuses(store, make_h5, unchanged):
    """Item 6: ``remove_data("EOS", None)`` with no version and no metadata raises
    InvalidArgumentError naming remove_all and removes nothing (also remove_models,
    remove_candidates, purge=False); ``remove_all=True`` removes (and purges) all."""
    data = [make_h5(), make_h5()]
    store.add_data("EOS", data[:1])
    store.add_data("EOS", data[1:])
    candidate = make_h5()
    store.add_candidates("EOS", [candidate])
    guard = unchanged()
    calls = [lambda: store.remove_data("EOS", None),
             lambda: store.remove_data("EOS", None, purge=False),
             lambda: store.remove_candidates("EOS", None),
             lambda: store.remove_models("EOS", None)]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as info:
            call()
        assert "remove_all" in str(info.value)
    guard.check()
    report = store.remove_data("EOS", None, remove_all=True)
    assert report.removed == sorted(data) and report.purged == sorted(data)
    assert not any(os.path.exists(path) for path in data)
    assert registered(store, "data") == [] and registered(store, "candidates") == [candidate]


# ======================================================================= item 7
def test_item7_versions_are_never_reused(store, store_url, make_h5):
    """Item 7: after removing all of the highest version, the next automatic version is
    higher still; also after reopening the store, and after removing everything."""
    assert store.add_data("EOS", [make_h5()]) == 1
    assert store.add_data("EOS", [make_h5()]) == 2
    store.remove_data("EOS", None, version=2, purge=False)
    assert store.get_data_versions("EOS") == [1]
    assert store.add_data("EOS", [make_h5()]) == 3
    store.remove_data("EOS", None, version=3)
    with AMSDataStore("app", store_url) as reopened:
        assert reopened.add_data("EOS", [make_h5()]) == 4
        reopened.remove_data("EOS", None, remove_all=True)
        assert reopened.get_data_versions("EOS") == []
    with AMSDataStore("app", store_url) as reopened:
        assert reopened.add_data("EOS", [make_h5()]) == 5
        # models and candidates have their own marks
        assert reopened.add_candidates("EOS", [make_h5()]) == 1


# ======================================================================= item 8
def test_item8_remove_latest_removes_only_the_highest_version(store, make_h5):
    """Item 8: ``version="latest"`` removes the matches of the highest version only."""
    files = {version: [make_h5(), make_h5()] for version in (1, 2, 3)}
    for version in (1, 2, 3):
        assert store.add_data("EOS", files[version], metadata={"run": 7}) == version
    report = store.remove_data("EOS", None, version="latest", purge=False)
    assert report.removed == sorted(files[3])
    assert store.get_data_versions("EOS") == [1, 2]
    # with a metadata filter: the highest version among the matches
    store.add_data("EOS", [make_h5()], metadata={"run": 8})  # version 4, does not match
    report = store.remove_data("EOS", None, version="latest", metadata={"run": 7}, purge=False)
    assert report.removed == sorted(files[2])
    assert store.get_data_versions("EOS") == [1, 4]


def test_item8_latest_is_resolved_inside_the_write_transaction(store, store_url, make_h5,
                                                               monkeypatch):
    """Item 8: another writer adds a newer version after the call started but before
    its write transaction: "latest" is that newer version, never the older one."""
    old = [make_h5(), make_h5()]
    store.add_data("EOS", old)
    newer = [make_h5()]
    catalog = store._catalog
    real_write = catalog._write
    added = []

    def write(operation, work):
        if operation == "remove" and not added:  # just before the remove's transaction
            with AMSDataStore("app", store_url) as other:
                added.append(other.add_data("EOS", newer))
        return real_write(operation, work)
    monkeypatch.setattr(catalog, "_write", write)
    report = store.remove_data("EOS", None, version="latest", purge=False)
    assert added == [2]
    assert report.removed == newer, "removed an older version than the latest one"
    assert registered(store, "data") == sorted(old)


# ======================================================================= item 10
def test_item10_nul_byte_in_model_path_is_an_ams_error():
    """Item 10: ``AMSModelDescr("a\\x00b", ...)`` raises an AMSStoreError."""
    with pytest.raises(Exception) as info:
        AMSModelDescr("a\x00b", 0.5, UQType.Random)
    assert isinstance(info.value, AMSStoreError), repr(info.value)
    assert isinstance(info.value, ValueError)


def test_item10_huge_threshold_is_an_ams_error(store, make_model, unchanged):
    """Item 10: ``threshold=10**400`` (via AMSModelDescr, then add_model) is an AMSStoreError."""
    path = make_model()
    guard = unchanged()
    with pytest.raises(Exception) as info:
        store.add_model("EOS", AMSModelDescr(path, 10 ** 400, UQType.Random), 0.1, 0.1)
    assert isinstance(info.value, AMSStoreError), repr(info.value)
    guard.check()


def test_item10_numpy_array_as_versions_is_an_ams_error(store, make_h5):
    """Item 10: ``get_files(d, "data", numpy.array([1, 2]))`` raises an AMSStoreError."""
    import numpy
    store.add_data("EOS", [make_h5()])
    with pytest.raises(Exception) as info:
        store.get_files("EOS", "data", numpy.array([1, 2]))
    assert isinstance(info.value, AMSStoreError), repr(info.value)


def test_item10_move_into_a_read_only_folder_is_an_ams_error(store, tmp_path, make_h5,
                                                            unchanged, mounts):
    """Item 10: a move into a read-only folder (a tmpfs remounted read-only: root ignores
    permission bits), existing or to be made, raises FileOperationError (an
    AMSStoreError and an OSError) and changes nothing."""
    frozen = mounts.tmpfs(tmp_path / "frozen", "1m")
    (frozen / "existing").mkdir()
    mounts.read_only(frozen)
    source = make_h5()
    store.add_candidates("EOS", [source])
    guard = unchanged()
    for dest in (frozen / "existing", frozen / "new" / "deeper"):
        with pytest.raises(Exception) as info:
            store.move("EOS", dest, "candidates", "data", [source])
        assert isinstance(info.value, AMSStoreError), repr(info.value)
        assert isinstance(info.value, OSError) and isinstance(info.value, FileOperationError)
        guard.check()
    assert os.listdir(frozen) == ["existing"] and os.listdir(frozen / "existing") == []


def test_item10_new_sqlite_store_under_a_read_only_folder_is_an_ams_error(tmp_path, mounts):
    """Item 10: ``open()`` of a new SQLite store in a read-only folder (or below one) is
    an AMSStoreError, and creates nothing."""
    frozen = mounts.tmpfs(tmp_path / "frozen", "1m")
    mounts.read_only(frozen)
    for location in (frozen / "ams.db", frozen / "sub" / "ams.db"):
        with pytest.raises(Exception) as info:
            AMSDataStore("app", f"sqlite:///{location}").open()
        assert isinstance(info.value, AMSStoreError), repr(info.value)
        assert str(frozen) in str(info.value)
    assert os.listdir(frozen) == []


def _damaged_store(tmp_path, make_h5, damage: Callable[[bytearray], None]):
    """A SQLite store of 6 versions x 10 files, closed, then damaged in place."""
    db = tmp_path / "damaged" / "ams.db"
    paths = []
    with AMSDataStore("app", f"sqlite:///{db}") as store:
        for version in range(6):
            batch = [make_h5(directory=tmp_path / "dfiles") for _ in range(10)]
            store.add_data("EOS", batch, metadata={"run": version, "note": "x" * 50})
            paths += batch
    content = bytearray(db.read_bytes())
    damage(content)
    db.write_bytes(bytes(content))
    return db, paths


def _damaged_calls(store, paths) -> Dict[str, Callable[[], object]]:
    return {"find": lambda: store.find("EOS"),
            "search": lambda: store.search("EOS", "data", None, {"run": 3}),
            "verify": lambda: store.verify(),
            "remove": lambda: store.remove_data("EOS", [paths[33]], purge=False)}


def test_item10_damaged_record_in_sqlite_is_one_clear_ams_error(tmp_path, make_h5):
    """Item 10: a SQLite file whose bytes are overwritten in the middle of a record's
    JSON: find/search/verify/remove each raise an AMSStoreError naming the file
    (never a JSON decoder's error)."""
    def overwrite_json(content: bytearray) -> None:
        hits = [i for i in range(len(content)) if content.startswith(b'"fast_sha"', i)]
        middle = hits[len(hits) // 2]
        content[middle:middle + 10] = b"\x01garbage{["
    db, paths = _damaged_store(tmp_path, make_h5, overwrite_json)
    with AMSDataStore("app", f"sqlite:///{db}") as store:
        for name, call in _damaged_calls(store, paths).items():
            with pytest.raises(Exception) as info:
                call()
            assert isinstance(info.value, AMSStoreError), (name, repr(info.value))
            assert str(db) in str(info.value), (name, str(info.value))


def test_item10_damaged_page_in_sqlite_never_gives_a_foreign_error(tmp_path, make_h5):
    """Item 10: 3900 bytes overwritten in the middle page of a SQLite store: each call
    either raises an AMSStoreError naming the file, or (when it does not read that
    page) returns the right answer; at least one of them notices the damage."""
    def overwrite_page(content: bytearray) -> None:
        middle = len(content) // 2 // 4096 * 4096
        content[middle + 100:middle + 4000] = b"\xa5" * 3900
    db, paths = _damaged_store(tmp_path, make_h5, overwrite_page)
    right = {"find": lambda got: len(got) == 60,
             "search": lambda got: sorted(e["filename"] for e in got) == sorted(paths[30:40]),
             "verify": lambda got: got.checked == 60,
             "remove": lambda got: got.removed == [paths[33]]}
    raised = []
    with AMSDataStore("app", f"sqlite:///{db}") as store:
        for name, call in _damaged_calls(store, paths).items():
            try:
                result = call()
            except Exception as error:  # noqa: BLE001 - checked just below
                assert isinstance(error, AMSStoreError), (name, repr(error))
                assert str(db) in str(error), (name, str(error))
                raised.append(name)
            else:
                assert right[name](result), (name, result)
    assert raised, "no call noticed the damaged page"


# ======================================================================= item 11
def test_item11_search_in_with_5000_values(store, make_h5):
    """Item 11: ``{"run": {"in": list(range(5000))}}`` works and returns the right entries."""
    expected = []
    for run in (0, 3, 4999):
        paths = [make_h5(), make_h5()]
        store.add_data("EOS", paths, metadata={"run": run})
        expected += paths
    for run in (5000, 7000, -1):
        store.add_data("EOS", [make_h5()], metadata={"run": run})
    found = store.search("EOS", "data", None, {"run": {"in": list(range(5000))}})
    assert sorted(entry["filename"] for entry in found) == sorted(expected)
    assert sorted({entry["metadata"]["run"] for entry in found}) == [0, 3, 4999]
    found = store.search(metadata={"run": {"in": list(range(5000, 10000))}})
    assert len(found) == 2


# ======================================================================= item 12
def test_item12_trained_on_keys_are_reserved_on_every_entry(store, make_h5, make_model,
                                                          unchanged):
    """Item 12: ``trained_on_files`` / ``trained_on_data_versions`` in user metadata are
    refused on data, candidates and models alike."""
    target = make_h5()
    store.add_data("EOS", [target])
    new, model = make_h5(), make_model()
    guard = unchanged()
    calls = [
        lambda: store.add_data("EOS", [new], metadata={"trained_on_files": [target]}),
        lambda: store.add_data("EOS", [new], metadata={"trained_on_data_versions": [1]}),
        lambda: store.add_candidates("EOS", [new], metadata={"trained_on_files": [target]}),
        lambda: store.add_model("EOS", model_descr(model), 0.1, 0.1,
                                metadata={"trained_on_files": [target]}),
    ]
    for call in calls:
        with pytest.raises(InvalidMetadataError, match="trained_on"):
            call()
    guard.check()


def test_item12_lineage_guard_ignores_other_applications(store_url, tmp_path, make_h5,
                                                        make_model):
    """Item 12: application B's model was trained on a file B later dropped and A
    registered; A's ``remove_data(purge=True)`` of it is not refused (the guard looks
    only at A's models), while A's own lineage still guards A's training files."""
    shared, own_training = make_h5(), make_h5()
    with AMSDataStore("B", store_url) as app_b:
        assert app_b.add_data("EOS", [shared]) == 1
        app_b.add_model("EOS", model_descr(make_model()), 0.1, 0.1, trained_on=[1])
        app_b.remove_data("EOS", [shared], purge=False)
        assert shared in app_b.model_lineage("EOS", "latest")["missing"]
    with AMSDataStore("A", store_url) as app_a:
        app_a.add_data("EOS", [shared])
        report = app_a.remove_data("EOS", [shared], purge=True)
        assert report.purged == [shared] and not os.path.exists(shared)
        # A's own models still guard A's files, and the refusal names only A's model
        version = app_a.add_data("EOS", [own_training])
        model = make_model()
        app_a.add_model("EOS", model_descr(model), 0.1, 0.1, trained_on=[version])
        with pytest.raises(LineageError) as info:
            app_a.remove_data("EOS", [own_training], purge=True)
        assert info.value.models == [model] and os.path.isfile(own_training)
    with AMSDataStore("B", store_url) as app_b:
        assert len(app_b.get_model_files("EOS")) == 1  # B untouched


# ======================================================================= item 13
def test_item13_refuse_network_filesystem(tmp_path, monkeypatch):
    """Item 13: NFS's magic number is refused with an error recommending MariaDB;
    ``AMS_ALLOW_NETWORK_FS=1`` allows it; a local filesystem is allowed."""
    from ams.catalog.filesystems import refuse_network_filesystem
    monkeypatch.delenv("AMS_ALLOW_NETWORK_FS", raising=False)
    path = str(tmp_path / "ams.db")
    with pytest.raises(UnsafeFilesystemError) as info:
        refuse_network_filesystem(path, magic=0x6969)
    assert "MariaDB" in str(info.value) and "NFS" in str(info.value)
    assert isinstance(info.value, AMSStoreError)
    refuse_network_filesystem(path)  # tmp_path is local
    monkeypatch.setenv("AMS_ALLOW_NETWORK_FS", "1")
    refuse_network_filesystem(path, magic=0x6969)


def test_item13_open_on_a_network_filesystem(store_url, backend, tmp_path, monkeypatch):
    """Item 13: with statfs saying NFS, a writable SQLite open refuses (creating
    nothing), a read-only open of an existing store and ``allow_network_filesystem=True``
    work; MariaDB stores are not concerned."""
    import ams.catalog.filesystems as filesystems
    monkeypatch.delenv("AMS_ALLOW_NETWORK_FS", raising=False)
    with AMSDataStore("app", store_url):
        pass  # the store exists
    monkeypatch.setattr(filesystems, "filesystem_magic", lambda path: 0x6969)
    if backend == "mariadb":
        with AMSDataStore("app", store_url) as opened:
            assert opened.get_data_versions("EOS") == []
        return
    with pytest.raises(UnsafeFilesystemError, match="MariaDB"):
        AMSDataStore("app", store_url).open()
    fresh = tmp_path / "elsewhere" / "ams.db"
    with pytest.raises(UnsafeFilesystemError):
        AMSDataStore("app", f"sqlite:///{fresh}").open()
    assert not fresh.parent.exists()
    with AMSDataStore("app", store_url, read_only=True) as reader:
        assert reader.get_data_versions("EOS") == []
    with AMSDataStore("app", store_url, allow_network_filesystem=True) as writer:
        assert writer.get_data_versions("EOS") == []
    monkeypatch.setenv("AMS_ALLOW_NETWORK_FS", "1")
    with AMSDataStore("app", store_url) as writer:
        assert writer.get_data_versions("EOS") == []


# ======================================================================= kill during purge
def _remove_then_hang(url: str, paths: List[str], ready) -> None:
    """Remove with purge; after the commit, before the purge, wait to be killed."""
    with AMSDataStore("app", url) as store:
        def hang() -> None:
            ready.set()
            threading.Event().wait()  # until SIGKILL
        store._catalog.hooks["before_purge"] = hang
        store.remove_data("EOS", paths, purge=True)


def test_kill_between_remove_commit_and_purge_then_verify(store, store_url, make_h5):
    """A remove killed after its commit, before its purge: ``verify`` names the
    unpurged files; ``verify(repair=True)`` deletes them, except one registered again
    meanwhile (kept and never deleted)."""
    paths = sorted(make_h5() for _ in range(3))
    keep = make_h5()
    store.add_data("EOS", paths + [keep])
    ctx = context()
    ready = ctx.Event()
    child = ctx.Process(target=_remove_then_hang, args=(store_url, paths, ready))
    child.start()
    try:
        assert ready.wait(DEADLINE), f"the child did not reach the purge (exit {child.exitcode})"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(DEADLINE)
    assert child.exitcode == -signal.SIGKILL
    assert registered(store, "data") == [keep]
    assert all(os.path.isfile(path) for path in paths)
    report = store.verify()
    assert report.unpurged == paths and not report.ok
    store.add_data("EOS", [paths[0]])  # registered again before the repair
    assert store.verify().unpurged == paths[1:]
    repaired = store.verify(repair=True)
    assert repaired.cleaned == paths[1:]
    assert os.path.isfile(paths[0]) and not any(os.path.exists(p) for p in paths[1:])
    final = store.verify()
    assert final.ok and final.unpurged == [] and final.stray_copies == []
