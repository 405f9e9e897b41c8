"""``AMSDataStore(..., read_only=True)``: for analysis jobs and notebooks.

Every write method raises :class:`ams.errors.ReadOnlyStoreError` (a
``RuntimeError``) before touching anything; reads work while another process
writes; opening read-only a store that does not exist is a clear error that
creates nothing (no SQLite file or folder, no MariaDB database or table).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from typing import Any, Callable, Dict, List

import pytest

from ams import AMSDataStore, AMSModelDescr, UQType
from ams.errors import BackendError, ReadOnlyStoreError

from conftest import mariadb_admin, mariadb_url, require_mariadb

WRITES_BY_OTHER = 30


@pytest.fixture
def filled(store, make_h5, make_model):
    paths = {"data": make_h5(), "cand": make_h5(), "model": make_model(), "new": make_h5(),
             "new_model": make_model()}
    store.add_data("EOS", [paths["data"]], metadata={"cycle": 1})
    store.add_candidates("EOS", [paths["cand"]])
    store.add_model("EOS", AMSModelDescr(paths["model"], 0.5, UQType.Random), 0.1, 0.2)
    return paths


# Every write of the public API, with arguments that would succeed on a writable store.
WRITES: Dict[str, Callable[[AMSDataStore, Dict[str, str], Any], Any]] = {
    "add_data": lambda s, p, t: s.add_data("EOS", [p["new"]]),
    "add_candidates": lambda s, p, t: s.add_candidates("EOS", [p["new"]], version=1),
    "add_model": lambda s, p, t: s.add_model(
        "EOS", AMSModelDescr(p["new_model"], 0.5, UQType.Random), 0.1, 0.2),
    "remove_data": lambda s, p, t: s.remove_data("EOS", [p["data"]]),
    "remove_candidates": lambda s, p, t: s.remove_candidates("EOS", None),
    "remove_models": lambda s, p, t: s.remove_models("EOS", [p["model"]], purge=False),
    "move": lambda s, p, t: s.move("EOS", t / "promoted", "candidates", "data", [p["cand"]]),
    "import_from": lambda s, p, t: s.import_from(str(t / "store" / "ams.db")),
    "verify-repair": lambda s, p, t: s.verify(repair=True),
    "set_alias": lambda s, p, t: s.set_alias("EOS", "champion", 1),
    "remove_alias": lambda s, p, t: s.remove_alias("EOS", "champion"),
    "advance_relay": lambda s, p, t: s.advance_relay("default", 1),
    "prune_changes": lambda s, p, t: s.prune_changes(1),
}


@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
def test_every_write_is_refused(write, store, store_url, filled, tmp_path, unchanged):
    os.remove(filled["data"])  # so that verify(repair=True) would have work to do
    guard = unchanged()
    with AMSDataStore("app", store_url, read_only=True) as reader:
        assert reader.read_only and "read-only" in str(reader)
        with pytest.raises(ReadOnlyStoreError) as info:
            WRITES[write](reader, filled, tmp_path)
        assert isinstance(info.value, RuntimeError)
        assert "read-only" in str(info.value) and str(reader.url) in str(info.value)
        # Reads still work on the same object.
        assert reader.get_candidate_files("EOS") == [filled["cand"]]
        assert reader.created_tables == []
    guard.check()


def test_write_methods_are_all_listed():
    """A new public write method must join WRITES (anything that is not a read)."""
    reads = {"find", "search", "get_files", "get_data_files", "get_model_files",
             "get_candidate_files", "get_data_versions", "get_model_versions",
             "get_candidate_versions", "suggest_data_file_name", "suggest_model_file_name",
             "suggest_candidate_file_name", "open", "close", "is_open", "verify",
             "load_model", "load_data", "kosh_dataset", "model_lineage",
             "get_data_path", "get_model_path", "get_candidate_path", "get_raw_content",
             "deployment_config", "get_alias", "alias_history", "aliases",
             "summary", "changes", "relay_cursor", "pending_bytes"}
    public = {name for name in dir(AMSDataStore)
              if not name.startswith("_") and callable(getattr(AMSDataStore, name))}
    writes = {name.split("-")[0] for name in WRITES}
    assert public - reads - writes == set(), "classify the new method as a read or a write"


# ------------------------------------------------------------------ reading while another writes
def _writer(url: str, paths: List[str], results) -> None:
    try:
        with AMSDataStore("app", url) as store:
            results.put(("ok", [store.add_data("EOS", [path]) for path in paths]))
    except BaseException as error:  # noqa: BLE001 - reported to the test
        results.put(("error", f"{type(error).__name__}: {error}"))


def test_reads_work_while_another_process_writes(store, store_url, tmp_path, make_h5):
    first = make_h5()
    store.add_data("EOS", [first])
    paths = [make_h5() for _ in range(WRITES_BY_OTHER)]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ams", "h5py"])
    results = ctx.Queue()
    with AMSDataStore("app", store_url, read_only=True) as reader:
        child = ctx.Process(target=_writer, args=(store_url, paths, results))
        child.start()
        seen: List[int] = []
        outcome = None
        deadline = time.monotonic() + 240
        while outcome is None:
            assert time.monotonic() < deadline, "the writer did not finish"
            versions = reader.get_data_versions("EOS", associate_files=True)
            # Whole adds only: every version holds its one file, versions are 1..n.
            assert list(versions) == list(range(1, len(versions) + 1))
            assert all(len(files) == 1 for files in versions.values())
            assert not seen or len(versions) >= seen[-1]
            seen.append(len(versions))
            try:
                outcome = results.get(timeout=0.01)
            except queue.Empty:
                pass
        child.join(60)
        assert outcome[0] == "ok", outcome
        assert outcome[1] == list(range(2, WRITES_BY_OTHER + 2))
        assert reader.get_data_files("EOS") == [first] + paths  # in version order
    assert len(seen) > 1 and seen[-1] <= WRITES_BY_OTHER + 1


# ------------------------------------------------------------------ a store that does not exist
def test_read_only_open_of_a_missing_sqlite_store_creates_nothing(tmp_path):
    path = tmp_path / "not" / "there" / "ams.db"
    store = AMSDataStore("app", f"sqlite:///{path}", read_only=True)
    with pytest.raises(BackendError) as info:
        store.open()
    assert isinstance(info.value, RuntimeError)
    assert "no store at" in str(info.value) and str(path) in str(info.value)
    assert not store.is_open()
    assert not (tmp_path / "not").exists()
    (tmp_path / "folder").mkdir()
    with pytest.raises(BackendError, match="does not exist"):
        AMSDataStore("app", tmp_path / "folder" / "ams.db", read_only=True).open()
    assert os.listdir(tmp_path / "folder") == []


def test_read_only_open_of_a_file_that_is_not_a_store(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(BackendError, match="is not a Kosh store"):
        AMSDataStore("app", empty, read_only=True).open()
    assert empty.read_bytes() == b"" and os.listdir(tmp_path) == ["empty.db"]


def test_read_only_open_of_a_missing_mariadb_database_creates_nothing(fresh_mariadb_database):
    require_mariadb()
    missing = "ams_test_never_created_" + os.urandom(4).hex()
    with pytest.raises(BackendError) as info:
        AMSDataStore("app", mariadb_url(missing), read_only=True).open()
    assert f"database {missing!r} does not exist" in str(info.value)
    empty_url = fresh_mariadb_database()  # exists, but holds no store
    with pytest.raises(BackendError, match="is not a Kosh store"):
        AMSDataStore("app", empty_url, read_only=True).open()
    conn = mariadb_admin()
    try:
        cursor = conn.cursor()
        cursor.execute("SHOW DATABASES LIKE %s", (missing,))
        assert cursor.fetchall() == []
        cursor.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s",
                       (empty_url.rsplit("/", 1)[1],))
        assert cursor.fetchone() == (0,)
    finally:
        conn.close()
