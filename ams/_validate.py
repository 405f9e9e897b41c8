"""Argument checks shared by the facade: names, versions, paths, metadata, file formats.

Every check raises an :mod:`ams.errors` type naming the bad value, before the
store or any file is touched.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import stat
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union, cast

from . import formats, metadata_codec
from .errors import (
    DestinationExistsError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidMetadataError,
    MissingFileError,
    UnknownEntryTypeError,
)
from .keys import ACTIONS, ENTRY_TYPES

MAX_NAME_LENGTH = 255      # Sina's name columns are VARCHAR(255)
MAX_STRING_LENGTH = 15000  # Sina's string value columns are VARCHAR(15000)
MAX_PATH_LENGTH = 1500     # Sina's Document.uri is VARCHAR(1500)
MAX_VERSION = 2**31 - 1    # versions are also kept as REAL by Sina; stay far below 2**53
_INT64 = 2**63
PathLike = Union[str, "os.PathLike[str]"]
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts "²" and "٣"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def name(value: Any, what: str) -> str:
    """A domain or application name: a non-empty str of at most 255 characters."""
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(f"{what} must be a str, not {type(value).__name__} "
                                       f"({_short(value)})")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(f"{what} is {len(value)} characters long; the limit is "
                                   f"{MAX_NAME_LENGTH}: {_short(value)}")
    _encodable(value, what)
    return value


def optional_name(value: Any, what: str) -> Optional[str]:
    return None if value is None else name(value, what)


def entry_type(value: Any, what: str = "entry type") -> str:
    if not isinstance(value, str) or value not in ENTRY_TYPES:
        raise UnknownEntryTypeError(f"unknown {what} {_short(value)}; valid: "
                                    + ", ".join(ENTRY_TYPES))
    return value


def version(value: Any, what: str = "version") -> int:
    """An explicit version: an int from 0 to 2**31-1 (bool is not a version).

    A string of decimal digits (``"2"``, as upstream's CLI passes it) is that int.
    """
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentTypeError(f"{what} must be an int, not {type(value).__name__} "
                                       f"({_short(value)}); a string of decimal digits is "
                                       "read as one")
    value = int(value)
    if not 0 <= value <= MAX_VERSION:
        raise InvalidArgumentError(f"{what} must be between 0 and {MAX_VERSION}, not {value}")
    return value


def optional_version(value: Any) -> Optional[int]:
    return None if value is None else version(value)


def alias_selector(value: Any) -> Optional[str]:
    """``"@name"`` (a deployment alias, name checked) -> itself; anything else -> None."""
    if not isinstance(value, str) or not value.startswith("@"):
        return None
    from .catalog import aliases  # the catalogue imports this module
    aliases.check_alias_name(value[1:])
    return value


def single_version(value: Any, what: str = "version") -> Union[int, str]:
    """One version: an int (or digit string), ``"latest"`` or ``"@alias"``."""
    if isinstance(value, str) and (value == "latest" or alias_selector(value)):
        return value
    return version(value, what)


def version_selector(value: Any, what: str = "versions") -> Union[None, str, List[int]]:
    """``None`` (all), ``"latest"``, ``"@alias"``, an int, or a list of ints -> None, a str or a list."""
    if value is None or isinstance(value, str) and value == "latest":
        return value
    if alias_selector(value):
        return value
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise InvalidArgumentError(f"{what} must be None, '@alias', 'latest', an int or a list "
                                   f"of ints, not {_short(value)}")
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted({version(item, f"each of {what}") for item in value})
    return [version(value, what)]


def data_versions(value: Any, what: str = "trained_on") -> List[int]:
    """A model's training data: a list of data versions, or ``{"data": versions}``.

    Returns the sorted distinct versions; at least one is required.
    """
    if isinstance(value, Mapping):
        unknown = sorted(map(repr, set(value) - {"data"}))
        if unknown:
            raise InvalidArgumentError(f"{what} takes only the key 'data' (data versions of "
                                       f"the model's domain), not {', '.join(unknown)}")
        if "data" not in value:
            raise InvalidArgumentError(f"{what} needs the key 'data'")
        value = value["data"]
    if isinstance(value, (list, tuple)):
        versions = sorted({version(item, f"each data version of {what}") for item in value})
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        versions = [version(value, what)]
    else:
        raise InvalidArgumentTypeError(f"{what} must be a list of data versions or "
                                       f"{{'data': [versions]}}, not {_short(value)}")
    if not versions:
        raise InvalidArgumentError(f"{what} lists no data version")
    return versions


def path_list(value: Any, what: str) -> List[str]:
    """A list (or tuple) of paths; a lone str is a mistake worth naming."""
    if isinstance(value, (str, bytes, os.PathLike)):
        raise InvalidArgumentTypeError(f"{what} must be a list of paths, not a single "
                                       f"{type(value).__name__} ({_short(value)}); "
                                       "wrap it in a list")
    if not isinstance(value, (list, tuple)):
        raise InvalidArgumentTypeError(f"{what} must be a list of paths, not "
                                       f"{type(value).__name__} ({_short(value)})")
    folders: Dict[str, str] = {}
    return [absolute_path(item, f"each of {what}", folders) for item in value]


def absolute_path(value: Any, what: str = "path", folders: Optional[Dict[str, str]] = None) -> str:
    """An absolute, symlink-resolved path (the file need not exist).

    ``folders`` caches resolved folders across the paths of one call.
    """
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise InvalidArgumentTypeError(f"{what} must be a str or os.PathLike, not "
                                       f"{type(value).__name__} ({_short(value)})")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise InvalidArgumentTypeError(f"{what} must be a text path, not bytes ({_short(value)})")
    if not text:
        raise InvalidArgumentError(f"{what} must not be empty")
    if "\x00" in text:
        raise InvalidArgumentError(f"{what} contains a NUL character: {_short(text)}")
    _encodable(text, what)
    text = os.path.expanduser(text)
    resolved = os.path.realpath(text) if folders is None else _realpath(text, folders)
    if len(resolved) > MAX_PATH_LENGTH:
        raise InvalidArgumentError(f"{what} is {len(resolved)} characters long once resolved; "
                                   f"the store's limit is {MAX_PATH_LENGTH}: {_short(resolved)}")
    return resolved


def _realpath(path: str, folders: Dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving its folder once per ``folders`` cache.

    realpath resolves component by component, so for a last component that is
    not a symlink (nor ``.``/``..``) the result is realpath(folder)/name: one
    lstat per file instead of one per component.
    """
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    real_folder = folders.get(folder)
    if real_folder is None:
        real_folder = folders[folder] = os.path.realpath(folder or os.curdir)
    candidate = os.path.join(real_folder, name)
    try:
        if stat.S_ISLNK(os.lstat(candidate).st_mode):
            return os.path.realpath(path)
    except OSError:  # missing: realpath keeps the name as it is
        pass
    return candidate


def unique(paths: Sequence[str], what: str) -> List[str]:
    seen = set()
    for path in paths:
        if path in seen:
            raise InvalidArgumentError(f"{what} lists {path!r} more than once")
        seen.add(path)
    return list(paths)


def existing_file(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        raise MissingFileError(f"file does not exist: {path!r}") from None
    if not stat.S_ISREG(mode):
        raise MissingFileError(f"not a regular file: {path!r}")
    return path


def file_format(path: str, entry: str) -> None:
    """Data and candidates must be HDF5 files h5py can open; models TorchScript archives."""
    formats.check_file_format(path, entry)


def metadata(value: Any, reserved: Iterable[str] = (), what: str = "metadata") -> Dict[str, Any]:
    """A copy of ``value`` whose keys and values Kosh stores faithfully.

    Values: bool, int (64-bit), finite float, str, or a list of one of those
    (ints and floats may mix), or a dict (nested, JSON-serialisable: see
    :mod:`ams.metadata_codec`), which the result holds JSON-encoded, ready to
    be written. None, NaN, infinities and tuples are rejected, as are keys
    the store itself uses (``reserved``). Input holding the codec's marker
    (a record read raw, being written again) is decoded first.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(f"{what} must be a dict, not {type(value).__name__} "
                                       f"({_short(value)})")
    if metadata_codec.JSON_KEYS in value:
        value = metadata_codec.decode_metadata(value, strict=True)
    reserved = set(reserved)
    out: Dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidMetadataError(f"{what} keys must be str, not {type(key).__name__} "
                                       f"({_short(key)})")
        if not key or len(key) > MAX_NAME_LENGTH:
            raise InvalidMetadataError(f"{what} key must have 1 to {MAX_NAME_LENGTH} "
                                       f"characters: {_short(key)}")
        _encodable(key, f"{what} key", InvalidMetadataError)
        if key in reserved:
            raise InvalidMetadataError(f"{what} key {key!r} is reserved by the store "
                                       f"(reserved: {', '.join(sorted(reserved))})")
        if isinstance(item, Mapping):
            out[key] = metadata_codec.check_nested(item, f"{what}[{key!r}]")
        else:
            out[key] = _value(item, f"{what}[{key!r}]")
    return metadata_codec.encode_metadata(out)


def _value(item: Any, what: str) -> Any:
    if isinstance(item, list):
        values = [_scalar(element, f"an element of {what}") for element in item]
        kinds = {_kind(element) for element in values}
        if len(kinds) > 1:
            raise InvalidMetadataError(f"{what} mixes types ({', '.join(sorted(kinds))}); "
                                       "a list must hold one type")
        return values
    return _scalar(item, what)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str"


def _scalar(item: Any, what: str) -> Any:
    if isinstance(item, bool):
        return item
    if isinstance(item, numbers.Integral):
        item = int(item)
        if not -_INT64 <= item < _INT64:
            raise InvalidMetadataError(f"{what} = {item} does not fit in 64 bits")
        return item
    if isinstance(item, numbers.Real):
        item = float(item)
        if not math.isfinite(item):
            raise InvalidMetadataError(f"{what} = {item!r}: NaN and infinities cannot be stored")
        return item
    if isinstance(item, str):
        if len(item) > MAX_STRING_LENGTH:
            raise InvalidMetadataError(f"{what} is a string of {len(item)} characters; the "
                                       f"limit is {MAX_STRING_LENGTH}")
        _encodable(item, what, InvalidMetadataError)
        return item
    if item is None:
        raise InvalidMetadataError(f"{what} is None; the store keeps no None values "
                                   "(leave the key out)")
    raise InvalidMetadataError(f"{what} has type {type(item).__name__} ({_short(item)}); "
                               "allowed: bool, int, float, str or a list of one of those "
                               "(and, as a metadata value, a dict)")


def _encodable(text: str, what: str, error: type = InvalidArgumentError) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid Unicode text: {_short(text)}") from None


def error_value(value: Any, what: str, error: type = InvalidMetadataError) -> float:
    """A model's error or threshold: a finite number, not negative (else ``error``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentTypeError(f"{what} must be a number, not {_short(value)}")
    try:
        number = float(value)
    except (OverflowError, ValueError):
        raise error(f"{what} is out of range: {_short(value)}") from None
    if not math.isfinite(number):
        raise error(f"{what} = {value!r}: NaN and infinities cannot be stored")
    if number < 0:
        raise error(f"{what} must not be negative, not {_short(value)}")
    return number if isinstance(value, float) else cast(float, value)  # an int stays an int


def move_targets(sources: Sequence[str], dest_root: str) -> List[str]:
    """Where a move puts ``sources``: ``dest_root/<name>``, each name free and unique."""
    ancestor = dest_root  # the folder or its nearest existing parent must be a directory
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InvalidArgumentError(f"dest_root_path is not a directory: {dest_root!r}"
                                   + ("" if ancestor == dest_root else f" ({ancestor!r} is not)"))
    targets = [os.path.join(dest_root, os.path.basename(src)) for src in sources]
    unique(targets, "destination names")
    for target in targets:
        if os.path.lexists(target):
            raise DestinationExistsError(f"destination already exists: {target!r}", path=target)
    return targets


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{what} must be True or False, not {_short(value)}")
    return value


# --------------------------------------------------------------------------- change feed
MAX_CHANGES_LIMIT = 100_000  # events per read: each carries its file list
_entry_type = entry_type     # changes_arguments' parameter of that name hides the check


def event_id(value: Any, what: str = "after") -> int:
    """A change-feed event id or cursor: an int >= 0 (0 is "before the first event")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentTypeError(f"{what} must be an int, not {type(value).__name__} "
                                       f"({_short(value)})")
    if value < 0:
        raise InvalidArgumentError(f"{what} must be >= 0, not {value}")
    return int(value)


def changes_arguments(after: Any = 0, limit: Any = 1000, domain_name: Any = None,
                      entry_type: Any = None, action: Any = None) -> dict[str, Any]:
    """Check the arguments of ``changes()``; return them as keyword arguments of ``feed.read``.

    >>> changes_arguments(after=3, limit=10, action="add")["after"]
    3
    """
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
        raise InvalidArgumentTypeError(f"limit must be an int, not {type(limit).__name__} "
                                       f"({_short(limit)})")
    limit = int(limit)
    if not 1 <= limit <= MAX_CHANGES_LIMIT:
        raise InvalidArgumentError(f"limit must be between 1 and {MAX_CHANGES_LIMIT}, not {limit}")
    if action is not None and (not isinstance(action, str) or action not in ACTIONS):
        raise InvalidArgumentError(f"unknown change action {_short(action)}; valid: "
                                   + ", ".join(ACTIONS))
    return {"after": event_id(after, "after"), "limit": int(limit),
            "domain_name": optional_name(domain_name, "domain name"),
            "entry_type": None if entry_type is None else _entry_type(entry_type),
            "action": action}
