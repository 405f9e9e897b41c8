"""Notebook helpers on both backends: load_model, load_data, kosh_dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ams import AMSDataStore, AMSModelDescr
from ams.errors import (
    InvalidArgumentError,
    MissingFileError,
    NotFoundError,
    StoreClosedError,
    UnknownEntryTypeError,
    WrongFileFormatError,
)

from conftest import snapshot_store

MAIN = Path(__file__).resolve().parents[1]


def _linear_model(path: Path, weight: float) -> str:
    """A TorchScript y = weight * (x0 + x1), so each version answers differently."""
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(weight)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))
    return str(path)


def _h5(path: Path, **features: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for name, value in features.items():
            handle[name] = value
    return str(path)


# ------------------------------------------------------------------ load_model
def test_load_model_latest_and_by_version(store, tmp_path: Path) -> None:
    first = _linear_model(tmp_path / "m" / "v1.pt", 1.0)
    second = _linear_model(tmp_path / "m" / "v2.pt", 3.0)
    store.add_model("EOS", AMSModelDescr(first, 0.5, "Random"), test_error=0.3, val_error=0.2,
                    metadata={"epochs": 10})
    store.add_model("EOS", AMSModelDescr(second, 0.25, "DeltaUQ", "mean"), test_error=0.04,
                    val_error=0.03)
    x = torch.tensor([[1.0, 2.0]])

    model, entry = store.load_model("EOS")
    assert isinstance(model, torch.jit.ScriptModule)
    assert model(x).item() == pytest.approx(9.0)
    assert entry["filename"] == second and entry["version"] == 2
    assert entry["entry_type"] == "models" and entry["domain_name"] == "EOS"
    assert entry["metadata"]["val_error"] == 0.03 and entry["metadata"]["uq_aggregate"] == "mean"

    model, entry = store.load_model("EOS", version=1)
    assert model(x).item() == pytest.approx(3.0)
    assert entry["filename"] == first and entry["metadata"]["epochs"] == 10


def test_load_model_newest_of_a_version(store, tmp_path: Path) -> None:
    store.add_model("EOS", AMSModelDescr(_linear_model(tmp_path / "a.pt", 1.0), 0.5, "Random"),
                    test_error=0.1, val_error=0.1, version=4)
    newer = _linear_model(tmp_path / "b.pt", 2.0)
    store.add_model("EOS", AMSModelDescr(newer, 0.5, "Random"), test_error=0.2, val_error=0.2,
                    version=4)
    model, entry = store.load_model("EOS", 4)
    assert entry["filename"] == newer
    assert model(torch.ones(1, 2)).item() == pytest.approx(4.0)


def test_load_model_errors(store, make_model, unchanged) -> None:
    path = make_model()
    guard = unchanged()
    with pytest.raises(NotFoundError, match=r"no model in domain 'EOS'.*model versions: none"):
        store.load_model("EOS")
    guard.check()
    store.add_model("EOS", AMSModelDescr(path, 0.5, "Random"), test_error=0.1, val_error=0.1)
    guard = unchanged()
    with pytest.raises(NotFoundError, match=r"no model version 7 in domain 'EOS'.*\[1\]"):
        store.load_model("EOS", version=7)
    with pytest.raises(InvalidArgumentError, match="'newest'"):
        store.load_model("EOS", version="newest")
    guard.check()
    os.remove(path)
    with pytest.raises(MissingFileError, match=f"{path}.*gone from disk"):
        store.load_model("EOS")


def test_import_ams_stays_light() -> None:
    # (h5py is not in the list: Sina, which the adapter imports, imports it.)
    code = ("import ams, sys; heavy = {'torch', 'matplotlib', 'kosh'} & set(sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=MAIN, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ load_data
def test_load_data_concatenates_in_get_files_order(store, make_h5, tmp_path: Path) -> None:
    a = _h5(tmp_path / "d" / "a.h5", inputs=np.full((2, 3), 1.0), outputs=np.full((2,), 10.0))
    b = _h5(tmp_path / "d" / "b.h5", inputs=np.full((3, 3), 2.0), outputs=np.full((3,), 20.0))
    c = _h5(tmp_path / "d" / "c.h5", inputs=np.full((1, 3), 3.0), outputs=np.full((1,), 30.0))
    store.add_data("EOS", [b, a])
    store.add_data("EOS", [c])
    order = store.get_files("EOS", "data")
    expected = {a: 1.0, b: 2.0, c: 3.0}

    inputs, outputs = store.load_data("EOS")
    assert inputs.shape == (6, 3) and outputs.shape == (6,)
    rows = {a: 2, b: 3, c: 1}
    np.testing.assert_array_equal(
        inputs[:, 0], np.concatenate([np.full(rows[p], expected[p]) for p in order]))
    np.testing.assert_array_equal(outputs, inputs[:, 0] * 10)

    (latest,) = store.load_data("EOS", versions="latest", features="inputs")
    np.testing.assert_array_equal(latest, np.full((1, 3), 3.0))
    (first,) = store.load_data("EOS", versions=[1], features=["outputs"])
    assert sorted(first.tolist()) == [10.0, 10.0, 20.0, 20.0, 20.0]

    store.add_candidates("EOS", [make_h5(rows=5)])
    cand_inputs, cand_outputs = store.load_data("EOS", entry="candidates")
    assert cand_inputs.shape == (5, 2) and cand_outputs.shape == (5, 1)


def test_load_data_missing_feature(store, tmp_path: Path, unchanged) -> None:
    good = _h5(tmp_path / "d" / "good.h5", inputs=np.zeros((2, 2)), outputs=np.zeros((2, 1)))
    bad = _h5(tmp_path / "d" / "bad.h5", inputs=np.zeros((2, 2)), other=np.zeros(2))
    store.add_data("EOS", [good, bad])
    guard = unchanged()
    with pytest.raises(NotFoundError) as info:
        store.load_data("EOS")
    assert bad in str(info.value) and "'outputs'" in str(info.value)
    assert "inputs, other" in str(info.value)  # says what the file does hold
    with pytest.raises(NotFoundError, match=r"no data files in domain 'EOS'.*versions=\[9\]"):
        store.load_data("EOS", versions=[9])
    with pytest.raises(InvalidArgumentError, match="load_model"):
        store.load_data("EOS", entry="models")
    with pytest.raises(UnknownEntryTypeError):
        store.load_data("EOS", entry="model")
    with pytest.raises(InvalidArgumentError, match="at least one"):
        store.load_data("EOS", features=[])
    guard.check()


def test_load_data_shape_mismatch(store, tmp_path: Path, unchanged) -> None:
    first = _h5(tmp_path / "d" / "first.h5", inputs=np.zeros((2, 3)), outputs=np.zeros((2, 1)))
    second = _h5(tmp_path / "d" / "second.h5", inputs=np.zeros((4, 2)), outputs=np.zeros((4, 1)))
    scalar = _h5(tmp_path / "d" / "scalar.h5", inputs=np.float64(1.0), outputs=np.zeros((1, 1)))
    store.add_data("EOS", [first])
    store.add_data("EOS", [second])
    store.add_data("EOS", [scalar])
    guard = unchanged()
    with pytest.raises(WrongFileFormatError) as info:
        store.load_data("EOS", versions=[1, 2])
    message = str(info.value)
    assert second in message and first in message and "'inputs'" in message
    assert "(4, 2)" in message and "(n, 3)" in message
    (outputs,) = store.load_data("EOS", versions=[1, 2], features="outputs")  # those agree
    assert outputs.shape == (6, 1)
    with pytest.raises(WrongFileFormatError, match=f"'inputs' of '{scalar}' is a scalar"):
        store.load_data("EOS", versions=3)
    guard.check()


def test_load_data_file_gone(store, make_h5) -> None:
    path = make_h5()
    store.add_data("EOS", [path])
    os.remove(path)
    with pytest.raises(MissingFileError, match=f"{path}.*gone from disk"):
        store.load_data("EOS")


# ------------------------------------------------------------------ kosh_dataset
def test_kosh_dataset_data_and_models(store, make_h5, tmp_path: Path) -> None:
    path = make_h5(rows=3)
    store.add_data("EOS", [path], metadata={"cycle": 7})
    model_path = _linear_model(tmp_path / "m.pt", 2.0)
    store.add_model("EOS", AMSModelDescr(model_path, 0.5, "Random"), test_error=0.1, val_error=0.2)

    dataset = store.kosh_dataset("EOS", "data", 1)
    assert dataset.name == "data" and dataset.version == 1
    assert dataset.application_name == "app"
    assert dataset.list_features() == ["inputs", "outputs"]
    with h5py.File(path) as handle:
        np.testing.assert_array_equal(dataset.get("inputs"), handle["inputs"][()])
    (file_record,) = list(dataset.find())
    assert file_record.uri == path and file_record.cycle == 7

    models = store.kosh_dataset("EOS", "models")  # "latest" by default
    assert "model" in models.list_features()
    module = models.get("model")  # the TorchScript loader is registered
    assert module(torch.ones(1, 2)).item() == pytest.approx(4.0)


def test_kosh_dataset_sees_later_writes_and_writes_nothing(store, make_h5) -> None:
    store.add_data("EOS", [make_h5()])
    before = snapshot_store(store.url)
    assert store.kosh_dataset("EOS", "data", "latest").version == 1
    kosh_store = store._kosh_store
    assert snapshot_store(store.url) == before  # read-only: nothing written, no loader saved
    store.add_data("EOS", [make_h5(), make_h5()])  # not blocked by the open Kosh store
    latest = store.kosh_dataset("EOS", "data")
    assert latest.version == 2 and len(list(latest.find())) == 2  # a fresh snapshot
    assert store._kosh_store is kosh_store  # one Kosh store per open AMSDataStore
    after = snapshot_store(store.url)
    store.close()
    assert store._kosh_store is None
    assert snapshot_store(store.url) == after  # closing Kosh wrote nothing either
    with pytest.raises(StoreClosedError):
        store.kosh_dataset("EOS", "data", 1)


def test_kosh_dataset_not_found(store, make_h5, unchanged) -> None:
    store.add_data("EOS", [make_h5()])
    guard = unchanged()
    with pytest.raises(NotFoundError, match=r"no data dataset of version 3 .*'EOS'.*\[1\]"):
        store.kosh_dataset("EOS", "data", 3)
    with pytest.raises(NotFoundError, match=r"no models dataset of any version.*none"):
        store.kosh_dataset("EOS", "models", "latest")
    with pytest.raises(NotFoundError, match="'OTHER'"):
        store.kosh_dataset("OTHER", "data", 1)
    with pytest.raises(UnknownEntryTypeError):
        store.kosh_dataset("EOS", "datum", 1)
    guard.check()


def test_open_registers_nothing_in_the_database(store_url, make_h5) -> None:
    with AMSDataStore("app", store_url) as store:
        store.add_data("EOS", [make_h5()])
    before = snapshot_store(store_url)
    with AMSDataStore("app", store_url) as store:
        store.kosh_dataset("EOS", "data", 1).list_features()
    with AMSDataStore("app", store_url, read_only=True) as store:
        assert store.kosh_dataset("EOS", "data", 1).version == 1
    assert snapshot_store(store_url) == before


def test_load_model_without_torch_says_what_to_install(store, make_model, monkeypatch):
    import sys

    from ams import AMSModelDescr
    from ams.errors import AMSStoreError, MissingDependencyError
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), 0.1, 0.1)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(MissingDependencyError, match=r"ams-store\[torch\]") as info:
        store.load_model("EOS")
    assert isinstance(info.value, AMSStoreError) and isinstance(info.value, ImportError)
