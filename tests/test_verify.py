"""``AMSDataStore.verify``: records whose file is missing or changed, and the repair.

Files are deleted and rewritten for real behind the store's back; the change is
detected with Kosh's own ``fast_sha`` stored at registration (also for files
plain Kosh registered). Without ``repair`` verify writes nothing; with it, it
drops only the records of missing files and never touches a file.
"""

from __future__ import annotations

import os
import shutil

import pytest
from test_kosh_layout import plain_kosh, prepare_for_plain_kosh

from ams import AMSDataStore, AMSModelDescr, UQType, VerifyReport
from ams.errors import ReadOnlyStoreError

from conftest import snapshot_files, snapshot_store

ENTRY_KEYS = {"id", "application_name", "domain_name", "entry_type", "version", "filename"}


def rewrite(path: str, make_h5) -> None:
    """Replace ``path``'s content by another real HDF5 file (same name, new bytes)."""
    other = make_h5(rows=7, seed=12345)
    shutil.copyfile(other, path)
    os.remove(other)


@pytest.fixture
def filled(store, make_h5, make_model):
    """data v1 (two files), candidates v1, models v1 in EOS; data v1 in HYD."""
    paths = {"a": make_h5(), "b": make_h5(), "cand": make_h5(), "hyd": make_h5(),
             "model": make_model()}
    store.add_data("EOS", [paths["a"], paths["b"]], metadata={"cycle": 1})
    store.add_candidates("EOS", [paths["cand"]])
    store.add_model("EOS", AMSModelDescr(paths["model"], 0.5, UQType.Random), 0.1, 0.2)
    store.add_data("HYD", [paths["hyd"]])
    return paths


def test_a_sound_store_verifies_ok(store, store_url, filled):
    before = snapshot_store(store.url)
    report = store.verify()
    assert isinstance(report, VerifyReport)
    assert report.ok and report.checked == 5
    assert report.missing == report.changed == report.unreadable == report.repaired == []
    assert report.to_dict() == {"ok": True, "checked": 5, "missing": [], "changed": [],
                                "unreadable": [], "repaired": [], "stray_copies": [],
                                "unpurged": [], "cleaned": []}
    assert store.verify("HYD").checked == 1 and store.verify("nowhere").checked == 0
    with AMSDataStore("app", store_url, read_only=True) as reader:  # a reader may verify
        assert reader.verify().ok
    assert snapshot_store(store.url) == before


def test_missing_and_changed_files_are_reported(store, filled, make_h5, tmp_path):
    os.remove(filled["a"])
    rewrite(filled["cand"], make_h5)
    os.remove(filled["hyd"])
    before = snapshot_store(store.url)
    report = store.verify()
    assert not report.ok and report.checked == 5
    assert [(e["domain_name"], e["entry_type"], e["version"], e["filename"])
            for e in report.missing] == [("EOS", "data", 1, filled["a"]),
                                         ("HYD", "data", 1, filled["hyd"])]
    (changed,) = report.changed
    assert set(changed) == ENTRY_KEYS | {"registered_fast_sha", "current_fast_sha"}
    assert (changed["entry_type"], changed["filename"]) == ("candidates", filled["cand"])
    assert changed["registered_fast_sha"] != changed["current_fast_sha"]
    assert all(set(e) == ENTRY_KEYS and e["application_name"] == "app" for e in report.missing)
    assert report.missing[0]["id"] == store.find(filename=filled["a"])[0]["id"]
    as_dict = report.to_dict()
    assert as_dict["ok"] is False and len(as_dict["missing"]) == 2 and as_dict["repaired"] == []
    # One domain only.
    eos = store.verify("EOS")
    assert [e["filename"] for e in eos.missing] == [filled["a"]] and len(eos.changed) == 1
    assert store.verify("HYD").checked == 1
    assert snapshot_store(store.url) == before  # verify alone writes nothing


def test_repair_drops_only_records_of_missing_files(store, filled, make_h5, tmp_path):
    os.remove(filled["a"])
    os.remove(filled["hyd"])
    rewrite(filled["cand"], make_h5)
    files = snapshot_files(tmp_path / "files", tmp_path / "models")
    report = store.verify(repair=True)
    assert report.repaired == sorted([filled["a"], filled["hyd"]])
    assert not report.ok  # the changed candidate is reported, not repaired
    assert snapshot_files(tmp_path / "files", tmp_path / "models") == files  # no file touched
    assert store.get_data_files("EOS") == [filled["b"]]
    assert store.get_data_versions("HYD") == []  # its only file gone: the dataset too
    assert store.get_candidate_files("EOS") == [filled["cand"]]
    again = store.verify()
    assert again.missing == [] and len(again.changed) == 1 and again.checked == 3
    # With only missing files, a repair leaves the store ok.
    os.remove(filled["b"])
    repaired = store.verify("EOS", repair=True)
    assert repaired.repaired == [filled["b"]] and len(repaired.changed) == 1
    assert store.get_data_versions("EOS") == []


def test_repair_of_missing_only_is_ok(store, filled):
    os.remove(filled["model"])
    report = store.verify(repair=True)
    assert report.ok and report.repaired == [filled["model"]]
    assert [e["entry_type"] for e in report.missing] == ["models"]
    assert store.get_model_versions("EOS") == [] and store.verify().ok


def test_repair_refused_on_a_read_only_store(store, store_url, filled, unchanged):
    os.remove(filled["a"])
    guard = unchanged()
    with AMSDataStore("app", store_url, read_only=True) as reader:
        assert [e["filename"] for e in reader.verify().missing] == [filled["a"]]
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            reader.verify(repair=True)
    guard.check()


def test_other_applications_are_not_checked_legacy_ensembles_are(store, store_url, make_h5):
    ours, theirs, legacy, legacy_changed = make_h5(), make_h5(), make_h5(), make_h5()
    store.add_data("EOS", [ours])
    with AMSDataStore("other", store_url) as other:
        other.add_data("EOS", [theirs])
    prepare_for_plain_kosh(store.url)
    with plain_kosh(store.url) as kosh_store:  # the original backend: no application_name
        dataset = kosh_store.create_ensemble(name="OLD").create(name="data",
                                                                metadata={"version": 0})
        for path in (legacy, legacy_changed):
            dataset.associate(path, mime_type="hdf5", absolute_path=True)
    for path in (ours, theirs, legacy):
        os.remove(path)
    rewrite(legacy_changed, make_h5)
    report = store.verify()
    assert report.checked == 3
    assert {(e["application_name"], e["filename"]) for e in report.missing} == {
        ("app", ours), (None, legacy)}
    assert [e["filename"] for e in report.changed] == [legacy_changed]  # Kosh's own fast_sha
    assert store.verify(repair=True).repaired == sorted([ours, legacy])
    with AMSDataStore("other", store_url) as other:  # untouched, still missing for them
        assert [e["filename"] for e in other.verify().missing] == [theirs]
