"""Notebook helpers behind :meth:`AMSDataStore.load_model`, ``load_data`` and ``kosh_dataset``.

Scientists browse the catalogue from Jupyter: they want the newest model as a
runnable module, a version's training data as arrays, and, for Kosh's own API,
the Kosh dataset object. The facade keeps the argument checks short and
delegates here; heavy imports (torch, h5py, kosh) happen inside the functions
that need them, so ``import ams`` stays light.

Only :func:`connect_kosh` (and :mod:`ams.loaders`) use Kosh's own API: it
opens a plain, read-only Kosh store on the same database, because handing out
Kosh objects is the point of ``kosh_dataset``; which dataset to hand out is
the catalogue's answer, found by the store.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple, Union

from . import _validate
from .errors import (
    BackendError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
    NotFoundError,
    WrongFileFormatError,
)
from .url import StoreURL, mask_password

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy

    from .store import AMSDataStore

__all__ = ["load_model", "load_data", "connect_kosh", "close_kosh", "kosh_dataset"]

LOGGER = logging.getLogger(__name__)

VersionOrLatest = Union[int, str]


# ------------------------------------------------------------------ models
def load_model(store: "AMSDataStore", domain_name: str,
               version: VersionOrLatest = "latest") -> Tuple[Any, Dict[str, Any]]:
    """The TorchScript module of a model version (on CPU) and its entry dict.

    When a version holds several model files, the most recently registered one
    (highest ``date``) is loaded and the choice is logged.
    """
    domain_name = _validate.name(domain_name, "domain_name")
    version = version_or_latest(version)
    entries = store.find(domain_name, entry_type="models", version=version)
    if not entries:
        known = store.get_model_versions(domain_name)
        where = "" if version == "latest" else f" version {version}"
        raise NotFoundError(f"no model{where} in domain {domain_name!r} of application "
                            f"{store.application_name!r} (model versions: {known or 'none'})")
    entries.sort(key=lambda e: (str(e["metadata"].get("date", "")), e["filename"]))
    entry = entries[-1]
    if len(entries) > 1:
        LOGGER.info("model version %d of %s holds %d files; loading the newest, %s",
                    entry["version"], domain_name, len(entries), entry["filename"])
    path = entry["filename"]
    if not os.path.isfile(path):
        raise MissingFileError(f"model {path!r} (domain {domain_name!r}, version "
                               f"{entry['version']}) is registered but gone from disk")
    from .loaders.torchscript import load_torchscript
    module = load_torchscript(path)
    LOGGER.debug("loaded model %s (version %d of %s)", path, entry["version"], domain_name)
    return module, entry


# ------------------------------------------------------------------ data
def load_data(store: "AMSDataStore", domain_name: str, entry: str = "data",
              versions: Any = None,
              features: Union[str, Sequence[str]] = ("inputs", "outputs")) -> Tuple["numpy.ndarray", ...]:
    """One array per feature, concatenated along axis 0 over the selected files.

    Files come in :meth:`AMSDataStore.get_files` order. Every file must hold
    every feature as an HDF5 dataset of at least one dimension, with the same
    shape beyond axis 0 as in the first file; otherwise the error names the file
    and the feature. Shapes are checked before any data is read.
    """
    entry = _validate.entry_type(entry, "entry")
    if entry == "models":
        raise InvalidArgumentError("load_data reads HDF5 entries ('data', 'candidates'); "
                                   "use load_model for 'models'")
    names = _features(features)
    files = store.get_files(domain_name, entry, versions)
    if not files:
        raise NotFoundError(f"no {entry} files in domain {domain_name!r} of application "
                            f"{store.application_name!r} for versions={versions!r}")
    import h5py
    import numpy as np

    handles: List[Any] = []
    try:
        for path in files:
            handles.append(_open_h5(h5py, path))
        expected: Dict[str, Tuple[Tuple[int, ...], str]] = {}
        for path, handle in zip(files, handles):
            for name in names:
                shape = _feature_shape(h5py, handle, path, name)
                if name not in expected:
                    expected[name] = (shape[1:], path)
                elif shape[1:] != expected[name][0]:
                    first_shape, first_path = expected[name]
                    raise WrongFileFormatError(
                        f"feature {name!r} of {path!r} has shape {shape}, which does not "
                        f"concatenate with shape (n, {', '.join(map(str, first_shape))}) of "
                        f"{first_path!r}: shapes beyond axis 0 must agree")
        arrays = tuple(np.concatenate([handle[name][()] for handle in handles], axis=0)
                       for name in names)
    finally:
        for handle in handles:
            handle.close()
    LOGGER.debug("loaded %s from %d %s file(s) of %s", ", ".join(names), len(files), entry,
                 domain_name)
    return arrays


def _features(features: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(features, str):
        features = [features]
    if not isinstance(features, (list, tuple)):
        raise InvalidArgumentTypeError(f"features must be a str or a list of str, not "
                                       f"{type(features).__name__} ({features!r})")
    if not features:
        raise InvalidArgumentError("features must name at least one HDF5 dataset")
    for name in features:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentTypeError(f"each feature must be a non-empty str, not {name!r}")
    return list(features)


def _open_h5(h5py: Any, path: str) -> Any:
    if not os.path.isfile(path):
        raise MissingFileError(f"registered file {path!r} is gone from disk")
    try:
        return h5py.File(path, "r")
    except Exception as error:  # h5py raises OSError and friends for non-HDF5 files
        raise WrongFileFormatError(f"cannot read {path!r} as HDF5 ({error})") from None


def _feature_shape(h5py: Any, handle: Any, path: str, name: str) -> Tuple[int, ...]:
    item = handle.get(name)
    if item is None:
        found = ", ".join(sorted(handle.keys())) or "nothing"
        raise NotFoundError(f"{path!r} has no feature {name!r} (it holds: {found})")
    if not isinstance(item, h5py.Dataset):
        raise WrongFileFormatError(f"feature {name!r} of {path!r} is an HDF5 group, not a dataset")
    if not item.shape:
        raise WrongFileFormatError(f"feature {name!r} of {path!r} is a scalar; it cannot be "
                                   "concatenated along axis 0")
    return tuple(item.shape)


# ------------------------------------------------------------------ Kosh
def connect_kosh(url: StoreURL) -> Any:
    """A plain, read-only ``kosh.connect`` on the store's database, with ams's loaders.

    SQLite stores are opened by file path, MariaDB ones by SQLAlchemy URL. The
    loaders are registered in this process only (never saved in the store).
    """
    import kosh

    from .loaders import register_loaders
    target = url.path if url.backend == "sqlite" else url.sqlalchemy_url()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kosh_store = kosh.connect(target, read_only=True)
    except Exception as error:  # kosh/sina/SQLAlchemy raise many kinds
        message = mask_password(str(error).splitlines()[0] if str(error) else repr(error),
                                url.password)
        raise BackendError(f"kosh.connect on {url} failed: {message}") from None
    register_loaders(kosh_store)
    LOGGER.debug("opened a read-only Kosh store on %s", url)
    return kosh_store


def close_kosh(kosh_store: Any) -> None:
    """Close a store from :func:`connect_kosh` and release it: nothing of it is left for exit.

    ``KoshStore.__init__`` registers ``atexit.register(self._clean_up)`` (which
    closes the store and runs ``gc.collect()``) and nothing unregisters it, so
    every Kosh store a process opened stays alive, and is closed and collected
    again, at interpreter exit: seconds per store in a process holding torch.
    This runs that clean-up now and unregisters exactly that bound method (bound
    methods compare equal by object and function). Errors of Kosh's close
    propagate; the clean-up is unregistered anyway.
    """
    clean_up = getattr(kosh_store, "_clean_up", None)
    if not callable(clean_up):  # not a KoshStore of kosh 3.x: close it the plain way
        kosh_store.close()
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean_up()
    finally:
        atexit.unregister(clean_up)
    LOGGER.debug("closed a Kosh store and unregistered its exit clean-up")


def kosh_dataset(kosh_store: Any, dataset_id: str) -> Any:
    """The Kosh dataset ``dataset_id`` (found by the catalogue) from ``kosh_store``."""
    _end_snapshot(kosh_store)
    found = list(kosh_store.find(id_pool=[dataset_id]))
    if not found:  # pragma: no cover - removed between the two reads
        raise NotFoundError(f"the Kosh dataset {dataset_id} disappeared while it was being opened")
    return found[0]


def _end_snapshot(kosh_store: Any) -> None:
    """End the read transaction Sina's session keeps open, so Kosh sees recent writes.

    A long-lived Sina session stays in one transaction; on MariaDB (REPEATABLE
    READ by default) it would never see files added after its first query.
    """
    session = getattr(getattr(kosh_store.get_sina_store(), "_record_dao", None), "session", None)
    if session is not None:
        session.rollback()


def version_or_latest(version: Any) -> VersionOrLatest:
    """An int version, ``"latest"``, or an ``"@alias"`` selector (resolved by the store).

    >>> version_or_latest("@champion"), version_or_latest("latest"), version_or_latest(3)
    ('@champion', 'latest', 3)
    """
    if (isinstance(version, str) and version != "latest"
            and not _validate.alias_selector(version) and not version.isdecimal()):
        raise InvalidArgumentError(f"version must be an int, 'latest' or '@alias', not {version!r}")
    return _validate.single_version(version)
