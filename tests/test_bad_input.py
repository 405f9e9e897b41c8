"""Bad input to the public API: a clear error, nothing written, nothing deleted.

A table of rejected calls (wrong types, empty lists, bad versions, unknown
names, values Kosh cannot store faithfully, missing/odd/corrupt files, ...):
each asserts the exception type (an ``ams.errors`` type that is also the
built-in a caller would catch), a message naming the problem, and that the
database rows and the files are exactly as before (``unchanged``).

Then what looks hostile but is valid: names, keys and values with quotes,
semicolons, SQL fragments, LIKE wildcards and newlines; paths with spaces,
quotes and non-ASCII; symlinks. These are stored verbatim, round-trip, match
only themselves and harm nothing (every query is parameterised).

Last, a file that vanishes between the checks and the commit, provoked for real.
"""

from __future__ import annotations

import math
import os
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from ams import AMSDataStore, AMSModelDescr, UQType
from ams.errors import (
    AMSStoreError,
    DuplicateEntryError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    MissingFileError,
    NotFoundError,
    UnknownEntryTypeError,
    WrongFileFormatError,
)

from conftest import (
    create_mariadb_database,
    drop_mariadb_databases,
    mariadb_admin,
    mariadb_url,
    snapshot_files,
    snapshot_store,
)


@dataclass
class Files:
    """Real files for the table: one of each kind the API may be handed."""

    good: str           # an HDF5 file, not registered
    registered: str     # an HDF5 file registered as data, version 1, with metadata
    candidate: str      # an HDF5 file registered as a candidate
    missing: str        # a path where no file is
    directory: str      # a directory
    truncated: str      # an HDF5 file cut in half
    text: str           # a text file named .h5
    zip_not_model: str  # a zip archive that is not TorchScript
    model: str          # a real TorchScript model, not registered
    dest: str           # an empty folder for moves


def write_h5(path: Path, rows: int = 4) -> str:
    import h5py
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle["inputs"] = np.arange(rows * 2, dtype=float).reshape(rows, 2)
        handle["outputs"] = np.arange(rows, dtype=float).reshape(rows, 1)
    return str(path)


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def shared(request, tmp_path_factory, _model_bytes):
    """One store per backend for the whole table (a rejected call changes nothing, and
    each case checks exactly that), with one file of each kind under ``root/files``."""
    root = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'store' / 'ams.db'}"
    else:
        database = create_mariadb_database()
        url = mariadb_url(database)
        request.addfinalizer(lambda: drop_mariadb_databases([database]))
    folder = root / "files"
    good, registered, candidate = (write_h5(folder / f"{name}.h5")
                                   for name in ("good", "registered", "candidate"))
    directory = folder / "a-directory.h5"
    directory.mkdir()
    whole = Path(write_h5(folder / "whole.h5", rows=2000))
    truncated = folder / "truncated.h5"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    text = folder / "notes.h5"
    text.write_text("inputs,outputs\n1,2\n")
    archive = folder / "not-a-model.pt"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("archive/data.pkl", b"not torchscript")
    model_path = folder / "model.pt"
    model_path.write_bytes(_model_bytes)
    dest = folder / "dest"
    dest.mkdir()
    files = Files(good, registered, candidate, str(folder / "nowhere.h5"), str(directory),
                  str(truncated), str(text), str(archive), str(model_path), str(dest))
    with AMSDataStore("app", url) as store:
        store.add_data("EOS", [registered], metadata={"cycle": 1})
        store.add_candidates("EOS", [candidate])
        yield store, files, folder


def model(path: str) -> AMSModelDescr:
    return AMSModelDescr(path, 0.5, UQType.Random)


Call = Callable[[AMSDataStore, Files], Any]
# id -> (call, error type, the built-in it also is, fragment of the message)
REJECTED: Dict[str, tuple] = {
    # wrong types
    "domain-None": (lambda s, f: s.add_data(None, [f.good]),
                    InvalidArgumentTypeError, TypeError, "domain_name must be a str, not NoneType"),
    "domain-bytes": (lambda s, f: s.add_data(b"EOS", [f.good]),
                     InvalidArgumentTypeError, TypeError, "domain_name must be a str, not bytes"),
    "domain-int-in-find": (lambda s, f: s.find(domain_name=3),
                           InvalidArgumentTypeError, TypeError, "domain_name must be a str"),
    "files-str-not-list": (lambda s, f: s.add_data("EOS", f.good),
                           InvalidArgumentTypeError, TypeError, "wrap it in a list"),
    "files-None": (lambda s, f: s.add_data("EOS", None),
                   InvalidArgumentTypeError, TypeError, "must be a list of paths, not NoneType"),
    "files-dict": (lambda s, f: s.add_candidates("EOS", {f.good: 1}),
                   InvalidArgumentTypeError, TypeError, "must be a list of paths, not dict"),
    "path-None-in-list": (lambda s, f: s.add_data("EOS", [f.good, None]),
                          InvalidArgumentTypeError, TypeError, "must be a str or os.PathLike"),
    "path-bytes": (lambda s, f: s.add_data("EOS", [f.good.encode()]),
                   InvalidArgumentTypeError, TypeError, "bytes"),
    "version-bool": (lambda s, f: s.add_data("EOS", [f.good], version=True),
                     InvalidArgumentTypeError, TypeError, "version must be an int, not bool"),
    "version-float": (lambda s, f: s.add_data("EOS", [f.good], version=1.0),
                      InvalidArgumentTypeError, TypeError, "version must be an int, not float"),
    "version-str": (lambda s, f: s.add_data("EOS", [f.good], version="two"),
                    InvalidArgumentTypeError, TypeError, "version must be an int, not str"),
    "versions-bool-in-list": (lambda s, f: s.get_data_files("EOS", [1, True]),
                              InvalidArgumentTypeError, TypeError, "must be an int, not bool"),
    "purge-str": (lambda s, f: s.remove_data("EOS", [f.registered], purge="yes"),
                  InvalidArgumentTypeError, TypeError, "purge must be True or False"),
    "associate-files-int": (lambda s, f: s.get_data_versions("EOS", associate_files=1),
                            InvalidArgumentTypeError, TypeError, "associate_files must be True or False"),
    "metadata-list": (lambda s, f: s.add_data("EOS", [f.good], metadata=[("k", 1)]),
                      InvalidArgumentTypeError, TypeError, "metadata must be a dict, not list"),
    "model-as-str": (lambda s, f: s.add_model("EOS", f.model, 0.1, 0.1),
                     InvalidArgumentTypeError, TypeError, "model must be an AMSModelDescr, not str"),
    "test-error-str": (lambda s, f: s.add_model("EOS", model(f.model), "low", 0.1),
                       InvalidArgumentTypeError, TypeError, "test_error must be a number"),
    "verify-repair-str": (lambda s, f: s.verify(repair="yes"),
                          InvalidArgumentTypeError, TypeError, "repair must be True or False"),
    # empty lists, bad versions, unknown names
    "files-empty": (lambda s, f: s.add_data("EOS", []),
                    InvalidArgumentError, ValueError, "no files given"),
    "move-empty": (lambda s, f: s.move("EOS", f.dest, "candidates", "data", []),
                   InvalidArgumentError, ValueError, "no files given to move"),
    "domain-empty": (lambda s, f: s.add_data("", [f.good]),
                     InvalidArgumentError, ValueError, "domain_name must not be empty"),
    "version-negative": (lambda s, f: s.add_data("EOS", [f.good], version=-1),
                         InvalidArgumentError, ValueError, "between 0 and 2147483647, not -1"),
    "version-huge": (lambda s, f: s.add_candidates("EOS", [f.good], version=2**31),
                     InvalidArgumentError, ValueError, "not 2147483648"),
    "remove-version-negative": (lambda s, f: s.remove_data("EOS", [f.registered], version=-3),
                                InvalidArgumentError, ValueError, "not -3"),
    "versions-word": (lambda s, f: s.get_data_files("EOS", "newest"),
                      InvalidArgumentError, ValueError, "'latest', an int or a list of ints, not 'newest'"),
    "find-version-negative": (lambda s, f: s.find(version=-1),
                              InvalidArgumentError, ValueError, "not -1"),
    "entry-unknown": (lambda s, f: s.get_files("EOS", "model"),
                      UnknownEntryTypeError, ValueError, "unknown entry 'model'; valid: data, models, candidates"),
    "entry-unknown-search": (lambda s, f: s.search("EOS", "Data"),
                             UnknownEntryTypeError, ValueError, "unknown entry type 'Data'"),
    "move-same-entry": (lambda s, f: s.move("EOS", f.dest, "data", "data", [f.registered]),
                        InvalidArgumentError, ValueError, "src_type and dest_type are both 'data'"),
    "move-unknown-entry": (lambda s, f: s.move("EOS", f.dest, "candidate", "data", [f.candidate]),
                           UnknownEntryTypeError, ValueError, "unknown src_type 'candidate'"),
    "move-not-registered": (lambda s, f: s.move("EOS", f.dest, "candidates", "data", [f.good]),
                            NotFoundError, LookupError, "not registered as candidates of domain 'EOS'"),
    "move-into-a-file": (lambda s, f: s.move("EOS", f.registered, "candidates", "data", [f.candidate]),
                         InvalidArgumentError, ValueError, "dest_root_path is not a directory"),
    # values Kosh cannot store faithfully
    "metadata-nan": (lambda s, f: s.add_data("EOS", [f.good], metadata={"loss": math.nan}),
                     InvalidMetadataError, ValueError, "metadata['loss'] = nan: NaN and infinities"),
    "metadata-inf": (lambda s, f: s.add_data("EOS", [f.good], metadata={"loss": math.inf}),
                     InvalidMetadataError, ValueError, "metadata['loss'] = inf"),
    "metadata-minus-inf-in-list": (lambda s, f: s.add_data("EOS", [f.good], metadata={"l": [1.0, -math.inf]}),
                                   InvalidMetadataError, ValueError, "-inf"),
    "metadata-nested-dict": (lambda s, f: s.add_data("EOS", [f.good], metadata={"run": {"id": (1,)}}),
                             InvalidMetadataError, ValueError, "metadata['run']['id'] has type tuple"),
    "metadata-None-value": (lambda s, f: s.add_data("EOS", [f.good], metadata={"note": None}),
                            InvalidMetadataError, ValueError, "metadata['note'] is None"),
    "metadata-mixed-list": (lambda s, f: s.add_data("EOS", [f.good], metadata={"l": [1, "a"]}),
                            InvalidMetadataError, ValueError, "mixes types"),
    "metadata-int-over-64-bits": (lambda s, f: s.add_data("EOS", [f.good], metadata={"n": 2**64}),
                                  InvalidMetadataError, ValueError, "does not fit in 64 bits"),
    "metadata-bytes-value": (lambda s, f: s.add_data("EOS", [f.good], metadata={"b": b"\x00"}),
                             InvalidMetadataError, ValueError, "has type bytes"),
    "metadata-key-int": (lambda s, f: s.add_data("EOS", [f.good], metadata={1: "x"}),
                         InvalidMetadataError, ValueError, "keys must be str, not int"),
    "metadata-key-empty": (lambda s, f: s.add_data("EOS", [f.good], metadata={"": "x"}),
                           InvalidMetadataError, ValueError, "key must have 1 to 255 characters"),
    "metadata-key-reserved": (lambda s, f: s.add_data("EOS", [f.good], metadata={"date": "today"}),
                              InvalidMetadataError, ValueError, "key 'date' is reserved"),
    "metadata-filter-operator": (lambda s, f: s.search("EOS", metadata={"cycle": {"~": 1}}),
                                 InvalidMetadataError, ValueError, "unknown operator '~'"),
    "model-nan-error": (lambda s, f: s.add_model("EOS", model(f.model), math.nan, 0.1),
                        InvalidMetadataError, ValueError, "NaN and infinities"),
    # very long strings
    "domain-256-chars": (lambda s, f: s.add_data("D" * 256, [f.good]),
                         InvalidArgumentError, ValueError, "256 characters long; the limit is 255"),
    "metadata-key-256-chars": (lambda s, f: s.add_data("EOS", [f.good], metadata={"k" * 256: 1}),
                               InvalidMetadataError, ValueError, "1 to 255 characters"),
    "metadata-value-15001-chars": (lambda s, f: s.add_data("EOS", [f.good], metadata={"s": "x" * 15001}),
                                   InvalidMetadataError, ValueError, "string of 15001 characters; the limit is 15000"),
    "path-2000-chars": (lambda s, f: s.add_data("EOS", ["/" + "p" * 2000 + ".h5"]),
                        InvalidArgumentError, ValueError, "the store's limit is 1500"),
    "path-NUL": (lambda s, f: s.add_data("EOS", [f.good + "\x00.h5"]),
                 InvalidArgumentError, ValueError, "NUL character"),
    "domain-lone-surrogate": (lambda s, f: s.add_data("EOS\udcff", [f.good]),
                              InvalidArgumentError, ValueError, "not valid Unicode text"),
    # files
    "file-missing": (lambda s, f: s.add_data("EOS", [f.good, f.missing]),
                     MissingFileError, FileNotFoundError, "file does not exist"),
    "file-is-directory": (lambda s, f: s.add_candidates("EOS", [f.directory]),
                          MissingFileError, FileNotFoundError, "not a regular file"),
    "hdf5-truncated": (lambda s, f: s.add_data("EOS", [f.good, f.truncated]),
                       WrongFileFormatError, ValueError, "not a readable HDF5 file"),
    "hdf5-is-text": (lambda s, f: s.add_data("EOS", [f.text]),
                     WrongFileFormatError, ValueError,
                     "not a readable HDF5 file (file signature not found)"),
    "model-zip-not-torchscript": (lambda s, f: s.add_model("EOS", model(f.zip_not_model), 0.1, 0.1),
                                  WrongFileFormatError, ValueError, "not a TorchScript archive"),
    "model-is-hdf5": (lambda s, f: s.add_model("EOS", model(f.good), 0.1, 0.1),
                      WrongFileFormatError, ValueError, "not a TorchScript archive"),
    "file-listed-twice": (lambda s, f: s.add_data("EOS", [f.good, f.good]),
                          InvalidArgumentError, ValueError, "more than once"),
    "file-already-registered": (lambda s, f: s.add_candidates("OTHER", [f.good, f.registered]),
                                DuplicateEntryError, ValueError,
                                "is already registered (application 'app', domain 'EOS', entry 'data', version 1)"),
}


@pytest.mark.parametrize("case", list(REJECTED), ids=list(REJECTED))
def test_rejected(case, shared):
    store, files, folder = shared
    call, error_type, builtin, fragment = REJECTED[case]
    assert issubclass(error_type, AMSStoreError) and issubclass(error_type, builtin)
    rows, on_disk = snapshot_store(store.url), snapshot_files(folder)
    with pytest.raises(error_type) as info:
        call(store, files)
    assert isinstance(info.value, builtin)
    assert fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot_store(store.url) == rows, "the store changed"
    assert snapshot_files(folder) == on_disk, "files changed"


def test_the_table_is_big_enough():
    assert len(REJECTED) >= 30


# ------------------------------------------------------------------ valid, though hostile-looking
HOSTILE = [
    "EOS'; DROP TABLE Record; --",
    'a"b`c',
    "Robert'); DELETE FROM Document WHERE ('1'='1",
    "line\nbreak\ttab",
    "%_*?[]",
    "back\\slash",
    "1 OR 1=1",
]


def table_counts(url) -> Dict[str, int]:
    engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            quote = conn.dialect.identifier_preparer.quote
            return {name: conn.execute(sa.text(f"SELECT COUNT(*) FROM {quote(name)}")).scalar()
                    for name in names}
    finally:
        engine.dispose()


def test_hostile_names_keys_and_values_are_stored_verbatim(store, make_h5):
    bystander = make_h5()
    store.add_data("EOS", [bystander], metadata={"cycle": 1})
    tables = set(table_counts(store.url))
    for index, text in enumerate(HOSTILE):
        path = make_h5()
        metadata = {text: text, f"k{index}": [text, "x"], "n": index}
        assert store.add_data(text, [path], metadata=metadata) == 1
        (entry,) = store.find(domain_name=text)
        assert entry["domain_name"] == text and entry["filename"] == path
        assert {k: entry["metadata"][k] for k in metadata} == metadata
        assert [e["filename"] for e in store.search(metadata={text: text})] == [path]
        assert store.search(metadata={text: text + " "}) == []
    # Each name is its own domain; wildcards and quotes matched nothing else.
    for text in HOSTILE:
        assert len(store.find(domain_name=text)) == 1
    assert store.find(domain_name="EOS")[0]["filename"] == bystander
    assert set(table_counts(store.url)) == tables  # no table dropped or created
    for text in HOSTILE:  # and they go away as cleanly
        (entry,) = store.find(domain_name=text)
        assert store.remove_data(text, [entry["filename"]], metadata={text: text},
                                 purge=False).removed == [entry["filename"]]
    assert [e["filename"] for e in store.find()] == [bystander]


def test_paths_with_spaces_quotes_and_unicode(store, make_h5, tmp_path):
    folder = tmp_path / "dir with space" / "it's \"quoted\"; DROP" / "ünï 東京 🚀"
    path = make_h5("a file; 'x' \"y\" %_.h5", directory=folder)
    assert store.add_data("EOS", [path]) == 1
    assert store.get_data_files("EOS") == [path]
    assert [e["filename"] for e in store.find(filename=path)] == [path]
    assert store.find(filename=path.replace("%_", "xx")) == []
    moved = store.move("EOS", folder / "promoted 'here'", "data", "candidates", [path])
    assert store.get_candidate_files("EOS") == moved and os.path.isfile(moved[0])
    assert store.remove_candidates("EOS", moved).purged == moved


def test_symlinks_are_stored_resolved(store, make_h5, tmp_path):
    target = make_h5("real.h5")
    link = tmp_path / "links" / "alias.h5"
    link.parent.mkdir()
    link.symlink_to(target)
    assert store.add_data("EOS", [str(link)]) == 1
    assert store.get_data_files("EOS") == [target]
    assert store.find(filename=str(link))[0]["filename"] == target
    with pytest.raises(DuplicateEntryError):  # the same file under another name
        store.add_candidates("EOS", [target])
    assert store.remove_data("EOS", [str(link)], purge=False).removed == [target]
    assert link.is_symlink() and os.path.isfile(target)


# ------------------------------------------------------------------ a file vanishing mid-add
def hold_write_lock(store: AMSDataStore):
    """A second connection holding the store's write lock, as another writer would."""
    url = store.url
    engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool,
                              isolation_level="AUTOCOMMIT")
    conn = engine.connect()
    if url.backend == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("START TRANSACTION")
        conn.exec_driver_sql("SELECT id FROM Record WHERE id = '__kosh_store_info__' FOR UPDATE")

    def release() -> None:
        conn.exec_driver_sql("ROLLBACK")
        conn.close()
        engine.dispose()
    return release


def waiting_for_the_lock(store: AMSDataStore) -> Callable[[], bool]:
    """True once one of the store's connections is blocked asking for the write lock.

    SQLite: sqlite3's statement trace (called as a statement starts, before its
    busy wait) reports ``BEGIN IMMEDIATE`` on a connection of the store's pool.
    MariaDB: the server's process list shows the store's ``SELECT ... FOR UPDATE``
    still running (the holder's finished before).
    """
    if store.url.backend == "sqlite":
        seen = threading.Event()

        def trace(statement: str) -> None:
            if statement.startswith("BEGIN IMMEDIATE"):
                seen.set()

        event.listen(store._catalog.engine, "checkout",
                     lambda dbapi_connection, record, proxy:
                     dbapi_connection.set_trace_callback(trace))
        return seen.is_set
    monitor = mariadb_admin()
    monitor.autocommit = True

    def blocked() -> bool:
        cursor = monitor.cursor()
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s "
                       "AND INFO LIKE '%%FOR UPDATE%%'", (store.url.database,))
        (count,) = cursor.fetchone()
        cursor.close()
        return count > 0
    blocked.close = monitor.close  # type: ignore[attr-defined]
    return blocked


def test_file_vanishing_between_check_and_commit(store, make_h5, tmp_path_factory, unchanged):
    """The add checked the file, then waits for the write lock another writer holds; the
    file is deleted meanwhile. Inside its transaction the add checks again and rolls back.

    Observed, not mocked: the test waits until the add is blocked on the lock
    (see :func:`waiting_for_the_lock`), deletes the file, then releases the lock.
    """
    elsewhere = tmp_path_factory.mktemp("vanishing")
    stays, goes = make_h5(directory=elsewhere), make_h5(directory=elsewhere)
    guard = unchanged()
    blocked = waiting_for_the_lock(store)
    release = hold_write_lock(store)
    outcome: Dict[str, Any] = {}

    def add() -> None:
        try:
            outcome["version"] = store.add_data("EOS", [stays, goes])
        except BaseException as error:  # noqa: BLE001 - examined below
            outcome["error"] = error

    worker = threading.Thread(target=add)
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while not blocked():
            assert worker.is_alive(), f"the add ended before waiting for the lock: {outcome}"
            assert time.monotonic() < deadline, "the add never asked for the write lock"
            time.sleep(0.001)
        assert worker.is_alive()  # still waiting: the lock is held
        os.remove(goes)
    finally:
        release()
        worker.join(60)
        getattr(blocked, "close", lambda: None)()
    error = outcome.get("error")
    assert isinstance(error, MissingFileError) and isinstance(error, FileNotFoundError), outcome
    assert "disappeared before it could be registered" in str(error) and goes in str(error)
    guard.check()
    assert os.path.isfile(stays)
    assert store.add_data("EOS", [stays]) == 1  # nothing of the failed call was kept
