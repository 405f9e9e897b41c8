"""Tests of the Kosh TorchScript loader, through plain Kosh as a notebook user would."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import kosh
import numpy as np
import pytest
import torch

from ams.errors import WrongFileFormatError
from ams.loaders import TorchScriptLoader, is_torchscript_archive, register_loaders

MAIN = Path(__file__).resolve().parents[1]


@pytest.fixture()
def model(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).eval()
    path = tmp_path / "EOS_model.pt"
    torch.jit.script(module).save(str(path))
    return path, module


@pytest.fixture()
def plain_zip(tmp_path: Path) -> Path:
    path = tmp_path / "plain.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("plain/data.pkl", b"not a model")
        archive.writestr("plain/readme.txt", "hello")
    return path


def _dataset(store, ensemble_name: str, path: Path):
    ensemble = store.create_ensemble(ensemble_name)
    dataset = ensemble.create(name="models", metadata={"version": 1})
    dataset.associate(str(path), mime_type="zip")
    return dataset


@pytest.fixture()
def store(tmp_path: Path):
    st = kosh.connect(str(tmp_path / "k.db"))
    yield st
    st.close()


# -- loader through plain Kosh ------------------------------------------------
def test_list_features(store, model) -> None:
    path, module = model
    dataset = _dataset(store, "EOS", path)
    register_loaders(store)
    expected = ["model"] + [f"model/{name}" for name in module.state_dict()]
    assert dataset.list_features() == expected
    assert "model/0.weight" in expected and "model/1.running_mean" in expected


def test_get_model_runs_like_original(store, model) -> None:
    path, module = model
    dataset = _dataset(store, "EOS", path)
    register_loaders(store)
    loaded = dataset.get("model")
    assert isinstance(loaded, torch.jit.ScriptModule)
    x = torch.randn(5, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))
    opened = dataset.open()
    assert isinstance(opened, torch.jit.ScriptModule)
    with torch.no_grad():
        torch.testing.assert_close(opened(x), module(x))


def test_get_parameters(store, model) -> None:
    path, module = model
    dataset = _dataset(store, "EOS", path)
    register_loaders(store)
    weight = dataset.get("model/0.weight", format="numpy")
    assert isinstance(weight, np.ndarray)
    np.testing.assert_array_equal(weight, module[0].weight.detach().numpy())
    bias = dataset.get("model/0.bias")  # default format: torch
    assert isinstance(bias, torch.Tensor) and not bias.requires_grad
    torch.testing.assert_close(bias, module[0].bias.detach())
    state = dataset.get("model", format="state_dict")
    assert list(state) == list(module.state_dict())
    arrays = dataset.get("model", format="numpy")
    np.testing.assert_array_equal(arrays["1.running_var"], module[1].running_var.numpy())
    assert dataset.describe_feature("model/0.weight")["size"] == (3, 2)


def test_not_torchscript_gives_clear_error(store, plain_zip, tmp_path: Path, caplog) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage" * 100)
    bad = _dataset(store, "EOS", plain_zip)
    bad.associate(str(garbage), mime_type="zip")
    register_loaders(store)
    with caplog.at_level("WARNING", logger="ams.loaders"):
        assert bad.list_features() == []  # claims nothing it cannot load
    assert "not a TorchScript archive" in caplog.text
    with pytest.raises(ValueError, match="model"):
        bad.get("model")
    with pytest.raises(WrongFileFormatError, match="plain.pt.*not a TorchScript archive"):
        bad.open()
    file_obj = next(iter(bad.find(uri=str(garbage))))
    with pytest.raises(WrongFileFormatError, match="garbage.pt"):
        TorchScriptLoader(file_obj).open()


def test_register_is_idempotent_and_not_saved(store, model) -> None:
    register_loaders(store)
    register_loaders(store)
    assert store.loaders["zip"].count(TorchScriptLoader) == 1
    assert list(store.get_sina_records().find_with_type(store._loaders_type, ids_only=True)) == []


def test_register_on_read_only_store(tmp_path: Path, model) -> None:
    path, module = model
    db = str(tmp_path / "k.db")
    writer = kosh.connect(db)
    _dataset(writer, "EOS", path)
    writer.close()
    reader = kosh.connect(db, read_only=True)
    try:
        register_loaders(reader)
        assert TorchScriptLoader in reader.loaders["zip"]
        # Kosh 3.5 cannot even connect with connection_type="read" (its own
        # loaders hit add_loader's mode check); simulate such a store to cover
        # register_loaders's in-memory fallback.
        reader.loaders["zip"].remove(TorchScriptLoader)
        reader.__connection_type__ = "read"
        register_loaders(reader)
        assert reader.loaders["zip"].count(TorchScriptLoader) == 1
        dataset = next(reader.find_ensembles(name="EOS")).find_datasets(name="models")
        loaded = next(dataset).get("model")
        x = torch.randn(3, 2)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), module(x))
    finally:
        reader.close()


# -- is_torchscript_archive ----------------------------------------------------
def test_is_torchscript_archive(tmp_path: Path, model, plain_zip) -> None:
    path, module = model
    assert is_torchscript_archive(path)
    assert is_torchscript_archive(str(path))
    traced = tmp_path / "traced"  # no suffix: the rule does not depend on names
    torch.jit.trace(module, torch.zeros(4, 2)).save(str(traced))
    assert is_torchscript_archive(traced)

    assert not is_torchscript_archive(plain_zip)
    state_dict = tmp_path / "state.pt"  # torch.save: same zip layout, not TorchScript
    torch.save(module.state_dict(), state_dict)
    assert not is_torchscript_archive(state_dict)

    h5 = tmp_path / "data.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(10)
    assert not is_torchscript_archive(h5)

    empty = tmp_path / "empty.pt"
    empty.touch()
    assert not is_torchscript_archive(empty)

    truncated = tmp_path / "truncated.pt"
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 10):
        truncated.write_bytes(data[:cut])
        assert not is_torchscript_archive(truncated), cut

    assert not is_torchscript_archive(tmp_path / "missing.pt")
    assert not is_torchscript_archive(tmp_path)  # a directory


def test_import_does_not_import_torch() -> None:
    code = "import ams.loaders, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=MAIN, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

