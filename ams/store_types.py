"""Value types of the store: UQ kinds, model descriptions and returned entries."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, Type, Union, cast

from . import _validate
from .errors import InvalidArgumentError, InvalidArgumentTypeError, MissingFileError
from .metadata_codec import decode_metadata

__all__ = ["UQType", "UQAggregate", "AMSModelDescr", "Entry", "EntryDict", "FlatEntryDict",
           "VerifyReport"]


class _LenientEnum(Enum):
    """``Kind(text)`` also takes a member's name, and either in any case.

    Stores are written with the values (what AMSlib reads); this leniency
    reads stores that hold the names (``"Random"``, ``"DeltaUQ"``) or the old
    lower-case value ``"deltauq"``.
    """

    @classmethod
    def _missing_(cls, value: Any) -> Optional["_LenientEnum"]:
        if isinstance(value, str):
            folded = value.casefold()
            for member in cls:
                if folded in (member.name.casefold(), str(member.value).casefold()):
                    return member
        return None


class UQType(_LenientEnum):
    """How a surrogate model estimates its own uncertainty.

    The values are the original's and what AMSlib's ``getUQType`` accepts;
    a model's entry stores the value (``"deltaUQ"``).
    """

    Random = "random"
    DeltaUQ = "deltaUQ"
    Faiss = "faiss"


class UQAggregate(_LenientEnum):
    """How per-output uncertainties are reduced to one number (stored by value)."""

    max = "max"
    mean = "mean"


def _as_enum(enum_type: Type[Enum], value: Any, what: str) -> Optional[Enum]:
    """Accept an enum member or its name/value in any case (as the CLI passes strings)."""
    if value is None or isinstance(value, enum_type):
        return cast(Optional[Enum], value)
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
    names = ", ".join(f"{member.name} ({member.value!r})" for member in enum_type)
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
        self.path = _validate.absolute_path(self.path, "model path")
        if not os.path.isfile(self.path):
            raise MissingFileError(f"model file does not exist: {self.path!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise InvalidArgumentTypeError(f"threshold must be a number, not {self.threshold!r}")
        self.threshold = float(_validate.error_value(self.threshold, "threshold",
                                                     InvalidArgumentError))
        self.uq_type = cast(UQType, _as_enum(UQType, self.uq_type, "uq_type"))
        if self.uq_type is None:
            raise InvalidArgumentError("uq_type is required")
        self.uq_aggregate = cast(Optional[UQAggregate], _as_enum(UQAggregate, self.uq_aggregate, "uq_aggregate"))
        if self.uq_type is not UQType.Random and self.uq_aggregate is None:
            raise InvalidArgumentError(
                f"uq_type {self.uq_type.name} needs a uq_aggregate ({', '.join(a.name for a in UQAggregate)})")

    def to_dict(self) -> Dict[str, Any]:
        """Plain values, as the original's ``to_dict``: enums by value.

        ``{"path", "threshold", "uq_type"}``, plus ``uq_aggregate`` unless
        ``uq_type`` is Random (AMSlib ignores it there; the original left it
        out too). ``add_model`` stores all of it but ``path`` (the file's uri
        is the path).
        """
        out: Dict[str, Any] = {
            "path": os.fspath(self.path),
            "threshold": self.threshold,
            "uq_type": self.uq_type.value,
        }
        if self.uq_type is not UQType.Random and self.uq_aggregate is not None:
            out["uq_aggregate"] = self.uq_aggregate.value
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

    def to_dict(self) -> "EntryDict":
        """The entry as ``find``/``search`` return it; nested metadata decoded."""
        return EntryDict(
            id=self.id,
            application_name=self.application_name,
            domain_name=self.domain_name,
            filename=self.filename,
            entry_type=self.entry_type,
            version=self.version,
            metadata=decode_metadata(self.metadata),
        )


class EntryDict(dict):
    """One entry as ``find`` and ``search`` return it: a ``dict`` of the reference's keys.

    Its items (what ``json.dumps``, ``keys()``, ``==`` and ``dict(e)`` see)
    are exactly ``id, application_name, domain_name, filename, entry_type,
    version, metadata``. It also answers, on ``e[key]``, ``e.get(key)`` and
    ``key in e``, the keys the original (Kosh-era) backend's flat results had:
    ``file`` (= filename), ``domain`` (= domain_name), ``entry``
    (= entry_type), and each metadata attribute at the top level
    (``e["uq_type"]``, ``e["threshold"]``, ``e["val_error"]``); a metadata key
    named like a reference key is reached through ``e["metadata"]`` only.
    Attribute access reads the same keys (``e.filename``, ``e.version``,
    ``e.uq_type``), as the SQL-era rows were objects. Any other key raises
    :class:`KeyError` (:class:`AttributeError` for attributes).

    >>> e = EntryDict(id="1", application_name="app", domain_name="EOS", filename="/m.pt",
    ...               entry_type="models", version=2, metadata={"uq_type": "random"})
    >>> e["file"], e.uq_type, e.get("missing"), sorted(e)[:2]
    ('/m.pt', 'random', None, ['application_name', 'domain_name'])
    """

    __slots__ = ()
    #: Kosh-era key -> reference key.
    KOSH_ERA_KEYS = {"file": "filename", "domain": "domain_name", "entry": "entry_type"}

    def _extra(self, key: Any) -> Any:
        """The value of a key that is not an item, or raise KeyError."""
        target = self.KOSH_ERA_KEYS.get(key) if isinstance(key, str) else None
        if target is not None and dict.__contains__(self, target):
            return dict.__getitem__(self, target)
        metadata = dict.get(self, "metadata")
        if isinstance(metadata, dict) and key in metadata:
            return metadata[key]
        raise KeyError(key)

    def __missing__(self, key: Any) -> Any:
        return self._extra(key)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        if dict.__contains__(self, key):
            return True
        try:
            self._extra(key)
        except (KeyError, TypeError):
            return False
        return True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key or attribute {name!r}") from None


class FlatEntryDict(EntryDict):
    """An entry in the original (Kosh-era) backend's flat shape, from ``search`` of a store
    built with ``AMSDataStore(store_path, store_name, name)``.

    Its items are ``domain, entry, version, file`` and then the entry's
    metadata attributes (``uq_type``, ``threshold``, ``date``...), as the
    original's ``search`` returned them (the store's fields win over a
    metadata key of the same name). It also answers the reference's keys
    (``filename``, ``domain_name``, ``entry_type``, ``id``,
    ``application_name``, ``metadata``), on ``[]``, ``get``, ``in`` and as
    attributes; :meth:`reference` gives the reference-shaped :class:`EntryDict`.
    """

    __slots__ = ("_reference",)

    def __init__(self, reference: EntryDict) -> None:
        flat = {"domain": reference["domain_name"], "entry": reference["entry_type"],
                "version": reference["version"], "file": reference["filename"]}
        dict.__init__(self, {**flat, **{key: value for key, value in reference["metadata"].items()
                                        if key not in flat}})
        self._reference = reference

    def reference(self) -> EntryDict:
        """The same entry in the reference's shape."""
        return self._reference

    def _extra(self, key: Any) -> Any:
        if isinstance(key, str) and dict.__contains__(self._reference, key):
            return dict.__getitem__(self._reference, key)
        raise KeyError(key)

    def __reduce__(self):
        return (type(self), (self._reference,))


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
