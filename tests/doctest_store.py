"""Doctest fixtures for the examples in ``ams/`` (``--doctest-modules``; a pytest plugin
loaded with ``-p doctest_store``, see setup.cfg).

A doctest with an example that mentions ``store`` (and is not ``+SKIP``) runs in a fresh temporary directory
(its current directory, so relative names such as ``sqlite:///ams.db``,
``run1.h5`` or ``eos.pdf`` land there) with, in its namespace:

``store``
    an open :class:`ams.AMSDataStore` of application ``app`` on SQLite in that
    directory, closed after the doctest, holding in domain ``EOS``:

    - data version 1: ``files/eos_1.h5``, ``files/eos_2.h5`` (metadata ``cycle=1``),
      version 2: ``files/eos_3.h5`` (``cycle=2``); each file has ``inputs`` (4x2)
      and ``outputs`` (4x1) float datasets;
    - candidates version 1: ``files/candidate_1.h5``;
    - models (TorchScript, ``Linear(2, 1)``, threshold 0.5, ``UQType.Random``):
      version 1 ``models/eos_v1.pt`` (val_error 0.2, test_error 0.25,
      trained on data 1), version 2 ``models/eos_v2.pt`` (0.08 / 0.09, data 1),
      version 3 ``models/eos_v3.pt`` (0.05 / 0.06, data 1 and 2).

``url``
    that store's URL (``sqlite:///...``).

Also in the directory: ``run1.h5`` and ``run2.h5`` (the same kind of HDF5 files,
not registered) and, for doctests that call ``import_from``, a catalogue of the
first Kosh-era AMS store, ``old/ams_config.json``: application ``app``, domain
``EOS``, 120 data files ``old/data/old_NNN.h5`` in version 1, none of them in
``store``. Other doctests are left alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DOCTEST_APP = "app"


def _write_h5(path: Path, seed: int) -> str:
    import h5py
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        handle["inputs"] = rng.random((4, 2))
        handle["outputs"] = rng.random((4, 1))
    return str(path)


@pytest.fixture(scope="session")
def _doctest_model_bytes(tmp_path_factory) -> bytes:
    import torch
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("doctest-model") / "model.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 1))).save(str(path))
    return path.read_bytes()


OLD_FILES = 120


def _write_kosh_era_catalogue(folder: Path, template: str) -> str:
    """``folder/ams_config.json`` and its Kosh store, as the first Kosh-era AMS wrote them."""
    import json
    import shutil

    import kosh
    paths = []
    for index in range(OLD_FILES):
        path = folder / "data" / f"old_{index:03d}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        paths.append(str(path))
    kosh_store = kosh.connect(str(folder / "ams_store.sql"))
    try:
        ensemble = kosh_store.create_ensemble(name="EOS", metadata={"application_name": DOCTEST_APP})
        dataset = ensemble.create(name="data", metadata={"version": 1})
        dataset.associate(paths, mime_type="hdf5", absolute_path=True)
    finally:
        kosh_store.close()
    config = folder / "ams_config.json"
    config.write_text(json.dumps({"name": DOCTEST_APP, "ams_persistent_db": {
        "path": str(folder), "type": "hdf5", "store": "ams_store.sql"}}, indent=6))
    return str(config)


def _examples_using(item, word: str) -> bool:
    """Whether a doctest item has an example that mentions ``word`` and is not skipped."""
    import doctest

    from _pytest.doctest import DoctestItem
    if not isinstance(item, DoctestItem) or item.dtest is None:
        return False
    return any(word in example.source and not example.options.get(doctest.SKIP, False)
               for example in item.dtest.examples)


@pytest.fixture(autouse=True)
def _doctest_store(request, doctest_namespace):
    """Put ``store`` and ``url`` in the namespace of doctests that use a store (see above)."""
    if not _examples_using(request.node, "store"):
        yield
        return
    from ams import AMSDataStore, AMSModelDescr, UQType

    tmp_path: Path = request.getfixturevalue("tmp_path")
    request.getfixturevalue("monkeypatch").chdir(tmp_path)
    model_bytes: bytes = request.getfixturevalue("_doctest_model_bytes")
    for seed, name in enumerate(("run1.h5", "run2.h5"), start=100):
        _write_h5(tmp_path / name, seed)
    files = tmp_path / "files"
    eos = [_write_h5(files / f"eos_{n}.h5", n) for n in (1, 2, 3)]
    candidate = _write_h5(files / "candidate_1.h5", 4)
    models = []
    for version in (1, 2, 3):
        path = tmp_path / "models" / f"eos_v{version}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model_bytes)
        models.append(str(path))

    if _examples_using(request.node, "import_from"):
        _write_kosh_era_catalogue(tmp_path / "old", eos[0])

    url = f"sqlite:///{tmp_path / 'store' / 'ams.db'}"
    store = AMSDataStore(DOCTEST_APP, url).open()
    try:
        store.add_data("EOS", eos[:2], metadata={"cycle": 1})
        store.add_data("EOS", eos[2:], metadata={"cycle": 2})
        store.add_candidates("EOS", [candidate])
        for path, (val_error, test_error), trained_on in zip(
                models, ((0.2, 0.25), (0.08, 0.09), (0.05, 0.06)), ([1], [1], [1, 2])):
            store.add_model("EOS", AMSModelDescr(path, 0.5, UQType.Random),
                            test_error=test_error, val_error=val_error, trained_on=trained_on)
        doctest_namespace["store"] = store
        doctest_namespace["url"] = url
        yield
    finally:
        doctest_namespace.pop("store", None)
        doctest_namespace.pop("url", None)
        store.close()
