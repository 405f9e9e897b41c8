"""Value types of the store: UQ kinds, model descriptions and returned entries."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, Union

from .errors import InvalidArgumentError, InvalidArgumentTypeError, MissingFileError

__all__ = ["UQType", "UQAggregate", "AMSModelDescr", "Entry", "VerifyReport"]


class UQType(Enum):
    """How a surrogate model estimates its own uncertainty."""

    Random = "random"
    DeltaUQ = "deltauq"
    Faiss = "faiss"


class UQAggregate(Enum):
    """How per-output uncertainties are reduced to one number."""

    max = "max"
    mean = "mean"


def _as_enum(enum_type: type, value: Any, what: str) -> Optional[Enum]:
    """Accept an enum member or its name/value (as the CLI passes strings)."""
    if value is None or isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        for member in enum_type:
            if value in (member.name, member.value) or value.lower() == member.name.lower():
                return member
    names = ", ".join(member.name for member in enum_type)
    raise InvalidArgumentError(f"{what} must be one of {names}, not {value!r}")


@dataclass
class AMSModelDescr:
    """A TorchScript surrogate and how to use it.

    >>> AMSModelDescr("model.pt", 0.5, UQType.DeltaUQ, UQAggregate.mean)  # doctest: +SKIP
    """

    path: Union[str, os.PathLike]
    threshold: float
    uq_type: UQType
    uq_aggregate: Optional[UQAggregate] = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not os.fspath(self.path):
            raise InvalidArgumentTypeError(f"model path must be a non-empty str or path, not {self.path!r}")
        self.path = os.path.realpath(os.fspath(self.path))
        if not os.path.isfile(self.path):
            raise MissingFileError(f"model file does not exist: {self.path!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise InvalidArgumentTypeError(f"threshold must be a number, not {self.threshold!r}")
        if not math.isfinite(self.threshold):
            raise InvalidArgumentError(f"threshold must be finite, not {self.threshold!r}")
        self.threshold = float(self.threshold)
        self.uq_type = _as_enum(UQType, self.uq_type, "uq_type")
        if self.uq_type is None:
            raise InvalidArgumentError("uq_type is required")
        self.uq_aggregate = _as_enum(UQAggregate, self.uq_aggregate, "uq_aggregate")
        if self.uq_type is not UQType.Random and self.uq_aggregate is None:
            raise InvalidArgumentError(
                f"uq_type {self.uq_type.name} needs a uq_aggregate ({', '.join(a.name for a in UQAggregate)})")

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (enum names) as stored on the model's association.

        ``uq_aggregate`` is left out when it is None (the store keeps no None).
        """
        out: Dict[str, Any] = {
            "path": os.fspath(self.path),
            "threshold": self.threshold,
            "uq_type": self.uq_type.name,
        }
        if self.uq_aggregate is not None:
            out["uq_aggregate"] = self.uq_aggregate.name
        return out


@dataclass(frozen=True)
class Entry:
    """One registered file, as ``find`` and ``search`` describe it."""

    id: str
    application_name: Optional[str]
    domain_name: str
    filename: str
    entry_type: str
    version: int
    metadata: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "application_name": self.application_name,
            "domain_name": self.domain_name,
            "filename": self.filename,
            "entry_type": self.entry_type,
            "version": self.version,
            "metadata": dict(self.metadata),
        }


@dataclass
class VerifyReport:
    """What :meth:`AMSDataStore.verify` found, comparing the records with the disk.

    ``checked``: records looked at. ``missing``: entries whose file is gone (or
    is no longer a regular file). ``changed``: entries whose content differs from
    what was registered (Kosh's ``fast_sha``), with ``registered_fast_sha`` and
    ``current_fast_sha``. ``unreadable``: entries whose file exists but could not
    be read (``error``). ``repaired``: paths whose records ``repair=True`` dropped.
    ``stray_copies``: unregistered copies a killed ``move`` left in its
    destination; ``unpurged``: files a killed ``move`` or purge should have
    deleted (no record holds them any more); ``cleaned``: what ``repair=True``
    removed of those two.
    Each entry is a dict with ``id``, ``application_name``, ``domain_name``,
    ``entry_type``, ``version`` and ``filename``.
    """

    checked: int = 0
    missing: List[Dict[str, Any]] = field(default_factory=list)
    changed: List[Dict[str, Any]] = field(default_factory=list)
    unreadable: List[Dict[str, Any]] = field(default_factory=list)
    repaired: List[str] = field(default_factory=list)
    stray_copies: List[str] = field(default_factory=list)
    unpurged: List[str] = field(default_factory=list)
    cleaned: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every record matches its file (a missing one counts once repaired) and
        no killed move or purge left files behind (or they were cleaned)."""
        repaired, cleaned = set(self.repaired), set(self.cleaned)
        return (not self.changed and not self.unreadable
                and all(entry["filename"] in repaired for entry in self.missing)
                and all(path in cleaned for path in self.stray_copies + self.unpurged))

    def to_dict(self) -> Dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked,
                "missing": [dict(entry) for entry in self.missing],
                "changed": [dict(entry) for entry in self.changed],
                "unreadable": [dict(entry) for entry in self.unreadable],
                "repaired": list(self.repaired), "stray_copies": list(self.stray_copies),
                "unpurged": list(self.unpurged), "cleaned": list(self.cleaned)}
