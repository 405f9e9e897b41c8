"""Contract: removing, moving (promotion) and file-name suggestions.

SPEC "Removing", "Moving", "Names". Failures are provoked for real (a path
registered but gone from disk, a destination under a regular file, a file
replaced by a directory), never by mocking the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

import pytest

from ams import AMSDataStore, AMSModelDescr, RemoveReport, UQType
from ams.errors import (
    DuplicateEntryError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    MissingFileError,
    NotFoundError,
    UnknownEntryTypeError,
    WrongFileFormatError,
)

from conftest import count_records, rejected

DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$")


def sha(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# ------------------------------------------------------------------ removing
def test_remove_by_files(store, make_h5, make_model, caplog):
    a, b, c = make_h5(), make_h5(), make_h5()
    unknown = make_h5()
    store.add_data("EOS", [a, b, c])
    caplog.set_level(logging.WARNING, logger="ams")
    report = store.remove_data("EOS", [a, unknown])
    assert isinstance(report, RemoveReport)
    assert report.removed == [a] and report.purged == [a] and report.not_found == [unknown]
    assert report.kept == [] and report.purge_errors == {}
    assert not os.path.exists(a) and os.path.exists(unknown)  # never purge what it does not hold
    assert unknown in caplog.text  # the not-found path is reported as a warning too
    assert store.get_data_files("EOS") == sorted([b, c])
    report = store.remove_data("EOS", [b], purge=False)  # keep the file on disk
    assert report.removed == [b] and report.purged == [] and os.path.exists(b)
    assert store.get_data_files("EOS") == [c]
    assert store.find(filename=b) == []
    assert store.remove_data("EOS", []).to_dict() == RemoveReport().to_dict()
    assert store.remove_data("nowhere", [c]).not_found == [c]  # unknown domain: reported
    assert store.remove_candidates("EOS", [c]).not_found == [c]  # wrong entry: reported
    assert store.get_data_files("EOS") == [c] and os.path.exists(c)
    m = make_model()
    store.add_model("EOS", AMSModelDescr(m, 0.5, UQType.Random), 0.1, 0.2)
    report = store.remove_models("EOS", [m])
    assert report.removed == [m] and report.purged == [m] and not os.path.exists(m)
    assert store.get_model_versions("EOS") == []
    # a dataset left empty is removed (its ensemble may stay)
    a, b, c, d = (make_h5() for _ in range(4))
    datasets, files = count_records(store, "dataset"), count_records(store, "file")
    store.add_data("EMPTY", [a, b])
    store.add_data("EMPTY", [c])
    store.add_candidates("EMPTY", [d])
    assert count_records(store, "dataset") == datasets + 3
    store.remove_data("EMPTY", [a])
    assert count_records(store, "dataset") == datasets + 3  # v1 still holds b
    store.remove_data("EMPTY", [b, c])
    assert count_records(store, "dataset") == datasets + 1  # both data versions are gone
    assert count_records(store, "file") == files + 1
    assert store.get_data_versions("EMPTY") == [] and store.get_candidate_versions("EMPTY") == [1]
    assert store.add_data("EMPTY", [make_h5()]) == 3  # never reused: above every version it had


def test_remove_filters(store, make_h5):
    f = {name: make_h5(f"{name}.h5") for name in ("a1", "b1", "a2", "b2", "a3", "c1", "h1")}
    store.add_data("EOS", [f["a1"]], metadata={"kind": "a", "n": 1})
    store.add_data("EOS", [f["b1"]], version=1, metadata={"kind": "b", "n": 1})
    store.add_data("EOS", [f["a2"]], metadata={"kind": "a", "n": 2})
    store.add_data("EOS", [f["b2"]], version=2, metadata={"kind": "b", "n": 2})
    store.add_data("EOS", [f["a3"]], metadata={"kind": "a", "n": 3})
    store.add_candidates("EOS", [f["c1"]], metadata={"kind": "a"})
    store.add_data("HYD", [f["h1"]], metadata={"kind": "a"})
    # version narrows an explicit list
    report = store.remove_data("EOS", [f["a1"], f["a2"]], version=2, purge=False)
    assert report.removed == [f["a2"]] and report.not_found == [f["a1"]]
    # metadata narrows an explicit list
    report = store.remove_data("EOS", [f["a1"], f["b1"]], metadata={"kind": "b"}, purge=False)
    assert report.removed == [f["b1"]] and report.not_found == [f["a1"]]
    # None: whatever the filters match, in this domain and entry only
    report = store.remove_data("EOS", None, metadata={"kind": "a", "n": {">=": 3}}, purge=False)
    assert report.removed == [f["a3"]] and report.not_found == []
    assert store.get_data_versions("EOS") == [1, 2]
    report = store.remove_data("EOS", None, version="latest", metadata={"kind": "a"}, purge=False)
    assert report.removed == [f["a1"]]  # the highest version among the matches (v2 has no 'a' left)
    store.add_data("EOS", [f["a1"]], version=1, metadata={"kind": "a", "n": 1})
    report = store.remove_data("EOS", None, version="latest", purge=False)
    assert report.removed == [f["b2"]]
    assert store.get_data_versions("EOS", True) == {1: [f["a1"]]}
    report = store.remove_data("EOS", None, version=[1, 7], purge=False)
    assert report.removed == [f["a1"]]
    assert store.get_data_versions("EOS") == []
    assert store.get_candidate_files("EOS") == [f["c1"]] and store.get_data_files("HYD") == [f["h1"]]
    report = store.remove_candidates("EOS", None, remove_all=True)  # the whole entry
    assert report.removed == [f["c1"]] and report.purged == [f["c1"]]
    assert store.get_data_files("HYD") == [f["h1"]]
    assert store.remove_data("EOS", None, remove_all=True).removed == []


def test_purge(store, store_url, make_h5, monkeypatch, caplog):
    # files are deleted only after the removal is committed
    files = [make_h5() for _ in range(3)]
    store.add_data("EOS", files)
    seen_at_delete = {}
    real_unlink = os.unlink
    with AMSDataStore("app", store_url) as observer:  # another connection
        def spy(path, *args, dir_fd=None, **kwargs):
            full = path if dir_fd is None else os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"),
                                                            path)
            if full in files:
                seen_at_delete[full] = observer.find(filename=full)
            return real_unlink(path, *args, dir_fd=dir_fd, **kwargs)

        monkeypatch.setattr(os, "unlink", spy)
        report = store.remove_data("EOS", files)
        monkeypatch.setattr(os, "unlink", real_unlink)
    assert sorted(report.purged) == sorted(files)
    assert seen_at_delete == {path: [] for path in files}  # deleted after the record was committed
    assert not any(os.path.exists(p) for p in files)
    # a purge failure on one file is reported and does not stop the others
    a, b, c = make_h5("a.h5"), make_h5("b.h5"), make_h5("c.h5")
    store.add_data("FAIL", [a, b, c])
    os.remove(b)
    os.mkdir(b)  # now b cannot be deleted with os.remove
    with open(os.path.join(b, "keep"), "w"):
        pass
    report = store.remove_data("FAIL", [a, b, c])
    assert report.removed == [a, b, c]
    assert sorted(report.purged) == [a, c]
    assert list(report.purge_errors) == [b] and report.purge_errors[b]
    assert not os.path.exists(a) and not os.path.exists(c) and os.path.isdir(b)
    assert b in caplog.text
    assert store.get_data_files("FAIL") == []
    # a file already deleted from disk can still be removed
    gone, kept = make_h5(), make_h5()
    store.add_data("GONE", [gone, kept])
    os.remove(gone)
    report = store.remove_data("GONE", [gone, kept])
    assert report.removed == sorted([gone, kept]) and report.not_found == []
    assert report.purged == [kept] and report.purge_errors == {}
    assert store.get_data_files("GONE") == []


def test_purge_never_deletes_a_file_still_referenced(store, store_url, backend, make_h5):
    """A plain-Kosh user associated the same file with a second dataset: purge must keep it."""
    import kosh
    shared, alone = make_h5("shared.h5"), make_h5("alone.h5")
    store.add_data("EOS", [shared, alone])
    # Sina turns SQLite's foreign keys on only for a plain path, not for a sqlite:// URL
    kosh_store = kosh.connect(store.url.path if backend == "sqlite" else store.url.sqlalchemy_url())
    try:
        (ensemble,) = list(kosh_store.find_ensembles(name="EOS"))
        dataset = ensemble.create(name="data", metadata={"version": 2})
        dataset.associate(shared, mime_type="hdf5")
    finally:
        kosh_store.close()
    assert store.get_data_versions("EOS", True) == {1: sorted([alone, shared]), 2: [shared]}
    report = store.remove_data("EOS", [shared, alone], version=1)
    assert report.removed == sorted([alone, shared])
    assert report.kept == [shared] and report.purged == [alone]
    assert os.path.exists(shared) and not os.path.exists(alone)
    assert store.get_data_files("EOS") == [shared]
    report = store.remove_data("EOS", [shared])  # the last reference: now it goes
    assert report.purged == [shared] and not os.path.exists(shared)


def test_remove_rejections(store, make_h5, unchanged):
    a = make_h5()
    store.add_data("EOS", [a], metadata={"k": 1})
    guard = unchanged()
    for remove in (store.remove_data, store.remove_models, store.remove_candidates):
        rejected(guard, InvalidArgumentTypeError, TypeError, "wrap it in a list", remove, "EOS", a)
        rejected(guard, InvalidArgumentTypeError, TypeError, "int", remove, "EOS", 3)
        rejected(guard, InvalidArgumentTypeError, TypeError, "domain_name", remove, None, [a])
        rejected(guard, InvalidArgumentError, ValueError, "domain_name", remove, "", [a])
        rejected(guard, InvalidArgumentError, ValueError, "-1", remove, "EOS", [a], version=-1)
        rejected(guard, InvalidArgumentError, ValueError, "'newest'", remove, "EOS", [a], version="newest")
        rejected(guard, InvalidArgumentTypeError, TypeError, "1.5", remove, "EOS", [a], version=1.5)
        rejected(guard, InvalidMetadataError, ValueError, "'~'", remove, "EOS", [a], metadata={"k": {"~": 1}})
        rejected(guard, InvalidMetadataError, ValueError, "None", remove, "EOS", None, metadata={"k": None})
        rejected(guard, InvalidMetadataError, ValueError, "list", remove, "EOS", [a], metadata=["k"])
        rejected(guard, InvalidArgumentTypeError, TypeError, "'yes'", remove, "EOS", [a], purge="yes")
    rejected(guard, UnknownEntryTypeError, ValueError, "'model'", store._remove_entries, "EOS", "model", [a])
    assert store.get_data_files("EOS") == [a] and os.path.exists(a)


# ------------------------------------------------------------------ moving
@pytest.fixture
def promoted(store, make_h5, tmp_path):
    """Two candidates (different metadata) in EOS candidates v1; data already at v1 and v3."""
    store.add_data("EOS", [make_h5()])
    store.add_data("EOS", [make_h5()], version=3)
    c1, c2 = make_h5("c1.h5", directory=tmp_path / "cand"), make_h5("c2.h5", directory=tmp_path / "cand")
    store.add_candidates("EOS", [c1], metadata={"cycle": 7, "tags": ["x", "y"], "ok": True})
    store.add_candidates("EOS", [c2], version=1, metadata={"cycle": 8, "score": 0.5})
    return c1, c2


def test_move(store, promoted, make_h5, tmp_path):
    c1, c2 = promoted
    digests = {os.path.basename(p): sha(p) for p in promoted}
    before = {e["filename"]: e["metadata"] for e in store.find(entry_type="candidates")}
    dest = tmp_path / "promoted" / "deep"  # created on demand
    targets = store.move("EOS", str(dest), "candidates", "data", [c1, c2])
    assert targets == [str(dest / "c1.h5"), str(dest / "c2.h5")]
    for target in targets:
        assert sha(target) == digests[os.path.basename(target)]  # byte-identical copies
    assert not os.path.exists(c1) and not os.path.exists(c2)  # sources deleted
    assert store.get_candidate_versions("EOS") == []  # and removed (their dataset too)
    assert store.get_data_versions("EOS") == [1, 3, 4]  # one new version
    assert sorted(store.get_data_files("EOS", "latest")) == sorted(targets)
    for source, target in zip((c1, c2), targets):
        (entry,) = store.find(filename=target)
        assert entry["entry_type"] == "data" and entry["version"] == 4
        metadata = dict(entry["metadata"])
        assert DATE.match(metadata.pop("date"))  # the date is the promotion's
        old = {key: value for key, value in before[source].items() if key != "date"}
        assert metadata == old  # metadata carried over, each file its own
        assert {k: type(v) for k, v in metadata.items()} == {k: type(v) for k, v in old.items()}
    assert store.search("EOS", "data", metadata={"tags": ["x", "y"], "ok": True})[0]["filename"] == targets[0]
    # an explicit version; the candidates not moved stay
    c3, c4 = make_h5("c3.h5"), make_h5("c4.h5")
    store.add_candidates("EOS", [c3, c4], metadata={"cycle": 9})
    out = tmp_path / "out"
    out.mkdir()
    (target,) = store.move("EOS", out, "candidates", "data", [c3], version=3)
    assert target == str(out / "c3.h5") and target in store.get_data_files("EOS", 3)
    assert len(store.get_data_files("EOS", 3)) == 2
    assert store.get_candidate_files("EOS") == [c4]
    # and back: data -> candidates, a new candidates version
    (again,) = store.move("EOS", tmp_path / "back", "data", "candidates", [target])
    # (candidates version 1 was emptied by the first move: versions are never reused)
    assert store.get_candidate_versions("EOS", True) == {2: [c4], 3: [again]}
    assert store.find(filename=again)[0]["metadata"]["cycle"] == 9
    assert not os.path.exists(target) and store.find(filename=target) == []


def test_move_rejections_change_nothing(store, store_url, promoted, make_h5, tmp_path, unchanged):
    c1, c2 = promoted
    dest = tmp_path / "dest"
    twin = make_h5("c1.h5", directory=tmp_path / "other")
    store.add_candidates("EOS", [twin])
    unregistered = make_h5("stray.h5")
    data_file = store.get_data_files("EOS", 1)[0]
    regular = tmp_path / "regular_file"
    regular.write_text("I am a file")
    guard = unchanged()

    def move(*args, **kwargs):
        return store.move("EOS", *args, **kwargs)

    rejected(guard, NotFoundError, LookupError, unregistered, move, dest, "candidates", "data", [c1, unregistered])
    rejected(guard, NotFoundError, LookupError, data_file, move, dest, "candidates", "data", [data_file])
    rejected(guard, NotFoundError, LookupError, c1, store.move, "HYD", dest, "candidates", "data", [c1])
    with AMSDataStore("other", store_url) as other:  # another application's candidates
        rejected(guard, NotFoundError, LookupError, c1, other.move, "EOS", dest, "candidates", "data", [c1])
    rejected(guard, InvalidArgumentError, ValueError, "more than once", move, dest, "candidates", "data",
             [c1, twin])  # two sources, one destination name
    rejected(guard, InvalidArgumentError, ValueError, "more than once", move, dest, "candidates", "data",
             [c1, c1])
    rejected(guard, InvalidArgumentError, ValueError, "'candidates'", move, dest, "candidates", "candidates", [c1])
    rejected(guard, UnknownEntryTypeError, ValueError, "'cands'", move, dest, "cands", "data", [c1])
    rejected(guard, UnknownEntryTypeError, ValueError, "'dat'", move, dest, "candidates", "dat", [c1])
    rejected(guard, WrongFileFormatError, ValueError, c1, move, dest, "candidates", "models", [c1])
    rejected(guard, InvalidArgumentError, ValueError, "no files", move, dest, "candidates", "data", [])
    rejected(guard, InvalidArgumentTypeError, TypeError, "wrap it in a list", move, dest, "candidates", "data", c1)
    rejected(guard, InvalidArgumentError, ValueError, "-1", move, dest, "candidates", "data", [c1], version=-1)
    rejected(guard, InvalidArgumentTypeError, TypeError, "domain_name", store.move, None, dest, "candidates",
             "data", [c1])
    # the destination root is a regular file, or lies under one
    rejected(guard, InvalidArgumentError, ValueError, str(regular), move, regular, "candidates", "data", [c1])
    rejected(guard, InvalidArgumentError, ValueError, str(regular), move, regular / "sub", "candidates",
             "data", [c1])
    assert not dest.exists()
    # a destination name that exists is refused before anything is copied
    dest.mkdir()
    (dest / "c2.h5").write_bytes(b"someone else's file")
    guard = unchanged()
    rejected(guard, InvalidArgumentError, ValueError, str(dest / "c2.h5"), move, dest, "candidates", "data",
             [c1, c2])
    assert sorted(os.listdir(dest)) == ["c2.h5"]  # no copy of c1 either
    # a registered source that is gone from disk
    os.remove(c2)
    guard = unchanged()
    rejected(guard, MissingFileError, FileNotFoundError, c2, move, tmp_path / "dest2", "candidates", "data",
             [c1, c2])
    assert not (tmp_path / "dest2").exists()


def test_move_failing_in_the_database_leaves_no_trace(store, promoted, make_h5, tmp_path, unchanged):
    """c2's destination path is registered (its file was deleted): the copies are made, then the
    database step fails; the store, the sources and the destination must be as before."""
    c1, c2 = promoted
    dest = tmp_path / "dest"
    taken = make_h5("c2.h5", directory=dest)
    store.add_data("HYD", [taken], version=9)
    os.remove(taken)
    os.rmdir(dest)
    guard = unchanged()
    rejected(guard, DuplicateEntryError, ValueError, "domain 'HYD', entry 'data', version 9",
             store.move, "EOS", dest, "candidates", "data", [c1, c2])
    assert not dest.exists()  # no stray copies, no stray folder
    assert os.path.exists(c1) and os.path.exists(c2)
    assert sorted(store.get_candidate_files("EOS")) == sorted([c1, c2])


# ------------------------------------------------------------------ names
def test_suggested_file_names(store, make_h5, unchanged):
    base = os.path.basename  # a path under root_path/<entry> when the store has a root
    name = base(store.suggest_data_file_name("EOS"))
    assert re.fullmatch(r"EOS_[0-9a-f]{32}\.h5", name)
    assert re.fullmatch(r"EOS_[0-9a-f]{32}\.h5", base(store.suggest_candidate_file_name("EOS")))
    assert re.fullmatch(r"EOS_[0-9a-f]{32}\.pt", base(store.suggest_model_file_name("EOS")))
    assert re.fullmatch(r"ÉOS ☃_[0-9a-f]{32}\.pt", base(store.suggest_model_file_name("ÉOS ☃")))
    assert base(store.suggest_data_file_name()).startswith("app_")  # no domain: the application's name
    if store.root_path is not None:
        assert os.path.dirname(store.suggest_model_file_name("EOS")) == str(store.root_path / "models")
    for entry, suffix in AMSDataStore.entry_suffix.items():
        assert store._suggest_entry_file_name(entry, "D").endswith("." + suffix)
    names = {base(store.suggest_data_file_name("EOS")) for _ in range(2000)}
    assert len(names) == 2000  # never the same twice
    registered = make_h5()
    store.add_data("EOS", [registered])
    assert os.path.basename(registered) not in names
    guard = unchanged()
    rejected(guard, InvalidArgumentError, ValueError, "'a/b'", store.suggest_data_file_name, "a/b")
    rejected(guard, InvalidArgumentTypeError, TypeError, "domain_name", store.suggest_model_file_name, 3)
    rejected(guard, InvalidArgumentError, ValueError, "domain_name", store.suggest_candidate_file_name, "")
    rejected(guard, UnknownEntryTypeError, ValueError, "'model'", store._suggest_entry_file_name, "model", "EOS")
