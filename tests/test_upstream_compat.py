"""The upstream AMS workflow's own call forms, both eras, against this package.

Re-enacts, with real HDF5 files and TorchScript models, the logic of the
original (Kosh-era, LLNL/AMS c15e5a7) ``tests/AMSWorkflow/test_store.py`` and
``test_stage.py``, of ``examples/tools/sub_selection.py`` and ``train.py``, of
``ams_jobs.AMSDomainJob._generate_ams_object`` and of both eras'
``ams_wf/AMSStore.py``; plus each compatibility call form (``ams.compat``),
``UQType`` values, result shapes and nested metadata. The calls are written
here as those scripts make them; no upstream code is copied.

The original constructor opens a Kosh (SQLite) file, so its tests run on
SQLite; everything else runs on SQLite and MariaDB.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import sqlalchemy as sa

from ams import AMSDataStore, AMSModelDescr, UQAggregate, UQType, compat, importer
from ams.errors import (
    AMSStoreError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    NotFoundError,
)
from ams.metadata_codec import JSON_KEYS
from ams.store import create_store_directories
from ams.store_types import EntryDict, FlatEntryDict

from conftest import snapshot_files, snapshot_store

REFERENCE_KEYS = ["id", "application_name", "domain_name", "filename", "entry_type", "version",
                  "metadata"]
TRAIN_ARGS = {"hidden1_features": 5, "hidden2_features": 396, "weight_decay": 0.000658,
              "learning_rate": 1e-4, "dropout": 0.061841,
              "schedule": {"kind": "step", "gamma": 0.5, "milestones": [10, 20], "warmup": None}}


# --------------------------------------------------------------------------- helpers
def write_h5(path, inputs, outputs) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle["inputs"] = inputs
        handle["outputs"] = outputs
    return str(path)


def read_h5(path):
    with h5py.File(path, "r") as handle:
        return handle["inputs"][...], handle["outputs"][...]


def write_model(path) -> str:
    import torch
    torch.manual_seed(0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 1))).save(str(path))
    return str(path)


def raw_file_data(url, path):
    """The Sina ``data`` of the file record of ``path``, read with SQL only."""
    engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT raw FROM Record WHERE type = :t"),
                                {"t": "file"}).all()
    finally:
        engine.dispose()
    datas = [json.loads(row[0])["data"] for row in rows]
    return next(d for d in datas if d["uri"]["value"] == path)


def kosh_attributes(url, domain, entry, path):
    """``listattributes(True)`` of ``path``'s association, through plain Kosh only."""
    from ams.notebook import connect_kosh
    kosh_store = connect_kosh(url)
    try:
        ensemble = next(kosh_store.find_ensembles(name=domain))
        for dataset in ensemble.find_datasets(name=entry):
            for associated in dataset.find():
                if associated.uri == path:
                    return associated.listattributes(True)
    finally:
        kosh_store.close()
    raise AssertionError(f"{path} not found through Kosh")


def original_store(root, name="ams_test", store_name="ams_store.sql", **kwargs):
    """``AMSDataStore(store_path, store_name, name)`` as the Kosh-era scripts build it."""
    return AMSDataStore(root, store_name, name, **kwargs)


def ams_config(db_path):
    """What upstream's ``AMSInstance.from_path(db_path)`` reads: (path, store, name, type)."""
    with open(Path(db_path) / "ams_config.json") as handle:
        config = json.load(handle)
    db = config["ams_persistent_db"]
    return db["path"], db.get("store", "ams_store.sql"), config["name"], db["type"]


@pytest.fixture(params=["original", "sqlite", "mariadb"])
def rooted_store(request, tmp_path, fresh_mariadb_database):
    """An open store with a root folder: the original's form, a SQLite URL, a MariaDB URL + root_path."""
    root = tmp_path / "ams"
    if request.param == "original":
        store = original_store(root)
    elif request.param == "sqlite":
        store = AMSDataStore("ams_test", f"sqlite:///{root}/ams.db")
    else:
        store = AMSDataStore("ams_test", fresh_mariadb_database(), root_path=root)
    with store:
        yield store


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# --------------------------------------------------------------------------- UQType, descr
def test_uq_type_values_are_upstreams_and_old_names_still_parse():
    assert [(m.name, m.value) for m in UQType] == [("Random", "random"), ("DeltaUQ", "deltaUQ"),
                                                   ("Faiss", "faiss")]
    assert UQType("deltaUQ") is UQType.DeltaUQ
    for old in ("DeltaUQ", "deltauq", "DELTAUQ"):
        assert UQType(old) is UQType.DeltaUQ
    assert UQType("Random") is UQType.Random and UQType("faiss") is UQType.Faiss
    assert UQAggregate("max") is UQAggregate.max and UQAggregate("Mean") is UQAggregate.mean
    with pytest.raises(ValueError):
        UQType("gaussian")


def test_model_descr_to_dict_matches_upstream(make_model):
    path = os.path.realpath(make_model())
    assert AMSModelDescr(path, 0.5, UQType.DeltaUQ, UQAggregate.max).to_dict() == {
        "path": path, "threshold": 0.5, "uq_type": "deltaUQ", "uq_aggregate": "max"}
    assert AMSModelDescr(path, 0.5, UQType.Random).to_dict() == {
        "path": path, "threshold": 0.5, "uq_type": "random"}
    assert AMSModelDescr(path, 0.5, "deltaUQ", "mean").uq_type is UQType.DeltaUQ


def test_stored_model_uq_type_is_the_value_and_no_path(store, make_model):
    model = os.path.realpath(make_model())
    store.add_model("EOS", AMSModelDescr(model, 0.25, UQType.DeltaUQ, UQAggregate.mean), 0.1, 0.2)
    raw = raw_file_data(store.url, model)
    assert raw["uq_type"]["value"] == "deltaUQ" and raw["uq_aggregate"]["value"] == "mean"
    assert "path" not in raw
    attributes = kosh_attributes(store.url, "EOS", "models", model)
    assert attributes["uq_type"] == "deltaUQ" and attributes["uq_aggregate"] == "mean"
    assert "path" not in attributes and attributes["threshold"] == 0.25
    entry = store.find(filename=model)[0]
    assert entry["metadata"]["uq_type"] == "deltaUQ" and "path" not in entry["metadata"]
    assert UQType(entry["uq_type"]) is UQType.DeltaUQ


def test_store_holding_old_uq_names_still_reads(store, make_model):
    model = make_model()
    # As an earlier ams-store wrote it: the enum names.
    store._add_entry("EOS", "models", "zip", [model], None,
                     {"uq_type": "DeltaUQ", "uq_aggregate": "max", "threshold": 0.5,
                      "val_error": 0.1, "test_error": 0.1})
    entry = store.search("EOS", "models", "latest")[0]
    assert UQType(entry["uq_type"]) is UQType.DeltaUQ
    config = store.deployment_config(["EOS"], stage_dir="/scratch/stage")
    assert config["ml_models"]["model_0"]["uq_type"] == "deltaUQ"
    assert config["ml_models"]["model_0"]["uq_aggregate"] == "max"


# --------------------------------------------------------------------------- result shape
def test_find_and_search_results_have_reference_keys_and_kosh_era_keys(store, make_h5, make_model):
    data = os.path.realpath(make_h5())
    model = os.path.realpath(make_model())
    store.add_data("EOS", [data], metadata={"cycle": 3})
    store.add_model("EOS", AMSModelDescr(model, 0.5, UQType.Random), 0.01, 0.02)
    for entry in store.find(domain_name="EOS") + store.search("EOS"):
        assert isinstance(entry, dict) and isinstance(entry, EntryDict)
        assert list(json.loads(json.dumps(entry))) == REFERENCE_KEYS
        assert list(entry) == REFERENCE_KEYS and len(entry) == 7
        assert entry["file"] == entry.filename == entry.get("file") == entry["filename"]
        assert entry["domain"] == entry.domain_name == "EOS"
        assert entry["entry"] == entry.entry_type and entry.version == entry["version"]
        assert "file" in entry and "domain" in entry and "nope" not in entry
        assert entry == dict(entry)  # == and dict() see the reference items only
        with pytest.raises(KeyError):
            entry["nope"]
        with pytest.raises(AttributeError):
            entry.nope
        assert entry.get("nope", 5) == 5
    [found] = store.search("EOS", "models", "latest")
    assert found["uq_type"] == found.uq_type == "random"
    assert found["threshold"] == 0.5 and found["val_error"] == 0.02 and found.get("test_error") == 0.01
    assert found["file"] == model and "uq_aggregate" not in found
    [row] = store.find(filename=data)
    assert row["cycle"] == 3 and row.cycle == 3 and row.date == row["metadata"]["date"]


# --------------------------------------------------------------------------- nested metadata
def test_nested_metadata_round_trips_on_every_entry_type(store, make_h5, make_model):
    nested = {"train_parameters": TRAIN_ARGS, "batch_size": 16, "view_files": ["/a.h5", "/b.h5"],
              "looks_like_json": '{"a": 1}', "empty": {}}
    data, candidate = os.path.realpath(make_h5()), os.path.realpath(make_h5())
    model = os.path.realpath(make_model())
    store.add_data("EOS", [data], metadata=nested)
    store.add_candidates("EOS", [candidate], metadata=nested)
    store.add_model("EOS", AMSModelDescr(model, 0.5, UQType.Random), 0.1, 0.2, metadata=nested)
    for path, entry_type in ((data, "data"), (candidate, "candidates"), (model, "models")):
        [entry] = store.find(filename=path)
        metadata = {k: v for k, v in entry["metadata"].items() if k in nested}
        assert metadata == nested
        assert isinstance(entry["metadata"]["looks_like_json"], str)  # a plain str stays a str
        assert JSON_KEYS not in entry["metadata"]
        assert entry["train_parameters"]["schedule"]["milestones"] == [10, 20]
        # Plain Kosh sees a JSON string, which json.loads reads back equal.
        attributes = kosh_attributes(store.url, "EOS", entry_type, path)
        assert isinstance(attributes["train_parameters"], str)
        assert json.loads(attributes["train_parameters"]) == TRAIN_ARGS
        assert attributes["looks_like_json"] == '{"a": 1}'
        assert sorted(attributes[JSON_KEYS]) == ["empty", "train_parameters"]
    # Searching by a scalar key still works on entries holding nested values.
    assert [e["filename"] for e in store.search("EOS", "models", metadata={"batch_size": 16})] == [model]


def test_nested_metadata_that_json_would_not_give_back_is_rejected(store, make_h5, unchanged):
    good = make_h5()
    guard = unchanged()
    bad = [({"k": {1: "a"}}, "keys of a dict value must be str"),
           ({"k": {"a": (1, 2)}}, "tuple"),
           ({"k": {"a": float("nan")}}, "nan"),
           ({"k": {"a": {"b": 2**64}}}, "64 bits"),
           ({"k": {"a": b"x"}}, "bytes"),
           ({"k": {"a": "x" * 15000}}, "the limit is 15000"),
           ({"k": None}, "None"),
           ({JSON_KEYS: ["k"], "k": "not json"}, JSON_KEYS),
           ({JSON_KEYS: 3}, JSON_KEYS)]
    for metadata, fragment in bad:
        with pytest.raises(InvalidMetadataError) as info:
            store.add_data("EOS", [good], metadata=metadata)
        assert fragment in str(info.value), str(info.value)
    guard.check()


# --------------------------------------------------------------------------- versions as strings
def test_versions_given_as_decimal_strings(store, make_h5):
    a, b, c = (os.path.realpath(make_h5()) for _ in range(3))
    assert store.add_data("EOS", [a], version="2") == 2
    assert store.add_data("EOS", [b], version="10") == 10
    assert store._add_entries("EOS", "data", [c], "3", {}) == 3
    assert store.get_data_files("EOS", versions="2") == [a]
    assert store.get_files("EOS", "data", ["2", "10"]) == [a, b]
    assert [e["filename"] for e in store.find(domain_name="EOS", version="10")] == [b]
    assert [e["filename"] for e in store.search("EOS", "data", "3")] == [c]
    for bad in (" 2", "2.0", "-1", "²", "two"):
        with pytest.raises(AMSStoreError):
            store.add_data("EOS", [a], version=bad)
    assert store.remove_data("EOS", None, version="3", purge=False).removed == [c]


# --------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("form", ["positional-path", "positional-str", "keywords", "mixed"])
def test_original_constructor_forms(tmp_path, form):
    root = tmp_path / "store_testing_dir"
    store = {
        "positional-path": lambda: AMSDataStore(root, "test.sql", "ams_test"),
        "positional-str": lambda: AMSDataStore(str(root), "test.sql", "ams_test", False),
        "keywords": lambda: AMSDataStore(store_path=root, store_name="test.sql", name="ams_test",
                                         delete_all_contents=False),
        "mixed": lambda: AMSDataStore(root, "test.sql", name="ams_test"),
    }[form]()
    assert isinstance(store, AMSDataStore) and isinstance(store, compat.KoshEraStore)
    assert type(store) is compat.KoshEraAMSDataStore
    assert not store.is_open()
    assert store.application_name == "ams_test"
    assert store.root_path == Path(os.path.realpath(root))
    assert store.store_path == Path(os.path.realpath(root)) / "test.sql"
    assert sorted(p.name for p in root.iterdir()) == ["ams_config.json", "candidates", "data",
                                                       "models"]
    path, store_name, name, db_type = ams_config(root)
    assert (Path(path), store_name, name, db_type) == (store.root_path, "test.sql", "ams_test",
                                                       "dhdf5")
    assert store.get_candidate_path() == store.root_path / "candidates"
    assert store.get_data_path() == store.root_path / "data"
    assert store.get_model_path() == store.root_path / "models"
    with store:
        assert store.is_open()
    assert not store.is_open()
    # The importer (and upstream's AMSInstance) read the config back.
    assert importer.read_config(str(root / "ams_config.json")) == (str(store.store_path), "ams_test")


def test_original_constructor_keeps_an_existing_config(tmp_path):
    root = tmp_path / "ams"
    root.mkdir()
    (root / "ams_config.json").write_text('{"name": "mine", "ams_persistent_db": '
                                          '{"path": ".", "type": "hdf5"}}')
    AMSDataStore(root, "ams_store.sql", "other")
    assert json.loads((root / "ams_config.json").read_text())["name"] == "mine"


def test_original_constructor_rejects_bad_arguments(tmp_path):
    with pytest.raises(InvalidArgumentTypeError):
        AMSDataStore(tmp_path, 5, "app")
    with pytest.raises(InvalidArgumentTypeError):
        AMSDataStore(tmp_path, "x.sql", 5)
    with pytest.raises(InvalidArgumentTypeError):
        AMSDataStore(tmp_path, "x.sql", "app", "yes")


def test_reference_constructor_is_unchanged(tmp_path, store_url):
    for store in (AMSDataStore("app", store_url), AMSDataStore("app", store_url, True),
                  AMSDataStore(application_name="app", url=store_url, read_only=False)):
        assert type(store) is AMSDataStore and not store.is_open()
    assert AMSDataStore("app", store_url, True).read_only
    with AMSDataStore("app", store_url) as opened:
        assert opened.find() == []


def test_a_subclass_keeps_its_class_with_the_original_arguments(tmp_path):
    class MyStore(AMSDataStore):
        pass

    store = MyStore(tmp_path / "ams", "x.sql", "app")
    assert isinstance(store, MyStore) and isinstance(store, compat.KoshEraStore)
    assert type(MyStore("app", f"sqlite:///{tmp_path}/y.db")) is MyStore


def test_delete_all_contents_empties_the_store_not_the_files(tmp_path, make_h5):
    root = tmp_path / "ams"
    data = make_h5()
    with original_store(root) as store:
        store.add_data("EOS", [data])
    with original_store(root) as store:
        assert store.get_data_files("EOS") == [os.path.realpath(data)]
    with original_store(root, delete_all_contents=True) as store:
        assert store.get_data_files("EOS") == [] and store.find() == []
    assert os.path.isfile(data)


# --------------------------------------------------------------------------- paths
def test_paths_of_a_url_built_store(tmp_path, store_url, backend):
    store = AMSDataStore("app", store_url)
    if backend == "sqlite":
        root = Path(os.path.realpath(tmp_path / "store"))
        assert store.root_path == root and store.store_path == tmp_path / "store" / "ams.db"
        assert store.get_candidate_path() == root / "candidates" and (root / "candidates").is_dir()
        for suggest, entry, suffix in ((store.suggest_data_file_name, "data", ".h5"),
                                       (store.suggest_candidate_file_name, "candidates", ".h5"),
                                       (store.suggest_model_file_name, "models", ".pt")):
            name = suggest("EOS")
            assert Path(name).parent == root / entry and Path(name).name.startswith("EOS_")
            assert name.endswith(suffix) and not os.path.exists(name)
        assert Path(store.suggest_data_file_name()).name.startswith("app_")
    else:
        assert store.root_path is None and store.store_path is None
        with pytest.raises(InvalidArgumentError, match="root_path"):
            store.get_candidate_path()
        name = store.suggest_data_file_name("EOS")
        assert "/" not in name and name.startswith("EOS_") and name.endswith(".h5")
    given = AMSDataStore("app", store_url, root_path=tmp_path / "elsewhere")
    assert given.root_path == tmp_path / "elsewhere"
    assert given.get_model_path() == tmp_path / "elsewhere" / "models"
    assert Path(given.suggest_model_file_name("EOS")).parent == tmp_path / "elsewhere" / "models"
    # The protected name stays bare: upstream's SQL-era CLI joins it to its --path.
    assert "/" not in given._suggest_entry_file_name("data")


def test_create_store_directories(tmp_path):
    root = create_store_directories(tmp_path / "a" / "b")
    assert sorted(p.name for p in root.iterdir()) == ["candidates", "data", "models"]
    assert create_store_directories(str(root)) == root  # existing folders are fine


# --------------------------------------------------------------------------- remove call forms
def test_reference_form_remove_keyword_aliases(store, make_h5, make_model, unchanged):
    data, kept, candidate = (os.path.realpath(make_h5()) for _ in range(3))
    model, model2 = os.path.realpath(make_model()), os.path.realpath(make_model())
    store.add_data("EOS", [data, kept])
    store.add_candidates("EOS", [candidate])
    store.add_model("EOS", AMSModelDescr(model, 0.5, UQType.Random), 0.1, 0.1)
    store.add_model("EOS", AMSModelDescr(model2, 0.5, UQType.Random), 0.1, 0.1)
    guard = unchanged()
    with pytest.raises(InvalidArgumentTypeError, match="delete_files=True"):
        store.remove_data("EOS", [data], True)  # the original's third positional
    with pytest.raises(InvalidArgumentError, match="once"):
        store.remove_data("EOS", [data], data_files=[data])
    with pytest.raises(InvalidArgumentError, match="not both"):
        store.remove_data("EOS", data_files=[data], purge=True, delete_files=True)
    guard.check()
    report = store.remove_candidates("EOS", data_files=[candidate], delete_files=True)
    assert report.removed == [candidate] and not os.path.exists(candidate)
    assert store.remove_data("EOS", data_files=[kept], delete_files=False).removed == [kept]
    assert os.path.isfile(kept)
    assert store.remove_data("EOS", filenames=[data], purge=False).removed == [data]
    assert store.remove_models("EOS", model=[model], delete_files=False).removed == [model]
    assert store.remove_models("EOS", models=[model2]).purged == [model2]
    assert store.find() == []


def test_original_form_remove_call_forms(tmp_path, make_h5, make_model):
    with original_store(tmp_path / "ams") as store:
        files = [os.path.realpath(make_h5()) for _ in range(6)]
        model = os.path.realpath(make_model())
        store.add_data("EOS", files[:2])
        store.add_data("Opacity", [files[2]])
        store.add_candidates("EOS", files[3:5])
        store.add_model("EOS", AMSModelDescr(model, 0.5, UQType.Random), 0.1, 0.1)
        # Third positional = delete_files, default False.
        assert store.remove_data("EOS", [files[0]]).removed == [files[0]]
        assert os.path.isfile(files[0])
        assert store.remove_data("EOS", [files[1]], True).purged == [files[1]]
        assert not os.path.exists(files[1])
        assert store.remove_data("EOS").removed == []  # no files: nothing, as the original
        assert store.remove_candidates("EOS", data_files=[files[3]], delete_files=True).purged == [files[3]]
        assert store.remove_candidates("EOS", filenames=[files[4]], purge=False).removed == [files[4]]
        assert store.remove_models("EOS", model=[model]).removed == [model] and os.path.isfile(model)
        # The protected form, every domain when the domain is None.
        report = store._remove_entry_file(None, "data", [files[2], files[5]], True)
        assert report.removed == [files[2]] and report.not_found == [files[5]]
        assert not os.path.exists(files[2]) and os.path.isfile(files[5])
        assert store.find() == []
        # Filters without files, as keywords.
        store.add_data("EOS", [files[5]], version=4)
        assert store.remove_data("EOS", version="4").removed == [files[5]]
        assert os.path.isfile(files[5])


# --------------------------------------------------------------------------- upstream test_store.py
class TestOriginalTestStore:
    """The logic of the Kosh-era ``tests/AMSWorkflow/test_store.py`` with real files."""

    num_files = 10

    @pytest.fixture
    def files(self, tmp_path, make_h5, make_model):
        directory = tmp_path / "store_testing_dir"
        return {"h5": [make_h5(f"input_{i}.h5", directory=directory) for i in range(self.num_files)],
                "models": [make_model(f"model_{i}.pt", directory=directory)
                           for i in range(self.num_files)],
                "candidates": [make_h5(f"candidate_file_{i}.h5", directory=directory)
                               for i in range(self.num_files)],
                "dir": directory}

    @staticmethod
    def add_entries(add_func, getter, elements, *args, as_list=True):
        for i, element in enumerate(elements):
            add_func("test", [element] if as_list else element, *args, version=i)
        assert len(getter("test")) == len(elements)

    @staticmethod
    def remove_entries(func, getter, elements):
        func("test", elements, False)
        return getter("test")

    def open_store(self, files):
        return AMSDataStore(files["dir"], "test.sql", "ams_test").open()

    def test_store_open(self, files):
        store = AMSDataStore(files["dir"], "test.sql", "ams_test")
        assert not store.is_open()
        store = store.open()
        assert store.is_open()
        store.close()
        assert not store.is_open()

    def test_store_add_remove_query_data(self, files):
        store = self.open_store(files)
        self.add_entries(store.add_data, store.get_data_versions, files["h5"])
        assert store.get_data_versions("test") == list(range(self.num_files))
        assert self.remove_entries(store.remove_data, store.get_data_versions, files["h5"]) == []
        assert all(os.path.isfile(f) for f in files["h5"])  # delete_files=False
        store.close()

    def test_store_add_remove_query_candidates(self, files):
        store = self.open_store(files)
        self.add_entries(store.add_candidates, store.get_candidate_versions, files["candidates"])
        assert self.remove_entries(store.remove_candidates, store.get_candidate_versions,
                                   files["candidates"]) == []
        store.close()

    def test_store_add_remove_query_model(self, files):
        store = self.open_store(files)
        descrs = [AMSModelDescr(path=m, threshold=0.5, uq_type=UQType.Random) for m in files["models"]]
        self.add_entries(store.add_model, store.get_model_versions, descrs, 0.1, 0.1, as_list=False)
        assert self.remove_entries(store.remove_models, store.get_model_versions, files["models"]) == []
        store.close()

    def test_store_add_data_as_list(self, files):
        store = self.open_store(files)
        self.add_entries(store.add_data, store.get_data_versions, [files["h5"]], as_list=False)
        assert store.get_data_files("test", versions=[0]) == [os.path.realpath(f) for f in files["h5"]]
        assert self.remove_entries(store.remove_data, store.get_data_versions, files["h5"]) == []
        store.close()

    def test_store_add_candidate_as_list(self, files):
        store = self.open_store(files)
        self.add_entries(store.add_candidates, store.get_candidate_versions, [files["candidates"]],
                         as_list=False)
        assert self.remove_entries(store.remove_candidates, store.get_candidate_versions,
                                   files["candidates"]) == []
        store.close()


# --------------------------------------------------------------------------- upstream test_stage.py
def test_original_stage_pipeline(tmp_path, rng):
    """The Kosh-era ``test_stage.py``: a pipeline pushes files to the store, ``verify`` reads and removes them.

    ``AMSInstance.create_config`` wrote the config first; ``ForwardTask`` opens the
    store and asks for the latest model on a model-update message;
    ``PushToStore`` moves each file into the store's folder and registers it as
    a candidate of ``unknown-domain``; ``verify`` reads every candidate version's
    files and removes them with ``delete_files=True``.
    """
    i_dir, o_dir = tmp_path / "in", tmp_path / "out"
    i_dir.mkdir()
    o_dir.mkdir()
    (o_dir / "ams_config.json").write_text(json.dumps(
        {"name": "test_name", "ams_persistent_db": {"path": str(o_dir), "type": "dhdf5",
                                                    "store": "ams_store.sql"}}, indent=4))
    db_path, db_store, name, _ = ams_config(o_dir)

    # ForwardTask: the store opened for the task's life; a new-model message searches.
    with AMSDataStore(db_path, db_store, name) as db:
        assert db.search("unknown-domain", "models", version="latest") == []

    for round_ in range(3):  # several pipelines, as the original loops over writers
        data = [(rng.random((3, 2)), rng.random((3, 3))) for _ in range(10)]
        staged = [write_h5(i_dir / f"data_{j}.h5", i, o) for j, (i, o) in enumerate(data)]
        # PushToStore
        db_store_obj = AMSDataStore(db_path, db_store, name, False).open()
        for file_name in staged:
            dest_file = Path(db_path) / Path(file_name).name
            os.replace(file_name, dest_file)
            db_store_obj.add_candidates("unknown-domain", [str(dest_file)])
        db_store_obj.close()
        # verify
        with AMSDataStore(db_path, db_store, name, False) as fd:
            versions = fd.get_candidate_versions("unknown-domain", associate_files=True)
            assert len(versions) == 10
            files, r_inputs, r_outputs = [], [], []
            for k in sorted(versions.keys()):
                for fn in versions[k]:
                    files.append(fn)
                    inputs, outputs = read_h5(fn)
                    r_inputs.append(inputs)
                    r_outputs.append(outputs)
            assert np.array_equal(np.sort(np.concatenate(r_inputs).flatten()),
                                  np.sort(np.concatenate([d[0] for d in data]).flatten()))
            assert np.array_equal(np.sort(np.concatenate(r_outputs).flatten()),
                                  np.sort(np.concatenate([d[1] for d in data]).flatten()))
            fd.remove_candidates("unknown-domain", data_files=files, delete_files=True)
            assert fd.get_candidate_versions("unknown-domain") == []
            assert not any(os.path.exists(f) for f in files)


# --------------------------------------------------------------------------- train.py / sub_selection.py
def train(db_path, domain, rng, batch_size=16):
    """``examples/tools/train.py``: read the data view, train, register the model."""
    path, store_name, name, _ = ams_config(db_path)
    with AMSDataStore(path, store_name, name) as db:
        view_files = db.get_files(domain, "data", None)  # AMSDataView.open
        assert view_files, "the view needs data"
        inputs = np.concatenate([read_h5(f)[0] for f in view_files])
        test_loss, train_loss = float(inputs.mean()), float(inputs.std())
        filename = write_model(db.suggest_model_file_name())
        model_descr = AMSModelDescr(path=filename, threshold=0.5, uq_type=UQType.Random)
        md = {"train_parameters": TRAIN_ARGS, "batch_size": batch_size, "view_files": view_files}
        db.add_model(domain, model_descr, test_loss, train_loss, metadata=md)
        return filename, md, (test_loss, train_loss)


def sub_selection(db_path, domain, elements=4):
    """``examples/tools/sub_selection.py``'s main; returns what it did."""
    path, store_name, name, _ = ams_config(db_path)
    with AMSDataStore(path, store_name, name, False) as db:
        found = db.search(domain_name=domain, entry=None)
        assert all(isinstance(f, FlatEntryDict) for f in found)
        candidate_files = db.get_candidate_files(domain)
        model = db.get_model_files(domain, versions="latest")
        data_files = db.get_data_files(domain)
        if len(data_files) == 0 or len(model) == 0:
            db.move(domain, "candidates", "data", candidate_files)
            return "moved"
        if len(candidate_files) == 0:
            return "nothing"
        inputs = np.concatenate([read_h5(f)[0] for f in candidate_files])
        outputs = np.concatenate([read_h5(f)[1] for f in candidate_files])
        fn = db.suggest_data_file_name(domain)
        write_h5(fn, inputs[:elements], outputs[:elements])
        db.add_data(domain, data_files=[fn])
        db.remove_candidates(domain, candidate_files, delete_files=True)
        return fn


def stage_candidates(db_path, domain, rng, count=3):
    path, store_name, name, _ = ams_config(db_path)
    with AMSDataStore(path, store_name, name) as db:
        files = [write_h5(db.suggest_candidate_file_name(domain), rng.random((5, 2)),
                          rng.random((5, 1))) for _ in range(count)]
        db.add_candidates(domain, files, metadata={"source": "stage"})
    return files


def test_original_sub_selection_and_train_flow(tmp_path, rng):
    db_path = tmp_path / "ams"
    original_store(db_path)  # AMSStore.py create
    assert sub_selection(db_path, "EOS") == "moved"  # no candidates yet: an empty move
    first = stage_candidates(db_path, "EOS", rng)
    assert sub_selection(db_path, "EOS") == "moved"  # no data, no model: all candidates become data
    with original_store(db_path) as db:
        data = db.get_data_files("EOS")
        assert sorted(Path(f).name for f in data) == sorted(Path(f).name for f in first)
        assert all(Path(f).parent == db.get_data_path() for f in data)
        assert not any(os.path.exists(f) for f in first) and db.get_candidate_files("EOS") == []
        assert {e["source"] for e in db.search("EOS", "data")} == {"stage"}  # metadata carried over
    model, md, (test_loss, train_loss) = train(db_path, "EOS", rng)
    with original_store(db_path) as db:
        assert Path(model).parent == db.get_model_path()
        assert db.get_model_files("EOS", versions="latest") == [model]
        [entry] = db.search("EOS", "models", version="latest")
        assert entry["file"] == model and entry["batch_size"] == 16
        assert entry["train_parameters"] == TRAIN_ARGS and entry["view_files"] == md["view_files"]
        assert entry["val_error"] == train_loss and entry["test_error"] == test_loss
        assert entry["uq_type"] == "random" and entry["threshold"] == 0.5
    second = stage_candidates(db_path, "EOS", rng)
    selected = sub_selection(db_path, "EOS")
    with original_store(db_path) as db:
        assert db.get_data_files("EOS", versions="latest") == [selected]
        assert read_h5(selected)[0].shape == (4, 2)
        assert db.get_candidate_files("EOS") == [] and not any(os.path.exists(f) for f in second)
        assert len(db.get_data_versions("EOS")) == 2
    assert sub_selection(db_path, "EOS") == "nothing"
    train(db_path, "EOS", rng)
    with original_store(db_path) as db:
        assert db.get_model_versions("EOS") == [1, 2]
        assert len(db.search("EOS", "models", version="latest")) == 1


# --------------------------------------------------------------------------- search shapes per era
def test_original_form_search_is_flat_and_latest_is_one_entry(tmp_path, make_h5, make_model):
    with original_store(tmp_path / "ams") as store:
        store.add_data("EOS", [make_h5(), make_h5()], metadata={"cycle": 1})
        store.add_data("EOS", [make_h5(), make_h5()], metadata={"cycle": 2})
        store.add_data("Opacity", [make_h5()], version=7, metadata={"cycle": 2})
        found = store.search("EOS", "data")
        assert len(found) == 4
        for entry in found:
            assert list(entry)[:4] == ["domain", "entry", "version", "file"]
            assert set(json.loads(json.dumps(entry))) == {"domain", "entry", "version", "file",
                                                          "cycle", "date"}
            assert entry.filename == entry["file"] and entry["domain_name"] == "EOS"
            assert list(entry.reference()) == REFERENCE_KEYS and entry["metadata"]["cycle"]
        [latest] = store.search("EOS", "data", version="latest")
        assert latest["version"] == 2 and latest["cycle"] == 2
        [overall] = store.search(version="latest")  # over all domains, as the original
        assert overall["domain"] == "Opacity" and overall["version"] == 7
        assert store.search("EOS", "data", version="latest", metadata={"cycle": 1})[0]["version"] == 1
        assert store.search("EOS", "models", version="latest") == []
        # find keeps the reference's shape on this form too.
        assert list(store.find(domain_name="Opacity")[0]) == REFERENCE_KEYS


def test_reference_form_latest_keeps_every_file_of_the_highest_version(store, make_h5):
    store.add_data("EOS", [make_h5()])
    store.add_data("EOS", [make_h5(), make_h5()])
    latest = store.search("EOS", "data", "latest")
    assert len(latest) == 2 and {e["version"] for e in latest} == {2}
    assert all(type(e) is EntryDict for e in latest)


# --------------------------------------------------------------------------- move
def test_original_form_move_into_the_stores_folder(tmp_path, make_h5, unchanged):
    with original_store(tmp_path / "ams") as store:
        outside = [make_h5(), make_h5()]
        store.add_candidates("EOS", outside, metadata={"nested": {"k": [1, 2]}})
        moved = store.move("EOS", "candidates", "data", outside)
        assert [Path(p).parent for p in moved] == [store.get_data_path()] * 2
        assert store.get_data_files("EOS") == moved and store.get_candidate_files("EOS") == []
        assert not any(os.path.exists(p) for p in outside)
        assert all(e["nested"] == {"k": [1, 2]} for e in store.search("EOS", "data"))
        assert store.move("EOS", "candidates", "data", []) == []
        # The reference's five-argument form works on this form too.
        again = [make_h5()]
        store.add_candidates("EOS", again)
        target = tmp_path / "elsewhere"
        assert store.move("EOS", target, "candidates", "data", again) == [
            str(target / Path(again[0]).name)]


# --------------------------------------------------------------------------- protected API
def test_add_entry_and_get_raw_content(rooted_store, make_h5, make_model, caplog):
    store = rooted_store
    data = os.path.realpath(make_h5())
    model = os.path.realpath(make_model())
    assert store._add_entry("EOS", "data", "hdf5", [data], "3", {"cycle": 1}) == 3
    with caplog.at_level(logging.WARNING, logger="ams.compat"):
        # Upstream's Kosh-era ams_wf/AMSStore.py passes (entry, domain) and a mime type.
        version = store._add_entry("models", "EOS", "hdf5", [model], None,
                                   {"uq_type": "random", "threshold": 0.5})
    assert "swapped" in caplog.text or "reading them as" in caplog.text
    assert "mime type 'hdf5' ignored" in caplog.text
    raw = store.get_raw_content("EOS", None)
    assert list(raw) == ["EOS"] and set(raw["EOS"]) == {"data", "models", "candidates"}
    [attributes] = raw["EOS"]["data"][3]
    assert attributes["uri"] == data and attributes["mime_type"] == "hdf5"
    assert attributes["cycle"] == 1 and "date" in attributes and attributes["id"]
    assert raw["EOS"]["models"][version][0]["mime_type"] == "zip"
    assert raw["EOS"]["candidates"] == {}
    assert list(store.get_raw_content(None, "data")["EOS"]) == ["data"]
    assert store.get_raw_content("nowhere", None) == {}


# --------------------------------------------------------------------------- ams_jobs
def generate_ams_object_as_upstream(store, domain_names, stage_dir=None):
    """``AMSDomainJob._generate_ams_object`` (both eras), written out with the store's calls."""
    ams_object = {"db": {"fs_path": str(store.get_candidate_path()) if stage_dir is None
                         else stage_dir, "dbType": "hdf5"}}
    ams_object["ml_models"], ams_object["domain_models"] = {}, {}
    for i, name in enumerate(domain_names):
        models = store.search(domain_name=name, entry="models", version="latest")
        json.dumps(models, indent=6)
        if len(models) == 0:
            entry = {"uq_type": "random", "model_path": "", "uq_aggregate": "mean", "threshold": 1,
                     "db_label": name}
        else:
            model = models[0]
            entry = {"uq_type": model["uq_type"], "model_path": model["file"],
                     "uq_aggregate": "mean", "threshold": model["threshold"], "db_label": name}
        ams_object["ml_models"][f"model_{i}"] = entry
        ams_object["domain_models"][name] = f"model_{i}"
    return ams_object


def test_ams_jobs_deployment(rooted_store, make_model):
    store = rooted_store
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, UQType.Random), 0.2, 0.3)
    newest = os.path.realpath(make_model())
    store.add_model("EOS", AMSModelDescr(newest, 0.75, UQType.DeltaUQ, UQAggregate.mean), 0.1, 0.1)
    domains = ["EOS", "Opacity"]
    expected = generate_ams_object_as_upstream(store, domains)
    config = store.deployment_config(domains)
    assert config == expected
    assert config["ml_models"]["model_0"] == {"uq_type": "deltaUQ", "model_path": newest,
                                              "uq_aggregate": "mean", "threshold": 0.75,
                                              "db_label": "EOS"}
    assert config["ml_models"]["model_1"]["model_path"] == ""  # data gathering for Opacity
    assert config["db"] == {"fs_path": str(store.root_path / "candidates"), "dbType": "hdf5"}
    # precede_deploy: the JSON under root_path/tmp, named by AMS_OBJECTS.
    tmp = store.root_path / "tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "objects.json").write_text(json.dumps(config))
    assert json.loads((tmp / "objects.json").read_text()) == expected
    # Options: a version, a stage folder, RabbitMQ.
    assert store.deployment_config("EOS", version=1)["ml_models"]["model_0"]["uq_type"] == "random"
    assert store.deployment_config("EOS", version="1")["ml_models"]["model_0"]["threshold"] == 0.5
    assert store.deployment_config(domains, stage_dir="/ssd/stage") == \
        generate_ams_object_as_upstream(store, domains, stage_dir="/ssd/stage")

    class RMQ:
        def to_dict(self, AMSlib=False):
            return {"service-host": "h", "service-port": 5671, "AMSlib": AMSlib}

    assert store.deployment_config("EOS", rmq=RMQ())["db"] == {
        "rmq_config": {"service-host": "h", "service-port": 5671, "AMSlib": True},
        "dbType": "rmq", "update_surrogate": False}
    with pytest.raises(NotFoundError):
        store.deployment_config("EOS", version=9)


def test_deployment_without_a_root_needs_a_stage_dir(fresh_mariadb_database, make_model):
    with AMSDataStore("app", fresh_mariadb_database()) as store:
        store.add_model("EOS", AMSModelDescr(make_model(), 0.5, UQType.Random), 0.2, 0.3)
        with pytest.raises(InvalidArgumentError, match="root_path"):
            store.deployment_config(["EOS"])
        assert store.deployment_config(["EOS"], stage_dir="/stage")["db"]["fs_path"] == "/stage"


# --------------------------------------------------------------------------- ams_wf/AMSStore.py
def test_sql_era_store_cli_calls(store, tmp_path, make_h5):
    """SQL-era ``ams_wf/AMSStore.py``: create, add (copy to --path), query, remove."""
    db_path = tmp_path / "cli_store"
    create_store_directories(db_path)  # create
    # add --copy --path P --version 2 --metadata '{...}'
    source = make_h5()
    path = tmp_path / "copies"
    path.mkdir()
    fn = path / store._suggest_entry_file_name("data")
    fn.write_bytes(Path(source).read_bytes())
    store._add_entries("EOS", "data", [str(fn)], "2", json.loads('{"origin": "cli", "n": 1}'))
    # query --version 2 --field filename
    found = store.search(domain_name="EOS", entry="data", version=int("2"), metadata={"n": 1})
    assert [p["filename"] for p in found] == [os.path.realpath(fn)]
    json.dumps(found, indent=4)
    # remove --version latest --purge
    found = store.search(domain_name="EOS", entry="data", version="latest", metadata={})
    store._remove_entries("EOS", "data", filenames=[v["filename"] for v in found], purge=True)
    assert store.find() == [] and not fn.exists()


def test_kosh_era_store_cli_calls(tmp_path, make_h5):
    """Kosh-era ``ams_wf/AMSStore.py``: add copies into the store, query prints, remove by search."""
    root = tmp_path / "ams"
    with original_store(root) as store:
        source = make_h5()
        fn = store._suggest_entry_file_name("candidates")
        assert Path(fn).parent == store.get_candidate_path()
        Path(fn).write_bytes(Path(source).read_bytes())
        store._add_entry("candidates", "EOS", store.__class__.entry_mime_types["candidates"], [fn],
                         "2", {"origin": "cli"})
        found = store.search(domain_name="EOS", entry="candidates", version=2, metadata={})
        assert [p["file"] for p in found] == [fn] and json.loads(json.dumps(found))[0]["origin"] == "cli"
        to_remove = [v["file"] for v in found]
        store._remove_entry_file("EOS", "candidates", to_remove, True)
        assert store.find() == [] and not os.path.exists(fn)


def test_stores_stay_readable_by_plain_reads(rooted_store, make_h5):
    """A compat call changes nothing the other form does not read back."""
    store = rooted_store
    files = [os.path.realpath(make_h5()) for _ in range(2)]
    store._add_entry("EOS", "data", "hdf5", files, 0, {"nested": {"a": 1}})
    before = snapshot_store(store.url)
    files_before = snapshot_files(store.root_path)
    store.get_raw_content()
    store.search("EOS", version="latest")
    store.deployment_config("EOS")
    assert snapshot_store(store.url) == before and snapshot_files(store.root_path) == files_before


def test_a_store_of_the_original_form_imports_with_its_nested_metadata(tmp_path, store, make_h5,
                                                                       make_model):
    root = tmp_path / "kosh_era"
    data = os.path.realpath(make_h5())
    model = os.path.realpath(make_model())
    with original_store(root, name="app") as era:
        era.add_data("EOS", [data], version=0, metadata={"run": {"seed": 3, "tags": ["a"]}})
        era.add_model("EOS", AMSModelDescr(model, 0.5, UQType.DeltaUQ, UQAggregate.max), 0.1, 0.2,
                      metadata={"train_parameters": TRAIN_ARGS})
    report = store.import_from(root / "ams_config.json")
    assert report.to_dict()["imported"] == 2
    [entry] = store.find(filename=data)
    assert entry["version"] == 0 and entry["run"] == {"seed": 3, "tags": ["a"]}
    [imported] = store.search("EOS", "models", "latest")
    assert imported["train_parameters"] == TRAIN_ARGS and imported["uq_type"] == "deltaUQ"
    assert store.deployment_config("EOS", stage_dir="/s")["ml_models"]["model_0"]["model_path"] == model
