"""Contract: adding data, candidates and models (SPEC "Versions", "Adding", "Case and text").

Every rejected call is checked for its ``ams.errors`` type, the built-in it
derives from, a message naming the bad value, and an unchanged store and disk.
Tests are few and full (each store test costs a fresh MariaDB database).
"""

from __future__ import annotations

import copy
import datetime
import inspect
import math
import os
import re
import zipfile

import pytest

from ams import AMSDataStore, AMSModelDescr, UQAggregate, UQType
from ams.errors import (
    AMSStoreError,
    DuplicateEntryError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    MissingFileError,
    UnknownEntryTypeError,
    WrongFileFormatError,
)

from conftest import count_records, rejected

DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$")


# ------------------------------------------------------------------ versions
def test_versions(store, make_h5):
    files = [make_h5() for _ in range(8)]
    assert store.add_data("EOS", files[:2]) == 1  # first auto version is 1
    assert store.add_data("EOS", files[2:3]) == 2
    assert store.add_data("EOS", files[3:4], version=7) == 7  # explicit creates
    assert store.add_data("EOS", files[4:5]) == 8  # max + 1
    assert store.add_data("EOS", files[5:6], version=2) == 2  # explicit appends
    assert store.get_data_versions("EOS") == [1, 2, 7, 8]
    assert store.get_data_versions("EOS", associate_files=True) == {
        1: sorted(files[:2]), 2: sorted([files[2], files[5]]), 7: [files[3]], 8: [files[4]]}
    assert count_records(store, "dataset") == 4  # one dataset per version, 2 appended in place
    # versions are per entry type and per domain
    assert store.add_candidates("EOS", files[6:7]) == 1
    assert store.add_data("HYD", files[7:8]) == 1
    assert store.get_candidate_versions("EOS") == [1]
    assert store.get_data_versions("HYD") == [1]
    assert store.get_model_versions("EOS") == []
    # the original backend started at version 0: an explicit 0 is kept, auto continues at 1
    a, b, c = make_h5(), make_h5(), make_h5()
    assert store.add_candidates("OLD", [a], version=0) == 0
    assert store.add_candidates("OLD", [b], version=0) == 0
    assert store.add_candidates("OLD", [c]) == 1
    assert store.get_candidate_versions("OLD", True) == {0: sorted([a, b]), 1: [c]}
    # one call puts all its files in one version (one dataset)
    many = [make_h5() for _ in range(5)]
    before = count_records(store, "dataset")
    assert store.add_data("ONE", many) == 1
    assert count_records(store, "dataset") == before + 1
    assert [e["version"] for e in store.find(domain_name="ONE")] == [1] * 5


BAD_VERSIONS = [
    (-1, InvalidArgumentError, ValueError, "-1"),
    (2**31, InvalidArgumentError, ValueError, str(2**31)),
    ("one", InvalidArgumentTypeError, TypeError, "'one'"),
    (" 1", InvalidArgumentTypeError, TypeError, "' 1'"),
    (1.0, InvalidArgumentTypeError, TypeError, "1.0"),
    (True, InvalidArgumentTypeError, TypeError, "True"),
    ("latest", InvalidArgumentTypeError, TypeError, "'latest'"),
]


def test_bad_arguments_rejected(store, make_h5, make_model, tmp_path, unchanged):
    a = make_h5()
    store.add_data("EOS", [a])
    h5 = make_h5()
    alias = tmp_path / "alias.h5"
    alias.symlink_to(h5)
    model = AMSModelDescr(make_model(), 0.5, UQType.Random)
    guard = unchanged()
    for version, error, builtin, fragment in BAD_VERSIONS:
        rejected(None, error, builtin, fragment, store.add_data, "EOS", [h5], version=version)
        rejected(None, error, builtin, fragment, store.add_candidates, "EOS", [h5], version=version)
        rejected(None, error, builtin, fragment, store.add_model, "EOS", model, 0.1, 0.2, version=version)
        guard.check()
    rejected(guard, InvalidArgumentTypeError, TypeError, "wrap it in a list", store.add_data, "EOS", h5)
    rejected(guard, InvalidArgumentTypeError, TypeError, "int", store.add_data, "EOS", 5)
    rejected(guard, InvalidArgumentTypeError, TypeError, "None", store.add_data, "EOS", [h5, None])
    rejected(guard, InvalidArgumentError, ValueError, "no files", store.add_data, "EOS", [])
    rejected(guard, InvalidArgumentError, ValueError, "no files", store.add_candidates, "EOS")
    rejected(guard, InvalidArgumentError, ValueError, "more than once", store.add_data, "EOS", [h5, h5])
    rejected(guard, InvalidArgumentError, ValueError, repr(h5), store.add_data, "EOS", [h5, str(alias)])
    rejected(guard, InvalidArgumentTypeError, TypeError, "domain_name", store.add_data, None, [h5])
    rejected(guard, InvalidArgumentTypeError, TypeError, "domain_name", store.add_candidates, 7, [h5])
    rejected(guard, InvalidArgumentError, ValueError, "domain_name", store.add_data, "", [h5])
    rejected(guard, UnknownEntryTypeError, ValueError, "'model'", store._add_entries, "EOS", "model", [h5])


# ------------------------------------------------------------------ files: all or none, duplicates
def test_all_or_none_and_duplicates(store, store_url, make_h5, make_model, tmp_path, unchanged):
    registered, elsewhere = make_h5("registered.h5"), make_h5("elsewhere.h5")
    store.add_data("EOS", [registered], version=3)
    store.add_candidates("HYD", [elsewhere])
    good = make_h5("good.h5")
    folder = tmp_path / "a_directory.h5"
    folder.mkdir()
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    model = make_model()
    missing = str(tmp_path / "missing.h5")
    where = "application 'app', domain 'EOS', entry 'data', version 3"
    guard = unchanged()
    for add in (store.add_data, store.add_candidates):  # one bad file: nothing of the call
        rejected(guard, MissingFileError, FileNotFoundError, missing, add, "EOS", [good, missing])
        rejected(guard, MissingFileError, FileNotFoundError, str(folder), add, "EOS", [good, str(folder)])
        rejected(guard, WrongFileFormatError, ValueError, str(text), add, "EOS", [good, str(text)])
        rejected(guard, WrongFileFormatError, ValueError, str(empty), add, "EOS", [good, str(empty)])
        rejected(guard, WrongFileFormatError, ValueError, model, add, "EOS", [good, model])
        error = rejected(guard, DuplicateEntryError, ValueError, where, add, "EOS", [good, registered])
        assert repr(registered) in str(error)
    rejected(guard, DuplicateEntryError, ValueError, "domain 'HYD', entry 'candidates', version 1",
             store.add_data, "EOS", [elsewhere], version=3)
    with AMSDataStore("other", store_url) as other:  # a path belongs to one application only
        rejected(guard, DuplicateEntryError, ValueError, where, other.add_data, "EOS", [registered])
    assert store.find(filename=good) == []
    assert store.get_data_files("EOS") == [registered]


def test_paths_names_case_and_limits(store, make_h5, tmp_path, monkeypatch, unchanged):
    # stored absolute and resolved
    real = make_h5("real.h5")
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    monkeypatch.chdir(tmp_path / "files")
    relative = make_h5("relative.h5")
    odd = make_h5("it's 100% [odd] \\ name; DROP TABLE Record.h5")
    store.add_data("PATHS", [str(link), "./relative.h5", odd])
    assert store.get_data_files("PATHS") == sorted([real, relative, odd])
    assert store.find(filename=odd)[0]["filename"] == odd
    # case-sensitive and Unicode: domains and paths
    upper = make_h5("A.h5")
    lower = make_h5("a.h5")
    assert not os.path.samefile(upper, lower)
    lower_elsewhere = make_h5("a.h5", directory=tmp_path / "lower")
    unicode_file = make_h5("dätä_🙂.h5")
    assert store.add_data("EOS", [upper]) == 1
    assert store.add_data("eos", [lower]) == 1  # another domain: its own versions
    assert store.add_data("EOS", [lower_elsewhere, unicode_file]) == 2
    assert store.add_data("ÉOS☃", [make_h5()]) == 1
    assert store.get_data_files("EOS") == sorted([upper, lower_elsewhere, unicode_file])
    assert store.get_data_files("eos") == [lower]
    assert [e["domain_name"] for e in store.find(filename=lower)] == ["eos"]
    assert store.find(filename=unicode_file)[0]["version"] == 2
    assert sorted({e["domain_name"] for e in store.find()}) == sorted(["PATHS", "EOS", "eos", "ÉOS☃"])
    assert store.get_data_versions("Eos") == []
    # limits: names up to 255 characters, paths up to 1500 once resolved (MariaDB's indexable uri)
    longest_domain = "D" * 254 + "🙂"
    assert store.add_data(longest_domain, [make_h5()]) == 1
    assert store.find(domain_name=longest_domain)[0]["domain_name"] == longest_domain
    deep = tmp_path
    while len(str(deep)) < 1500:
        deep = deep / ("d" * 200)
    too_long = make_h5("x.h5", directory=deep)
    short = make_h5()
    guard = unchanged()
    rejected(guard, InvalidArgumentError, ValueError, "1500", store.add_data, "EOS", [too_long])
    rejected(guard, InvalidArgumentError, ValueError, "255", store.add_data, "D" * 256, [short])
    rejected(guard, InvalidArgumentError, ValueError, "NUL", store.add_data, "EOS", ["a\x00b.h5"])
    rejected(guard, InvalidArgumentError, ValueError, "not valid Unicode", store.add_data, "E\udc80", [short])


# ------------------------------------------------------------------ metadata
ROUND_TRIP = {
    "int": 3, "negative": -7, "zero": 0, "big": 2**63 - 1, "small": -2**63,
    "float": 0.1, "tiny": 5e-324, "huge": 1.7976931348623157e308, "negative_float": -1.5,
    "str": "hello", "empty_str": "", "bool_true": True, "bool_false": False,
    "ints": [1, 2, 3], "floats": [0.5, 1.25], "numbers": [1, 2.5], "strs": ["a", "B", ""],
    "bools": [True, False], "empty_list": [],
    "unicode ключ ☃": "Ünïcødé 日本語 🚀", "emoji": ["🙂", "é"],
    "Case": "upper", "case": "lower", "CASE": "UPPER",
    "path": "/not/a/model/path", "version": 99, "name": "not the dataset name",
    "long": "x" * 5000, "longest": "🙂" * 15000, "k" * 255: "the longest key",
    "nul": "a\x00b", "spaces": " a ", "newline": "a\nb", "quote": "it's \"quoted\" \\",
}


def test_metadata_round_trip(store, store_url, make_h5, make_model):
    defaults = {name: inspect.signature(getattr(AMSDataStore, name)).parameters["metadata"].default
                for name in ("add_data", "add_candidates", "add_model")}
    given = copy.deepcopy(ROUND_TRIP)
    data, cand = make_h5(), make_h5()
    store.add_data("EOS", [data], metadata=given)
    store.add_candidates("EOS", [cand], metadata=given)
    assert given == ROUND_TRIP  # the caller's dict is not touched (no 'date' added)
    for path in (data, cand):
        (entry,) = store.find(filename=path)
        metadata = dict(entry["metadata"])
        date = metadata.pop("date")
        assert DATE.match(date)
        assert abs(datetime.datetime.fromisoformat(date) - datetime.datetime.now()).total_seconds() < 600
        assert metadata == ROUND_TRIP
        for key, value in ROUND_TRIP.items():  # types survive, not just values
            assert type(metadata[key]) is type(value), key
            if isinstance(value, list):
                assert [type(v) for v in metadata[key]] == [type(v) for v in value], key
    with AMSDataStore("app", store_url) as again:  # a new connection reads the same values
        (entry,) = again.find(filename=data)
        assert {k: v for k, v in entry["metadata"].items() if k != "date"} == ROUND_TRIP
    # case-sensitive search on keys and values
    assert [e["filename"] for e in store.search("EOS", "data", metadata={"Case": "upper"})] == [data]
    assert store.search("EOS", "data", metadata={"Case": "UPPER"}) == []
    assert store.search("EOS", "data", metadata={"unicode ключ ☃": "Ünïcødé 日本語 🚀"})[0]["filename"] == data
    # default arguments are never mutated (the original wrote 'date' into them)
    plain = [make_h5(), make_h5()]
    store.add_data("PLAIN", [plain[0]])
    store.add_candidates("PLAIN", [plain[1]])
    store.add_model("PLAIN", AMSModelDescr(make_model(), 0.5, UQType.Random), 0.1, 0.2)
    for name, default in defaults.items():
        now = inspect.signature(getattr(AMSDataStore, name)).parameters["metadata"].default
        assert now == default and not now, name
    for entry in store.find(domain_name="PLAIN"):
        assert DATE.match(entry["metadata"]["date"])
        assert "k" not in entry["metadata"] and "Case" not in entry["metadata"]
    assert set(store.find(domain_name="PLAIN", entry_type="data")[0]["metadata"]) == {"date"}


BAD_METADATA = [
    ({"k": None}, "None"),
    ({"k": math.nan}, "nan"),
    ({"k": math.inf}, "inf"),
    ({"k": -math.inf}, "-inf"),
    ({"k": 2**63}, str(2**63)),
    ({"k": -2**63 - 1}, str(-2**63 - 1)),
    ({"k": {1: "nested"}}, "dict value"),
    ({"k": {"nested": (1, 2)}}, "tuple"),
    ({"k": [1, "a"]}, "mixes types"),
    ({"k": [True, 1]}, "mixes types"),
    ({"k": [[1], [2]]}, "list"),
    ({"k": [1.0, math.nan]}, "nan"),
    ({"k": [None]}, "None"),
    ({"k": (1, 2)}, "tuple"),
    ({"k": b"bytes"}, "bytes"),
    ({"k": {1, 2}}, "set"),
    ({"k": "x" * 15001}, "15001"),
    ({"k": "bad \udc80 surrogate"}, "not valid Unicode"),
    ({1: "int key"}, "int"),
    ({"": "empty key"}, "''"),
    ({"k" * 256: 1}, "255"),
    ({"bad \ud800 key": 1}, "not valid Unicode"),
    ({"date": "2020-01-01"}, "'date'"),
    ({"uri": "/x"}, "'uri'"),
    ({"mime_type": "zip"}, "'mime_type'"),
    ({"associated": ["x"]}, "'associated'"),
    ({"fast_sha": "x"}, "'fast_sha'"),
    ({"creation_date": "x"}, "'creation_date'"),
]


def test_rejected_metadata(store, make_h5, make_model, unchanged):
    store.add_data("EOS", [make_h5()], metadata={"k": 1})
    h5 = make_h5()
    model = AMSModelDescr(make_model(), 0.5, UQType.DeltaUQ, UQAggregate.max)
    adds = {
        "data": lambda m: store.add_data("EOS", [h5], metadata=m),
        "candidates": lambda m: store.add_candidates("EOS", [h5], metadata=m),
        "models": lambda m: store.add_model("EOS", model, 0.1, 0.2, metadata=m),
    }
    guard = unchanged()
    for metadata, fragment in BAD_METADATA:
        for add in adds.values():
            error = rejected(None, InvalidMetadataError, ValueError, fragment, add, metadata)
            assert "metadata" in str(error)
        guard.check()
    for add in adds.values():
        rejected(guard, InvalidArgumentTypeError, TypeError, "list", add, [("k", 1)])
        rejected(guard, InvalidArgumentTypeError, TypeError, "str", add, "k=1")
    for key in ("path", "threshold", "uq_type", "uq_aggregate", "test_error", "val_error"):
        rejected(guard, InvalidMetadataError, ValueError, repr(key), adds["models"], {key: 1})
    assert len(store.find()) == 1


# ------------------------------------------------------------------ models
def test_add_model(store, make_model, make_h5, tmp_path, unchanged):
    path = make_model()
    model = AMSModelDescr(path, 0.25, UQType.DeltaUQ, UQAggregate.mean)
    assert store.add_model("EOS", model, 0.125, 0.0625, metadata={"epochs": 10, "arch": "mlp"}) == 1
    random_model = AMSModelDescr(make_model(), 1, "Random")
    assert store.add_model("EOS", random_model, 1, 2, version=5) == 5
    faiss = AMSModelDescr(make_model(), 0.5, UQType.Faiss, "max")
    assert store.add_model("EOS", faiss, 0.3, 0.4) == 6
    (entry,) = store.find(filename=path)
    assert entry["entry_type"] == "models" and entry["version"] == 1
    metadata = dict(entry["metadata"])
    assert DATE.match(metadata.pop("date"))
    assert metadata == {"threshold": 0.25, "uq_type": "deltaUQ",
                        "uq_aggregate": "mean", "test_error": 0.125, "val_error": 0.0625,
                        "epochs": 10, "arch": "mlp"}
    (entry,) = store.find(filename=random_model.path, version=5)
    assert "uq_aggregate" not in entry["metadata"]  # None is not stored
    assert entry["metadata"]["uq_type"] == "random" and entry["metadata"]["threshold"] == 1.0
    assert store.get_model_files("EOS", "latest") == [faiss.path]
    assert [e["filename"] for e in store.search("EOS", "models", metadata={"val_error": {"<": 0.1}})] == [path]
    # rejections
    other = AMSModelDescr(make_model(), 0.5, UQType.Random)
    h5_model = AMSModelDescr(make_h5("looks_like.pt"), 0.5, UQType.Random)
    plain_zip = tmp_path / "plain.pt"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("plain/data.pkl", b"not a model")
    zipped = AMSModelDescr(str(plain_zip), 0.5, UQType.Random)
    import torch
    state_dict = tmp_path / "state.pt"
    torch.save(torch.nn.Linear(2, 1).state_dict(), str(state_dict))
    eager = AMSModelDescr(str(state_dict), 0.5, UQType.Random)
    gone = AMSModelDescr(make_model(), 0.5, UQType.Random)
    os.remove(gone.path)  # the file vanished after the description was made
    guard = unchanged()
    rejected(guard, InvalidArgumentTypeError, TypeError, "str", store.add_model, "EOS", other.path, 0.1, 0.2)
    for bad in ("0.1", None, True):
        rejected(guard, InvalidArgumentTypeError, TypeError, f"test_error must be a number, not {bad!r}",
                 store.add_model, "EOS", other, bad, 0.2)
        rejected(guard, InvalidArgumentTypeError, TypeError, f"val_error must be a number, not {bad!r}",
                 store.add_model, "EOS", other, 0.1, bad)
    rejected(guard, InvalidMetadataError, ValueError, "nan", store.add_model, "EOS", other, math.nan, 0.2)
    rejected(guard, InvalidMetadataError, ValueError, "inf", store.add_model, "EOS", other, 0.1, math.inf)
    rejected(guard, DuplicateEntryError, ValueError, "entry 'models', version 1",
             store.add_model, "EOS", model, 0.1, 0.2)
    rejected(guard, WrongFileFormatError, ValueError, h5_model.path, store.add_model, "EOS", h5_model, 0.1, 0.2)
    rejected(guard, WrongFileFormatError, ValueError, str(plain_zip), store.add_model, "EOS", zipped, 0.1, 0.2)
    rejected(guard, WrongFileFormatError, ValueError, str(state_dict), store.add_model, "EOS", eager, 0.1, 0.2)
    rejected(guard, MissingFileError, FileNotFoundError, gone.path, store.add_model, "EOS", gone, 0.1, 0.2)
    assert store.get_model_versions("EOS") == [1, 5, 6]


def test_model_descr_validation(make_model, tmp_path):
    path = make_model()
    link = tmp_path / "link.pt"
    link.symlink_to(path)
    descr = AMSModelDescr(str(link), 1, "deltauq", "MEAN")
    assert descr.path == path and descr.threshold == 1.0
    assert descr.uq_type is UQType.DeltaUQ and descr.uq_aggregate is UQAggregate.mean
    assert descr.to_dict() == {"path": path, "threshold": 1.0, "uq_type": "deltaUQ", "uq_aggregate": "mean"}
    assert AMSModelDescr(path, 0.5, UQType.Random).to_dict() == {"path": path, "threshold": 0.5,
                                                                 "uq_type": "random"}
    cases = [
        ((str(tmp_path / "nope.pt"), 0.5, UQType.Random), MissingFileError, FileNotFoundError, "nope.pt"),
        ((str(tmp_path), 0.5, UQType.Random), MissingFileError, FileNotFoundError, str(tmp_path)),
        ((42, 0.5, UQType.Random), InvalidArgumentTypeError, TypeError, "42"),
        (("", 0.5, UQType.Random), InvalidArgumentTypeError, TypeError, "''"),
        ((path, "0.5", UQType.Random), InvalidArgumentTypeError, TypeError, "'0.5'"),
        ((path, True, UQType.Random), InvalidArgumentTypeError, TypeError, "True"),
        ((path, math.nan, UQType.Random), InvalidArgumentError, ValueError, "nan"),
        ((path, 0.5, "bayes"), InvalidArgumentError, ValueError, "'bayes'"),
        ((path, 0.5, None), InvalidArgumentError, ValueError, "uq_type"),
        ((path, 0.5, UQType.DeltaUQ), InvalidArgumentError, ValueError, "DeltaUQ needs a uq_aggregate"),
        ((path, 0.5, UQType.Faiss), InvalidArgumentError, ValueError, "Faiss needs a uq_aggregate"),
        ((path, 0.5, UQType.Faiss, "median"), InvalidArgumentError, ValueError, "'median'"),
    ]
    for args, error, builtin, fragment in cases:
        with pytest.raises(error) as info:
            AMSModelDescr(*args)
        assert isinstance(info.value, builtin) and isinstance(info.value, AMSStoreError)
        assert fragment in str(info.value), (args, str(info.value))
