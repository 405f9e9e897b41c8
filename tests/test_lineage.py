"""Model-to-data lineage: ``add_model(trained_on=...)``, ``model_lineage`` and the purge guard."""

from __future__ import annotations

import os
import re

import pytest

from ams import AMSModelDescr, UQType
from ams.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    LineageError,
    NotFoundError,
)


@pytest.fixture
def trained(store, make_h5, make_model):
    """Data v1 (two files) and v2 (one), a spare v3, and model v1 trained on data 1 and 2."""
    v1 = [make_h5("a.h5"), make_h5("b.h5")]
    v2 = [make_h5("c.h5")]
    spare = [make_h5("spare.h5")]
    for files in (v1, v2, spare):
        store.add_data("EOS", files)
    model = make_model("m1.pt")
    store.add_model("EOS", AMSModelDescr(model, 0.5, UQType.Random), 0.1, 0.2,
                    trained_on=[2, 1], metadata={"epochs": 3})
    return {"v1": v1, "v2": v2, "spare": spare, "model": model}


def test_lineage_round_trip(store, trained, make_model):
    files = sorted(trained["v1"] + trained["v2"])
    (entry,) = store.search("EOS", "models", "latest", {"trained_on_data_versions": {"==": [1, 2]}})
    assert entry["filename"] == trained["model"]
    assert (entry["metadata"]["trained_on_data_versions"], entry["metadata"]["trained_on_files"],
            entry["metadata"]["epochs"]) == ([1, 2], files, 3)
    assert store.find(filename=trained["model"])[0]["metadata"]["trained_on_files"] == files

    assert store.model_lineage("EOS", 1) == {
        "domain_name": "EOS", "version": 1,
        "models": [{"filename": trained["model"], "data_versions": [1, 2], "present": files,
                    "missing": []}],
        "data_versions": [1, 2], "present": files, "missing": []}

    # The mapping form, an int, and a model without lineage.
    other = make_model("m2.pt")
    assert store.add_model("EOS", AMSModelDescr(other, 0.5, UQType.Random), 0.1, 0.2,
                           trained_on={"data": [3]}) == 2
    assert store.model_lineage("EOS", "latest")["present"] == trained["spare"]
    third = make_model("m3.pt")
    store.add_model("EOS", AMSModelDescr(third, 0.5, UQType.Random), 0.1, 0.2, version=2,
                    trained_on=1)
    plain = make_model("m4.pt")
    store.add_model("EOS", AMSModelDescr(plain, 0.5, UQType.Random), 0.1, 0.2)
    lineage = store.model_lineage("EOS", 2)
    assert [m["filename"] for m in lineage["models"]] == [other, third]
    assert (lineage["data_versions"], lineage["present"]) == \
        ([1, 3], sorted(trained["v1"] + trained["spare"]))
    assert store.model_lineage("EOS", 3)["models"] == [
        {"filename": plain, "data_versions": [], "present": [], "missing": []}]


def test_bad_trained_on_and_unknown_versions_change_nothing(store, trained, make_model, unchanged):
    descr = AMSModelDescr(make_model("m9.pt"), 0.5, UQType.Random)
    cases = [
        ([1, 7], NotFoundError, r"data version\(s\) 7 of domain 'EOS' do not exist "
                                r"\(existing: 1, 2, 3\)"),
        ({"data": [9]}, NotFoundError, "version.* 9 .*existing: 1, 2, 3"),
        ({"candidates": [1]}, InvalidArgumentError, "only the key 'data'.*'candidates'"),
        ({}, InvalidArgumentError, "needs the key 'data'"),
        ([], InvalidArgumentError, "lists no data version"),
        ([True], InvalidArgumentTypeError, "must be an int"),
        ([-1], InvalidArgumentError, "between 0 and"),
        ("latest", InvalidArgumentTypeError, "list of data versions"),
    ]
    for trained_on, error, message in cases:
        guard = unchanged()
        with pytest.raises(error, match=message):
            store.add_model("EOS", descr, 0.1, 0.2, trained_on=trained_on)
        guard.check()
    guard = unchanged()
    with pytest.raises(NotFoundError, match="do not exist .existing: none"):
        store.add_model("NEW", descr, 0.1, 0.2, trained_on=[1])
    with pytest.raises(InvalidMetadataError, match="'trained_on_files' is reserved"):
        store.add_model("EOS", descr, 0.1, 0.2, metadata={"trained_on_files": ["x"]})
    with pytest.raises(NotFoundError, match=r"no models version 5 in domain 'EOS' \(existing: 1\)"):
        store.model_lineage("EOS", 5)
    with pytest.raises(NotFoundError, match="existing: none"):
        store.model_lineage("ELSEWHERE", "latest")
    with pytest.raises(InvalidArgumentTypeError):
        store.model_lineage("EOS", "one")
    guard.check()


def test_purge_of_training_data_is_refused(store, trained, unchanged):
    guard = unchanged()
    model = re.escape(repr(trained["model"]))
    with pytest.raises(LineageError, match=r"refusing to purge 1 data file.*1 registered "
                                           rf"model.*{model} \(application 'app', domain 'EOS', "
                                           r"entry 'models', version 1\).*force=True"):
        store.remove_data("EOS", trained["v2"])
    with pytest.raises(LineageError, match="refusing to purge 3 data file"):
        store.remove_data("EOS", None, remove_all=True)  # everything of the entry
    with pytest.raises(RuntimeError):
        store.remove_data("EOS", None, version=1)
    guard.check()

    report = store.remove_data("EOS", trained["spare"])  # not training data: purged
    assert (report.removed, report.purged) == (trained["spare"], trained["spare"])
    assert not os.path.exists(trained["spare"][0])


def test_remove_without_purge_force_and_lifting_the_guard(store, trained):
    report = store.remove_data("EOS", [trained["v1"][0]], purge=False)
    assert (report.removed, report.purged) == ([trained["v1"][0]], [])
    assert os.path.exists(trained["v1"][0])
    lineage = store.model_lineage("EOS", 1)
    assert (lineage["missing"], lineage["present"]) == \
        ([trained["v1"][0]], sorted([trained["v1"][1]] + trained["v2"]))
    assert lineage["models"][0]["missing"] == [trained["v1"][0]]

    report = store.remove_data("EOS", trained["v2"], force=True)
    assert report.purged == trained["v2"]
    assert not os.path.exists(trained["v2"][0])
    assert store.model_lineage("EOS", 1)["missing"] == sorted([trained["v1"][0]] + trained["v2"])

    store.remove_models("EOS", [trained["model"]])  # no model left: the guard is lifted
    report = store.remove_data("EOS", [trained["v1"][1]])
    assert report.purged == [trained["v1"][1]]
