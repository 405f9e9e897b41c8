"""Kosh loader for TorchScript models (files associated with mime type ``"zip"``).

Features of a model file:

- ``"model"``: the whole scripted module;
- ``"model/<name>"``: one entry of its ``state_dict()`` (parameters *and*
  buffers, e.g. ``"model/0.weight"``, ``"model/1.running_mean"``), in the
  module's own order.

Output formats (Kosh's ``format=``):

- ``"torch"`` (default): the ``torch.jit.ScriptModule`` for ``"model"``, a
  detached CPU tensor for a parameter;
- ``"numpy"``: a ``numpy.ndarray`` for a parameter, a dict name -> ndarray for
  ``"model"``;
- ``"state_dict"``: a dict name -> tensor (the whole state for ``"model"``,
  one item for a parameter).

Models are always loaded on CPU (``map_location="cpu"``) so a catalogue
browser never needs the GPU the model was trained on. torch is imported only
inside the methods that need it.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

from kosh.loaders.core import KoshLoader

from ..errors import MissingDependencyError, WrongFileFormatError
from ..formats import torchscript_problem

__all__ = ["TorchScriptLoader", "is_torchscript_archive", "load_torchscript", "MODEL_FEATURE"]

logger = logging.getLogger(__name__)

#: Feature name of the whole module; parameters are ``MODEL_FEATURE + "/" + name``.
MODEL_FEATURE = "model"

# Paths already reported as unreadable: Kosh retries failed loaders on every
# call, so warn once per path and process, then log at debug level.
_WARNED: set[str] = set()


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Tell, cheaply and without torch, whether ``path`` is a TorchScript archive.

    The rule (a zip with ``<root>/data.pkl``, ``<root>/constants.pkl`` and
    ``<root>/code/``) lives in :func:`ams.formats.torchscript_problem`; this is
    its yes/no form, kept for the loader and its callers.
    """
    problem = torchscript_problem(path)
    if problem is not None:
        logger.debug("%s is not a TorchScript archive: %s", path, problem)
    return problem is None


def load_torchscript(path: str | os.PathLike[str] | None) -> Any:
    """Load a TorchScript module on CPU, with a clear error for files that are not models.

    Shared by the Kosh loader and :meth:`ams.AMSDataStore.load_model`, so both
    refuse non-models with the same :class:`~ams.errors.WrongFileFormatError`.
    """
    if path is None or not is_torchscript_archive(path):
        raise WrongFileFormatError(
            f"{path!r} is not a TorchScript archive (expected a zip written by "
            f"torch.jit.save with <root>/data.pkl, <root>/constants.pkl and <root>/code/)"
        )
    try:
        import torch
    except ImportError as error:
        raise MissingDependencyError(
            f"loading a TorchScript model needs torch ({error}); install the CPU build with: "
            'pip install "ams-store[torch]" (or pip install torch==2.13.0 --index-url '
            "https://download.pytorch.org/whl/cpu)") from None

    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as err:  # torch raises bare RuntimeErrors with C++ traces
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WrongFileFormatError(
            f"{path!r} looks like a TorchScript archive but torch.jit.load failed: {first_line}"
        ) from err


class TorchScriptLoader(KoshLoader):
    """Kosh loader reading TorchScript model files (``.pt``) stored as ``"zip"``.

    ``list_features`` raises for a file that is not a loadable TorchScript
    archive: Kosh then treats the loader as unable to read the file, so no
    feature is claimed, ``dataset.get(...)`` reports the feature as not found,
    and ``open`` raises :class:`~ams.errors.WrongFileFormatError` naming the file.
    """

    types = {"zip": ["torch", "numpy", "state_dict"]}

    # -- loading ---------------------------------------------------------
    def _load_module(self) -> Any:
        """Load the module from ``self.uri`` on CPU, with a clear error for non-models."""
        return load_torchscript(self.uri)

    @staticmethod
    def _state_dict(module: Any) -> "OrderedDict[str, Any]":
        """State dict of detached CPU tensors, so results do not carry autograd history."""
        return OrderedDict((name, tensor.detach()) for name, tensor in module.state_dict().items())

    # -- Kosh interface --------------------------------------------------
    def open(self, mode: str = "r") -> Any:
        """Return the loaded ``torch.jit.ScriptModule`` (``mode`` is ignored: read only)."""
        return self._load_module()

    def list_features(self, *args: Any, **kargs: Any) -> list[str]:
        """``"model"`` plus ``"model/<state_dict key>"``; raises if the file is not a model."""
        try:
            module = self._load_module()
        except WrongFileFormatError as err:
            # Kosh swallows this exception (the loader then claims nothing);
            # log it so a user wondering why a feature is missing can see why.
            key = str(self.uri)
            level = logging.DEBUG if key in _WARNED else logging.WARNING
            _WARNED.add(key)
            logger.log(level, "cannot list features of %s: %s", self.uri, err)
            raise
        return [MODEL_FEATURE] + [f"{MODEL_FEATURE}/{name}" for name in module.state_dict()]

    def describe_feature(self, feature: str) -> dict[str, Any]:
        """Shape/dtype of a parameter, or type and parameter count of the model."""
        module = self._load_module()
        state = self._state_dict(module)
        if feature == MODEL_FEATURE:
            return {
                "type": type(module).__name__,
                "original_name": getattr(module, "original_name", None),
                "parameters": sum(t.numel() for t in module.parameters()),
                "state_dict_entries": len(state),
                "format": "torch",
            }
        name = self._param_name(feature, state)
        tensor = state[name]
        return {"size": tuple(tensor.shape), "type": str(tensor.dtype).replace("torch.", ""), "format": "torch"}

    def extract(self) -> Any:
        """Return the requested feature(s) in ``self.format`` (set by Kosh's ``extract_``)."""
        fmt = getattr(self, "format", None) or self.types["zip"][0]
        features = self.feature if isinstance(self.feature, list) else [self.feature]
        module = self._load_module()
        state = self._state_dict(module)
        out = [self._convert(feature, module, state, fmt) for feature in features]
        return out if isinstance(self.feature, list) else out[0]

    # -- helpers -----------------------------------------------------------
    def _param_name(self, feature: Any, state: "OrderedDict[str, Any]") -> str:
        """Map ``"model/<name>"`` to a state-dict key, or raise naming what exists."""
        prefix = MODEL_FEATURE + "/"
        if isinstance(feature, str) and feature.startswith(prefix) and feature[len(prefix):] in state:
            return feature[len(prefix):]
        raise ValueError(
            f"feature {feature!r} is not in TorchScript model {self.uri!r}; "
            f"known: {[MODEL_FEATURE] + [prefix + n for n in state]}"
        )

    def _convert(self, feature: Any, module: Any, state: "OrderedDict[str, Any]", fmt: str) -> Any:
        if feature in (None, MODEL_FEATURE):
            if fmt == "torch":
                return module
            if fmt == "state_dict":
                return state
            if fmt == "numpy":
                return OrderedDict((n, _to_numpy(t)) for n, t in state.items())
        else:
            name = self._param_name(feature, state)
            tensor = state[name]
            if fmt == "torch":
                return tensor
            if fmt == "state_dict":
                return OrderedDict([(name, tensor)])
            if fmt == "numpy":
                return _to_numpy(tensor)
        raise ValueError(f"TorchScriptLoader cannot output format {fmt!r}; use one of {self.types['zip']}")


def _to_numpy(tensor: Any) -> Any:
    """Tensor -> ndarray; dtypes numpy lacks (bfloat16, ...) are widened to float32."""
    import torch

    try:
        return tensor.cpu().numpy()
    except TypeError:
        logger.debug("dtype %s has no numpy equivalent; converting to float32", tensor.dtype)
        return tensor.cpu().to(torch.float32).numpy()
