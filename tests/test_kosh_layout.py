"""Contract: the Kosh layout (SPEC "Storage layout", "Known pitfalls" on bulk writes).

Three directions, on both backends:

1. what ``ams`` writes, plain ``kosh.connect`` reads (and a plain-Kosh browse writes nothing);
2. what plain Kosh wrote the original way (no ``application_name``), ``ams`` reads and extends;
3. fidelity: ``ams``'s bulk writes leave exactly the rows plain Kosh calls leave
   (ids, dates and the file record's ``creation_date`` aside), for adds and removals.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import warnings
from collections import Counter
from typing import Any, Callable, Dict, List

import h5py
import numpy as np
import pytest
import sqlalchemy as sa

from ams import AMSDataStore, AMSModelDescr, UQAggregate, UQType
from ams.url import StoreURL, parse_store_url

from conftest import snapshot_store

DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$")
DATE_KEYS = frozenset({"creation_date", "last_modified_date", "date"})
META = {"cycle": 3, "rate": 0.25, "ok": True, "label": "Düsen-Ωmega", "tags": ["a", "B"],
        "weights": [1, 2.5]}


# ------------------------------------------------------------------ plain Kosh helpers
def kosh_target(url: StoreURL) -> str:
    """What ``kosh.connect`` takes: the file path (SQLite) or the SQLAlchemy URL (MariaDB)."""
    return url.path if url.backend == "sqlite" else url.sqlalchemy_url()


@contextlib.contextmanager
def plain_kosh(url: StoreURL, read_only: bool = False):
    import kosh
    # Kosh's connect() and close() each run gc.collect(), ~0.3-1 s with torch and
    # SQLAlchemy loaded; freezing what already exists makes those collections cheap.
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            store = kosh.connect(kosh_target(url), read_only=read_only)
        try:
            yield store
        finally:
            store.close()
    finally:
        gc.unfreeze()


def prepare_for_plain_kosh(url: StoreURL) -> None:
    """MariaDB: create Sina's tables the MariaDB-safe way (Sina's own DDL fails on utf8mb4).

    Kosh then finds them and creates nothing; every record is still Kosh's.
    """
    if url.backend == "sqlite":
        os.makedirs(os.path.dirname(url.path), exist_ok=True)
        return
    from ams.catalog import schema
    engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        schema.create_tables(engine)
    finally:
        engine.dispose()


def kosh_dataset(ensemble, entry_type: str, version: int):
    """The dataset of ``ensemble`` for (entry, version), created the way the original did."""
    for dataset in ensemble.find_datasets(name=entry_type):
        if dataset.version == version:
            return dataset
    return ensemble.create(name=entry_type, metadata={"version": version})


def kosh_ensemble(store, domain_name: str, application_name: str = None):
    found = [e for e in store.find_ensembles(name=domain_name)
             if application_name is None
             or getattr(e, "application_name", None) == application_name]
    if found:
        return found[0]
    metadata = {} if application_name is None else {"application_name": application_name}
    return store.create_ensemble(name=domain_name, metadata=metadata)


@pytest.fixture
def other_url(backend, tmp_path, fresh_mariadb_database) -> StoreURL:
    """A second empty database on the same backend (the plain-Kosh twin)."""
    if backend == "sqlite":
        return parse_store_url(str(tmp_path / "twin" / "kosh.db"))
    return parse_store_url(fresh_mariadb_database())


def _model(path: str) -> AMSModelDescr:
    return AMSModelDescr(path, threshold=0.5, uq_type=UQType.DeltaUQ,
                         uq_aggregate=UQAggregate.mean)


# ------------------------------------------------------------------ 1. ams -> plain Kosh
def _fill(store, make_h5, make_model) -> Dict[str, Any]:
    eos_v1 = [make_h5("a.h5"), make_h5("b.h5")]
    eos_v2 = make_h5("c.h5", rows=5)
    candidate = make_h5("cand.h5")
    model = make_model("m.pt")
    other = make_h5("other.h5")
    assert store.add_data("EOS", eos_v1, metadata=META) == 1
    assert store.add_data("EOS", [eos_v2], metadata={"cycle": 4}) == 2
    assert store.add_candidates("EOS", [candidate]) == 1
    assert store.add_model("EOS", _model(model), 0.01, 0.02, metadata={"epochs": 10}) == 1
    assert store.add_data("HYD", [other]) == 1
    return {"eos_v1": eos_v1, "eos_v2": eos_v2, "candidate": candidate, "model": model,
            "other": other}


def _browse(url: StoreURL, read_only: bool, load: bool) -> Dict[str, Any]:
    """Everything a notebook user looks at, through plain Kosh objects."""
    seen: Dict[str, Any] = {}
    with plain_kosh(url, read_only=read_only) as kosh_store:
        for ensemble in kosh_store.find_ensembles():
            attributes = ensemble.listattributes()
            seen[ensemble.name] = {"application_name": ensemble.application_name,
                                   "attributes": attributes, "datasets": {}}
            for dataset in ensemble.find_datasets():
                files = {}
                for kosh_file in dataset.find():
                    files[kosh_file.uri] = {key: getattr(kosh_file, key)
                                            for key in kosh_file.listattributes()}
                    assert sorted(kosh_file.list_attributes()) == sorted(kosh_file.listattributes())
                key = (dataset.name, dataset.version)
                seen[ensemble.name]["datasets"][key] = {
                    "attributes": dataset.list_attributes(), "files": files,
                    "version_type": type(dataset.version)}
                if load and dataset.name == "data" and len(files) == 1:
                    seen[ensemble.name]["datasets"][key]["inputs"] = np.asarray(
                        dataset.get("inputs")[:])
    return seen


def test_plain_kosh_reads_what_ams_wrote(store, make_h5, make_model):
    paths = _fill(store, make_h5, make_model)
    before = snapshot_store(store.url)
    seen = _browse(store.url, read_only=True, load=True)
    # A full plain-Kosh browse, loading an HDF5 feature, writes nothing.
    assert snapshot_store(store.url) == before

    assert set(seen) == {"EOS", "HYD"}
    eos = seen["EOS"]
    assert eos["application_name"] == "app" and "application_name" in eos["attributes"]
    assert set(eos["datasets"]) == {("data", 1), ("data", 2), ("candidates", 1), ("models", 1)}
    for dataset in eos["datasets"].values():
        assert dataset["version_type"] is int
        assert {"version", "application_name"} <= set(dataset["attributes"])

    v1 = eos["datasets"][("data", 1)]["files"]
    assert set(v1) == set(paths["eos_v1"])  # absolute uris
    for uri, attributes in v1.items():
        assert attributes["uri"] == uri and attributes["mime_type"] == "hdf5"
        assert {key: attributes[key] for key in META} == META
        assert DATE.match(attributes["date"]) and DATE.match(attributes["creation_date"])
        assert attributes["fast_sha"]
    assert eos["datasets"][("data", 2)]["files"][paths["eos_v2"]]["cycle"] == 4
    assert eos["datasets"][("candidates", 1)]["files"][paths["candidate"]]["mime_type"] == "hdf5"
    model = eos["datasets"][("models", 1)]["files"][paths["model"]]
    assert model["mime_type"] == "zip"
    assert "path" not in model  # as the original: the uri is the path
    assert {key: model[key] for key in ("threshold", "uq_type", "uq_aggregate",
                                        "test_error", "val_error", "epochs")} == {
        "threshold": 0.5, "uq_type": "deltaUQ",
        "uq_aggregate": "mean", "test_error": 0.01, "val_error": 0.02, "epochs": 10}
    assert seen["HYD"]["datasets"][("data", 1)]["files"].keys() == {paths["other"]}

    # dataset.get through Kosh's HDF5 loader returns what h5py wrote.
    with h5py.File(paths["eos_v2"], "r") as handle:
        expected = handle["inputs"][:]
    np.testing.assert_array_equal(eos["datasets"][("data", 2)]["inputs"], expected)
    assert expected.shape == (5, 2)

    # Why the browse above is read-only: in write mode Kosh's close() rewrites its own
    # store-info record (last_modified_date, feature cache). Nothing else may change:
    # ams already wrote Kosh's users and every file record's creation_date.
    _browse(store.url, read_only=False, load=False)
    after = snapshot_store(store.url)
    for table in before:
        delta = (Counter(before[table]) - Counter(after[table])) + (
            Counter(after[table]) - Counter(before[table]))
        assert all("__kosh_store_info__" in row for row in delta), (table, delta)


# ------------------------------------------------------------------ 2. plain Kosh -> ams
def _legacy_store(url: StoreURL, make_h5, make_model) -> Dict[str, Any]:
    """The original backend's layout: no application_name, versions from 0."""
    prepare_for_plain_kosh(url)
    files = {0: [make_h5("l0a.h5"), make_h5("l0b.h5")], 1: [make_h5("l1.h5")]}
    model = make_model("legacy.pt")
    with plain_kosh(url) as kosh_store:
        ensemble = kosh_store.create_ensemble(name="EOS")
        for version, paths in files.items():
            dataset = ensemble.create(name="data", metadata={"version": version})
            for path in paths:
                dataset.associate(path, mime_type="hdf5",
                                  metadata={"cycle": version, "date": "2023-01-01 00:00:00.000001"},
                                  absolute_path=True)
        dataset = ensemble.create(name="models", metadata={"version": 0})
        dataset.associate(model, mime_type="zip", metadata={"val_error": 0.5}, absolute_path=True)
    return {"files": files, "model": model}


def test_ams_reads_and_extends_a_plain_kosh_store(store_url, make_h5, make_model):
    url = parse_store_url(store_url)
    legacy = _legacy_store(url, make_h5, make_model)
    files = legacy["files"]
    with AMSDataStore("app", store_url) as store:
        assert store.get_data_versions("EOS") == [0, 1]
        assert store.get_data_versions("EOS", associate_files=True) == {
            0: sorted(files[0]), 1: files[1]}
        assert store.get_data_files("EOS", "latest") == files[1]
        assert store.get_data_files("EOS", 0) == sorted(files[0])
        assert store.get_model_files("EOS") == [legacy["model"]]
        found = store.find(domain_name="EOS", entry_type="data")
        assert len(found) == 3
        assert {e["application_name"] for e in found} == {None}
        assert {e["filename"]: e["version"] for e in found} == {
            files[0][0]: 0, files[0][1]: 0, files[1][0]: 1}
        assert store.search("EOS", "data", metadata={"cycle": 0})[0]["metadata"] == {
            "cycle": 0, "date": "2023-01-01 00:00:00.000001"}
        assert [e["filename"] for e in store.search("EOS", "models", "latest",
                                                    {"val_error": {"<": 1}})] == [legacy["model"]]
        # Writes go into the legacy ensemble and continue its versions.
        new = make_h5("new.h5")
        assert store.add_data("EOS", [new], metadata={"cycle": 2}) == 2
        assert store.add_model("EOS", _model(make_model("m2.pt")), 0.1, 0.2) == 1
        assert store.get_data_versions("EOS") == [0, 1, 2]
        assert store.find(filename=new)[0]["application_name"] is None
    # Another application sees the legacy ensemble too.
    with AMSDataStore("other-app", store_url, read_only=True) as other:
        assert other.get_data_versions("EOS") == [0, 1, 2]
    with plain_kosh(url, read_only=True) as kosh_store:
        ensembles = list(kosh_store.find_ensembles(name="EOS"))
        assert len(ensembles) == 1 and "application_name" not in ensembles[0].listattributes()
        versions = sorted(d.version for d in ensembles[0].find_datasets(name="data"))
        assert versions == [0, 1, 2]
        (dataset,) = [d for d in ensembles[0].find_datasets(name="data") if d.version == 2]
        assert [f.uri for f in dataset.find()] == [new]


# ------------------------------------------------------------------ 3. fidelity
def _all_rows(url: StoreURL) -> Dict[str, List[Dict[str, Any]]]:
    engine = sa.create_engine(url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            return {name: [dict(row._mapping) for row in
                           conn.execute(sa.text(f"SELECT * FROM {quote(name)}"))]
                    for name in sa.inspect(conn).get_table_names()
                    if not name.startswith("ams_")}  # ams's own tables: not Kosh's layout
    finally:
        engine.dispose()


def _mask_dates(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: "<date>" if key in DATE_KEYS
                else "<time>" if key.endswith("_last_modified") else _mask_dates(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_dates(item) for item in value]
    return value


def normalised_tables(url: StoreURL,
                      written_by_ams: Callable[[str], bool]) -> Dict[str, List[str]]:
    """Every table's rows as sorted JSON, ids replaced by what the record is, dates masked.

    ``ams`` writes ``creation_date`` on the file records it makes (Kosh adds it on first
    load): checked here for each uri (``written_by_ams(uri)``), then left out.
    """
    tables = _all_rows(url)
    raws = {row["id"]: json.loads(row["raw"]) for row in tables["Record"]}
    member_of = {row["subject_id"]: row["object_id"] for row in tables["Relationship"]}
    labels: Dict[str, str] = {}
    for record_id, raw in raws.items():
        data = raw["data"]
        if raw["type"] == "kosh_ensemble":
            labels[record_id] = f"<ensemble {data['name']['value']}>"
        elif raw["type"] == "file":
            labels[record_id] = f"<file {data['uri']['value']}>"
            assert ("creation_date" in data) == written_by_ams(data["uri"]["value"]), data
    for record_id, raw in raws.items():
        if raw["type"] == "dataset":
            data = raw["data"]
            labels[record_id] = (f"<dataset {labels[member_of[record_id]]} "
                                 f"{data['name']['value']} {data['version']['value']}>")
    assert all(re.fullmatch(r"[0-9a-f]{32}", record_id) for record_id in labels)

    def relabel(value: Any) -> Any:
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str):
            for record_id, label in labels.items():
                value = value.replace(record_id, label)
        return value

    out: Dict[str, List[str]] = {}
    for table, rows in tables.items():
        normal = []
        for row in rows:
            row = {key: relabel(value) for key, value in row.items()}
            is_file = row.get("id", "").startswith("<file ")
            if table == "Record":
                raw = json.loads(row["raw"])
                if is_file:
                    raw["data"].pop("creation_date", None)
                    raw["user_defined"]["kosh_information"].pop("creation_date_last_modified",
                                                                None)
                row["raw"] = _mask_dates(raw)
            elif row.get("name") in DATE_KEYS:
                if is_file and row["name"] == "creation_date":
                    continue
                row["value"] = "<date>"
            normal.append(json.dumps(row, sort_keys=True, default=str))
        out[table] = sorted(normal)
    return out


def assert_same_tables(ams_url: StoreURL, kosh_url: StoreURL) -> None:
    """Only ams wrote ``ams_url``'s file records, only plain Kosh ``kosh_url``'s."""
    assert_equal_tables(normalised_tables(ams_url, written_by_ams=lambda uri: True),
                        normalised_tables(kosh_url, written_by_ams=lambda uri: False))


def assert_equal_tables(ours: Dict[str, List[str]], theirs: Dict[str, List[str]]) -> None:
    assert ours.keys() == theirs.keys()
    for table in ours:
        only_ours = Counter(ours[table]) - Counter(theirs[table])
        only_theirs = Counter(theirs[table]) - Counter(ours[table])
        assert not only_ours and not only_theirs, (
            f"{table} differs:\n ams only:  {list(only_ours)}\n kosh only: {list(only_theirs)}")


def _kosh_add(kosh_store, domain: str, entry_type: str, version: int, paths: List[str],
              metadata: Dict[str, Any], application_name: str = "app") -> None:
    """What an ams add means, in plain Kosh calls (one associate per file, as the original)."""
    mime_type = AMSDataStore.entry_mime_types[entry_type]
    dataset = kosh_dataset(kosh_ensemble(kosh_store, domain, application_name), entry_type,
                           version)
    for path in paths:
        dataset.associate(path, mime_type=mime_type,
                          metadata={**metadata, "date": "2024-01-01 00:00:00.000000"},
                          absolute_path=True)


def test_bulk_writes_equal_plain_kosh_writes(store, other_url, make_h5, make_model):
    h5 = {name: make_h5(f"{name}.h5") for name in ("a", "b", "c", "d", "e", "Ä")}
    model = make_model("model.pt")
    descr = _model(model)
    model_attributes = {**descr.to_dict(), "test_error": 0.125, "val_error": 0.25, "note": "x"}
    del model_attributes["path"]  # as the original's add_model: the uri is the path

    assert store.add_data("EOS", [h5["a"], h5["b"]], metadata=META) == 1
    assert store.add_data("EOS", [h5["c"]], version=1, metadata={"cycle": 5}) == 1  # append
    assert store.add_data("EOS", [h5["d"]]) == 2
    assert store.add_candidates("EOS", [h5["e"]], version=0) == 0
    assert store.add_model("EOS", descr, 0.125, 0.25, metadata={"note": "x"}) == 1
    assert store.add_data("Ωmega", [h5["Ä"]], metadata={"ünï": "çødé"}) == 1

    prepare_for_plain_kosh(other_url)
    with plain_kosh(other_url) as kosh_store:
        _kosh_add(kosh_store, "EOS", "data", 1, [h5["a"], h5["b"]], META)
        _kosh_add(kosh_store, "EOS", "data", 1, [h5["c"]], {"cycle": 5})
        _kosh_add(kosh_store, "EOS", "data", 2, [h5["d"]], {})
        _kosh_add(kosh_store, "EOS", "candidates", 0, [h5["e"]], {})
        _kosh_add(kosh_store, "EOS", "models", 1, [model], model_attributes)
        _kosh_add(kosh_store, "Ωmega", "data", 1, [h5["Ä"]], {"ünï": "çødé"})
    assert_same_tables(store.url, other_url)


def test_bulk_removal_equals_plain_kosh_dissociate(store, other_url, make_h5):
    a, b, c = make_h5("a.h5"), make_h5("b.h5"), make_h5("c.h5")
    store.add_data("EOS", [a, b], metadata=META)
    store.add_data("EOS", [c], metadata=META)
    prepare_for_plain_kosh(other_url)
    with plain_kosh(other_url) as kosh_store:
        _kosh_add(kosh_store, "EOS", "data", 1, [a, b], META)
        _kosh_add(kosh_store, "EOS", "data", 2, [c], META)
    assert_same_tables(store.url, other_url)

    # One ams call: one file of a two-file version (that dataset stays) and the only file
    # of another version (that dataset goes); plain Kosh: dissociate, delete the empty dataset.
    assert store.remove_data("EOS", [a, c], purge=False).removed == [a, c]
    with plain_kosh(other_url) as kosh_store:
        ensemble = kosh_ensemble(kosh_store, "EOS")
        kosh_dataset(ensemble, "data", 1).dissociate(a)
        dataset = kosh_dataset(ensemble, "data", 2)
        dataset.dissociate(c)
        assert list(dataset.find()) == []
        kosh_store.delete(dataset)
    assert_same_tables(store.url, other_url)
    assert store.get_data_versions("EOS", associate_files=True) == {1: [b]}


def test_writes_into_a_legacy_store_equal_plain_kosh_writes(store_url, other_url, make_h5,
                                                            make_model):
    ams_url = parse_store_url(store_url)
    shared = {"files": {0: [make_h5("l0a.h5"), make_h5("l0b.h5")], 1: [make_h5("l1.h5")]},
              "model": make_model("legacy.pt")}
    for url in (ams_url, other_url):
        prepare_for_plain_kosh(url)
        with plain_kosh(url) as kosh_store:
            ensemble = kosh_store.create_ensemble(name="EOS")
            for version, paths in shared["files"].items():
                dataset = ensemble.create(name="data", metadata={"version": version})
                for path in paths:
                    dataset.associate(path, mime_type="hdf5", metadata={"cycle": version},
                                      absolute_path=True)
    new, newer = make_h5("new.h5"), make_h5("newer.h5")
    with AMSDataStore("app", store_url) as store:
        assert store.add_data("EOS", [new], metadata={"cycle": 2}) == 2
        assert store.add_data("EOS", [newer], version=0) == 0
    with plain_kosh(other_url) as kosh_store:
        _kosh_add(kosh_store, "EOS", "data", 2, [new], {"cycle": 2}, application_name=None)
        _kosh_add(kosh_store, "EOS", "data", 0, [newer], {}, application_name=None)
    # Kosh's file records have no creation_date (Kosh adds it on first load); ams's new ones do.
    ours = normalised_tables(ams_url, written_by_ams=lambda uri: uri in (new, newer))
    theirs = normalised_tables(other_url, written_by_ams=lambda uri: False)
    assert_equal_tables(ours, theirs)
