"""Kosh loaders for the file kinds ``ams`` catalogues.

Kosh picks a loader by the mime type of an associated file; ``ams`` stores
TorchScript models with mime type ``"zip"``, which no stock Kosh loader reads.
Importing this package is cheap on purpose: it imports neither torch nor Kosh,
so that tools that only browse the catalogue do not pay for them. The loader
class is imported on first attribute access.

Loaders are registered in-process (:func:`register_loaders`), never saved into
the store: a pickled loader reference in the database makes every process that
cannot import it fail in ``kosh.connect``, read-only ones too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .torchscript import TorchScriptLoader, is_torchscript_archive

__all__ = ["TorchScriptLoader", "is_torchscript_archive", "register_loaders"]

logger = logging.getLogger(__name__)

_LAZY = {
    "TorchScriptLoader": ".torchscript",
    "is_torchscript_archive": ".torchscript",
}


def __getattr__(name: str) -> Any:
    """Import loader classes on first use, to keep ``import ams.loaders`` light."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def register_loaders(kosh_store: Any) -> None:
    """Make ``ams``'s loaders known to an open Kosh store, in this process only.

    Calls ``kosh_store.add_loader(loader)`` without ``save=True`` (see the
    module docstring). Kosh refuses ``add_loader`` on stores opened with
    ``connection_type="read"`` although, unsaved, it only touches in-memory
    tables; for those the same in-memory registration is done directly, so
    read-only browsers can load models too. Calling this twice is harmless.
    """
    from .torchscript import TorchScriptLoader

    try:
        kosh_store.add_loader(TorchScriptLoader)
    except RuntimeError as err:
        if getattr(kosh_store, "__connection_type__", None) != "read":
            raise
        logger.debug("add_loader refused on a read-only Kosh store (%s); registering in memory", err)
        _register_in_memory(kosh_store, TorchScriptLoader)


def _register_in_memory(kosh_store: Any, loader: type) -> None:
    """Do what ``KoshStore.add_loader(loader, save=False)`` does, minus its mode check."""
    kosh_store._cached_loaders.clear()
    for mime_type in cast(Any, loader).types:
        known = kosh_store.loaders.setdefault(mime_type, [])
        if loader not in known:
            known.append(loader)
