"""Contract: versions, files, find and search (SPEC "Versions", "Finding, searching").

Also application isolation: two applications sharing one database never see
each other's entries.
"""

from __future__ import annotations

import pytest

from ams import AMSDataStore, AMSModelDescr, UQAggregate, UQType
from ams.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    UnknownEntryTypeError,
)

from conftest import rejected

ENTRY_KEYS = {"id", "application_name", "domain_name", "filename", "entry_type", "version", "metadata"}


def names(found):
    return sorted(e["filename"] for e in found)


@pytest.fixture
def filled(store, make_h5, make_model):
    """EOS data v1 (2 files), v2 (1), v5 (2); EOS candidates v1; HYD data v1; EOS models v1, v2."""
    f = {name: make_h5(f"{name}.h5") for name in ("d1a", "d1b", "d2", "d5a", "d5b", "c1", "h1")}
    store.add_data("EOS", [f["d1a"], f["d1b"]], metadata={"cycle": 1, "tag": "a"})
    store.add_data("EOS", [f["d2"]], metadata={"cycle": 2, "tag": "b"})
    store.add_data("EOS", [f["d5a"]], version=5, metadata={"cycle": 5, "tag": "a"})
    store.add_data("EOS", [f["d5b"]], version=5, metadata={"cycle": 6, "tag": "b"})
    store.add_candidates("EOS", [f["c1"]], metadata={"tag": "a"})
    store.add_data("HYD", [f["h1"]], metadata={"tag": "a"})
    f["m1"] = make_model("m1.pt")
    f["m2"] = make_model("m2.pt")
    store.add_model("EOS", AMSModelDescr(f["m1"], 0.5, UQType.Random), 0.2, 0.15)
    store.add_model("EOS", AMSModelDescr(f["m2"], 0.5, UQType.DeltaUQ, UQAggregate.max), 0.1, 0.05)
    return f


# ------------------------------------------------------------------ versions and files
def test_versions_and_files(store, filled):
    f = filled
    assert store.get_data_versions("EOS") == [1, 2, 5]
    assert store.get_data_versions("EOS", associate_files=True) == {
        1: sorted([f["d1a"], f["d1b"]]), 2: [f["d2"]], 5: sorted([f["d5a"], f["d5b"]])}
    assert store.get_candidate_versions("EOS") == [1]
    assert store.get_candidate_versions("EOS", True) == {1: [f["c1"]]}
    assert store.get_model_versions("EOS") == [1, 2]
    assert store.get_model_versions("EOS", True) == {1: [f["m1"]], 2: [f["m2"]]}
    assert store.get_data_versions("HYD", True) == {1: [f["h1"]]}
    assert store.get_model_versions("HYD") == [] and store.get_model_versions("HYD", True) == {}
    assert store.get_data_versions("nowhere") == [] and store.get_data_versions("nowhere", True) == {}
    assert store._get_entry_versions("EOS", "candidates") == [1]
    assert all(type(v) is int for v in store.get_data_versions("EOS") + list(store.get_data_versions("EOS", True)))
    # get_files: None, "latest", an int, a list
    every = [f["d1a"], f["d1b"], f["d2"], f["d5a"], f["d5b"]]
    assert sorted(store.get_data_files("EOS")) == sorted(every)
    assert sorted(store.get_files("EOS", "data", None)) == sorted(every)
    assert sorted(store.get_data_files("EOS", "latest")) == sorted([f["d5a"], f["d5b"]])
    assert store.get_data_files("EOS", 2) == [f["d2"]]
    assert sorted(store.get_data_files("EOS", [2, 5])) == sorted([f["d2"], f["d5a"], f["d5b"]])
    assert sorted(store.get_data_files("EOS", (1, 5, 99))) == sorted([f["d1a"], f["d1b"], f["d5a"], f["d5b"]])
    assert store.get_data_files("EOS", [3]) == [] and store.get_data_files("EOS", 3) == []
    assert store.get_data_files("EOS", []) == []
    assert store.get_model_files("EOS", "latest") == [f["m2"]]
    assert store.get_model_files("EOS") == [f["m1"], f["m2"]]
    assert store.get_candidate_files("EOS", 1) == [f["c1"]]
    assert store.get_files("HYD", "data", "latest") == [f["h1"]]
    for versions in (None, "latest", 1, [1, 2]):  # unknown domain: empty, not an error
        assert store.get_files("nowhere", "data", versions) == []
        assert store.get_model_files("nowhere", versions) == []
    assert store.get_candidate_files("HYD") == []


def test_rejections(store, filled, unchanged):
    """Reads cannot write, so the guard is checked after each group of rejected calls."""
    guard = unchanged()
    for versions, error, builtin, fragment in [
            ("newest", InvalidArgumentError, ValueError, "'newest'"),
            ("", InvalidArgumentError, ValueError, "''"),
            (-1, InvalidArgumentError, ValueError, "-1"),
            (1.5, InvalidArgumentTypeError, TypeError, "1.5"),
            (True, InvalidArgumentTypeError, TypeError, "True"),
            ([1, "two"], InvalidArgumentTypeError, TypeError, "'two'"),
            ({"v": 1}, InvalidArgumentTypeError, TypeError, "dict")]:
        rejected(None, error, builtin, fragment, store.get_data_files, "EOS", versions)
        rejected(None, error, builtin, fragment, store.get_files, "EOS", "models", versions)
    guard.check()
    for entry in ("model", "Data", "", None, "all"):
        rejected(None, UnknownEntryTypeError, ValueError, repr(entry), store.get_files, "EOS", entry)
        rejected(None, UnknownEntryTypeError, ValueError, repr(entry), store._get_entry_versions,
                 "EOS", entry)
    guard.check()
    for call in (store.get_data_versions, store.get_model_versions, store.get_candidate_versions,
                 store.get_data_files):
        rejected(None, InvalidArgumentTypeError, TypeError, "domain_name", call, None)
        rejected(None, InvalidArgumentTypeError, TypeError, "domain_name", call, 3)
        rejected(None, InvalidArgumentError, ValueError, "domain_name", call, "")
    for flag in ("yes", 1, None):
        rejected(None, InvalidArgumentTypeError, TypeError, repr(flag), store.get_data_versions, "EOS", flag)
    guard.check()
    # find and search
    rejected(None, UnknownEntryTypeError, ValueError, "'model'", store.find, "EOS", entry_type="model")
    rejected(None, UnknownEntryTypeError, ValueError, "'model'", store.search, "EOS", entry="model")
    for call in (store.find, store.search):
        rejected(None, InvalidArgumentTypeError, TypeError, "domain_name", call, 5)
        rejected(None, InvalidArgumentError, ValueError, "domain_name", call, "")
        rejected(None, InvalidArgumentTypeError, TypeError, "'newest'", call, version="newest")
        rejected(None, InvalidArgumentError, ValueError, "-2", call, version=-2)
        rejected(None, InvalidArgumentTypeError, TypeError, "True", call, version=True)
    rejected(None, InvalidArgumentTypeError, TypeError, "filename", store.find, filename=3)
    rejected(None, InvalidArgumentError, ValueError, "filename", store.find, filename="")
    guard.check()
    bad_filters = [
        ({"val_error": {"~": 1}}, "'~'"),
        ({"val_error": {}}, "no operator"),
        ({"tag": {"in": "abc"}}, "'in' needs a list"),
        ({"tag": {"in": 3}}, "'in' needs a list"),
        ({"cycle": {"<": [1, 2]}}, "'<' needs a number or a str"),
        ({"cycle": {">=": True}}, "'>=' needs a number or a str"),
        ({"cycle": None}, "None"),
        ({"cycle": {"==": float("nan")}}, "nan"),
        ({"cycle": {"<": {"nested": 1}}}, "dict"),
        ({3: 1}, "3"),
        ({"": 1}, "''"),
        ([("cycle", 1)], "list"),
        ("cycle=1", "str"),
    ]
    for conditions, fragment in bad_filters:
        rejected(None, InvalidMetadataError, ValueError, fragment, store.search, metadata=conditions)
    guard.check()


# ------------------------------------------------------------------ find
def test_find(store, filled, tmp_path, monkeypatch):
    f = filled
    everything = store.find()
    assert len(everything) == 9
    for entry in everything:
        assert set(entry) == ENTRY_KEYS
        assert isinstance(entry["id"], str) and entry["id"]
        assert entry["application_name"] == "app"
        assert isinstance(entry["version"], int) and isinstance(entry["metadata"], dict)
    assert len({e["id"] for e in everything}) == 9
    assert sorted(e["id"] for e in store.search()) == sorted(e["id"] for e in everything)  # stable ids
    assert names(store.find(domain_name="HYD")) == [f["h1"]]
    assert names(store.find(entry_type="candidates")) == [f["c1"]]
    assert names(store.find(domain_name="EOS", entry_type="data", version=1)) == sorted([f["d1a"], f["d1b"]])
    assert names(store.find(version=1)) == sorted([f["d1a"], f["d1b"], f["c1"], f["h1"], f["m1"]])
    # "latest" is per domain and entry
    assert names(store.find(version="latest")) == sorted([f["d5a"], f["d5b"], f["c1"], f["h1"], f["m2"]])
    assert names(store.find("EOS", entry_type="data", version="latest")) == sorted([f["d5a"], f["d5b"]])
    (entry,) = store.find(filename=f["d2"])
    assert (entry["domain_name"], entry["entry_type"], entry["version"]) == ("EOS", "data", 2)
    assert entry["metadata"]["cycle"] == 2 and entry["metadata"]["tag"] == "b"
    monkeypatch.chdir(tmp_path / "files")  # a relative filename is resolved
    assert names(store.find(filename="d2.h5")) == [f["d2"]]
    (tmp_path / "link.h5").symlink_to(f["d2"])
    assert names(store.find(filename=tmp_path / "link.h5")) == [f["d2"]]  # symlinks resolved
    assert store.find(filename=f["d2"], version=1) == []
    assert store.find(filename=f["d2"], entry_type="candidates") == []
    assert store.find(filename=str(tmp_path / "unknown.h5")) == []
    assert store.find(domain_name="nowhere") == []
    assert store.find(domain_name="eos") == []  # case-sensitive
    assert store.find(version=42) == []


# ------------------------------------------------------------------ search
def test_search(store, filled, make_h5):
    f = filled
    assert names(store.search()) == names(store.find())
    assert names(store.search(metadata={})) == names(store.find())
    assert names(store.search(metadata=None)) == names(store.find())
    assert names(store.search("EOS", "data", metadata={"tag": "a"})) == sorted([f["d1a"], f["d1b"], f["d5a"]])
    assert names(store.search(metadata={"tag": "a"})) == sorted([f["d1a"], f["d1b"], f["d5a"], f["c1"], f["h1"]])
    assert names(store.search("EOS", "data", 5, {"tag": "a"})) == [f["d5a"]]
    assert names(store.search(metadata={"tag": "a", "cycle": 1})) == sorted([f["d1a"], f["d1b"]])
    assert store.search(metadata={"tag": "A"}) == []  # case-sensitive values
    assert store.search(metadata={"Tag": "a"}) == []  # and keys
    assert store.search(metadata={"missing": 1}) == []
    assert names(store.search(metadata={"cycle": 2.0})) == [f["d2"]]  # 2 == 2.0
    assert names(store.search(entry="models", metadata={"uq_type": "deltaUQ"})) == [f["m2"]]
    assert names(store.search(entry="models", metadata={"threshold": 0.5})) == [f["m1"], f["m2"]]
    assert names(store.search(metadata={"date": {">=": "2000-01-01"}})) == names(store.find())  # dates sort
    # "latest" applies after the metadata filter, per domain and entry
    # highest version overall is 5, but among tag == "b" the matches are v2 and v5
    assert names(store.search("EOS", "data", "latest", {"tag": "b"})) == [f["d5b"]]
    assert names(store.search("EOS", "data", "latest", {"cycle": {"<": 5}})) == [f["d2"]]
    assert names(store.search("EOS", "data", "latest", {"cycle": 1})) == sorted([f["d1a"], f["d1b"]])
    assert names(store.search("EOS", "data", "latest", {"tag": "a"})) == [f["d5a"]]
    assert names(store.search(version="latest", metadata={"tag": "a"})) == sorted([f["d5a"], f["c1"], f["h1"]])
    assert names(store.search("EOS", version="latest", metadata={"tag": "a"})) == sorted([f["d5a"], f["c1"]])
    assert names(store.search("EOS", "models", "latest", {"val_error": {"<": 0.1}})) == [f["m2"]]
    assert names(store.search("EOS", "models", "latest", {"val_error": {">": 0.1}})) == [f["m1"]]
    assert store.search("EOS", "models", "latest", {"val_error": {">": 1}}) == []
    assert names(store.search(version="latest")) == names(store.find(version="latest"))
    store.add_candidates("EOS", [make_h5("c2.h5")], version=4, metadata={"tag": "b"})
    assert names(store.search("EOS", "candidates", "latest", {"tag": "a"})) == [f["c1"]]


def test_search_operators(store, make_h5):
    files = {}
    rows = {"a": {"err": 0.05, "n": 1, "name": "alpha", "flag": True, "list": [1, 2]},
            "b": {"err": 0.1, "n": 2, "name": "beta", "flag": False, "list": [3]},
            "c": {"err": 0.2, "n": 3, "name": "gamma", "flag": True, "list": ["x"]},
            "d": {"other": "no err"}}
    for key, metadata in rows.items():
        files[key] = make_h5(f"{key}.h5")
        store.add_data("EOS", [files[key]], metadata=metadata)

    def hits(conditions):
        return sorted(k for k, p in files.items() if p in names(store.search("EOS", "data", metadata=conditions)))

    assert hits({"err": {"<": 0.1}}) == ["a"]
    assert hits({"err": {"<=": 0.1}}) == ["a", "b"]
    assert hits({"err": {">": 0.1}}) == ["c"]
    assert hits({"err": {">=": 0.1}}) == ["b", "c"]
    assert hits({"err": {"==": 0.1}}) == ["b"]
    assert hits({"err": {"!=": 0.1}}) == ["a", "c"]  # entries without the key never match
    assert hits({"err": {">": 0.01, "<": 0.15}}) == ["a", "b"]  # operators of one key are ANDed
    assert hits({"err": {"<": 1}, "n": {">": 1}}) == ["b", "c"]  # keys are ANDed
    assert hits({"n": {"in": [1, 3, 7]}}) == ["a", "c"]
    assert hits({"name": {"in": ("beta", "delta")}}) == ["b"]
    assert hits({"name": {">=": "beta"}}) == ["b", "c"]  # strings compare as strings
    assert hits({"name": {"<": 5}}) == []  # no cross-type ordering
    assert hits({"n": {"<": "z"}}) == []
    assert hits({"flag": True}) == ["a", "c"]
    assert hits({"n": True}) == []  # True is not 1
    assert hits({"flag": 1}) == []
    assert hits({"flag": {"!=": True}}) == ["b"]
    assert hits({"list": [1, 2]}) == ["a"]  # list equality
    assert hits({"list": {"in": [[3], ["x"]]}}) == ["b", "c"]
    assert hits({"list": {">": 0}}) == []
    assert hits({"other": {"in": ["no err"]}}) == ["d"]


# ------------------------------------------------------------------ applications
def test_applications_are_isolated(store, store_url, make_h5, make_model):
    mine, theirs, their_model = make_h5("mine.h5"), make_h5("theirs.h5"), make_model("theirs.pt")
    store.add_data("EOS", [mine], metadata={"owner": "app"})
    store.add_data("EOS", [make_h5()], metadata={"owner": "app"})
    with AMSDataStore("other", store_url) as other:
        assert other.get_data_versions("EOS") == []
        assert other.get_data_files("EOS") == [] and other.find() == [] and other.search() == []
        assert other.add_data("EOS", [theirs], metadata={"owner": "other"}) == 1  # own versions
        other.add_model("EOS", AMSModelDescr(their_model, 0.5, UQType.Random), 0.1, 0.1)
        assert other.get_data_files("EOS") == [theirs]
        assert other.get_model_files("EOS", "latest") == [their_model]
        assert {e["application_name"] for e in other.find()} == {"other"}
        assert other.find(filename=mine) == []
        assert other.search(metadata={"owner": "app"}) == []
        report = other.remove_data("EOS", [mine])  # not theirs to remove
        assert report.removed == [] and report.not_found == [mine]
    assert store.get_data_versions("EOS") == [1, 2]
    assert theirs not in store.get_data_files("EOS") and mine in store.get_data_files("EOS")
    assert store.get_model_files("EOS") == []
    assert store.find(filename=theirs) == [] and store.search(metadata={"owner": "other"}) == []
    assert {e["application_name"] for e in store.find()} == {"app"}
    assert store.remove_data("EOS", [theirs]).not_found == [theirs]
    with AMSDataStore("other", store_url) as other:
        assert other.get_data_files("EOS") == [theirs]
    with AMSDataStore("APP", store_url) as upper:  # application names are case-sensitive
        assert upper.find() == []


def test_an_unknown_domain_is_named_with_the_domains_that_exist(store, make_h5, caplog):
    store.add_data("EOS", [make_h5()])
    with caplog.at_level("WARNING", logger="ams.store"):
        assert store.get_data_files("EOZ") == [] and store.find("EOZ") == []
    hints = [r.getMessage() for r in caplog.records if "no domain" in r.getMessage()]
    assert hints == ["no domain 'EOZ' in application 'app' (domains: EOS)"] * 2
    caplog.clear()
    with caplog.at_level("WARNING", logger="ams.store"):
        assert store.search("EOS", "models") == []  # a known domain: an empty answer, no hint
    assert not caplog.records
