"""Argument checks shared by the facade: names, versions, paths, metadata, file formats.

Every check raises an :mod:`ams.errors` type naming the bad value, before the
store or any file is touched.
"""

from __future__ import annotations

import errno
import fcntl
import math
import numbers
import os
import stat
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .errors import (InvalidArgumentError, InvalidArgumentTypeError, InvalidMetadataError,
                     MissingFileError, UnknownEntryTypeError, WrongFileFormatError)

MAX_NAME_LENGTH = 255      # Sina's name columns are VARCHAR(255)
MAX_STRING_LENGTH = 15000  # Sina's string value columns are VARCHAR(15000)
MAX_PATH_LENGTH = 1500     # Sina's Document.uri is VARCHAR(1500)
MAX_VERSION = 2**31 - 1    # versions are also kept as REAL by Sina; stay far below 2**53
_INT64 = 2**63
VALID_ENTRIES = ("data", "models", "candidates")
PathLike = Union[str, "os.PathLike[str]"]


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
    if not isinstance(value, str) or value not in VALID_ENTRIES:
        raise UnknownEntryTypeError(f"unknown {what} {_short(value)}; valid: "
                                    + ", ".join(VALID_ENTRIES))
    return value


def version(value: Any, what: str = "version") -> int:
    """An explicit version: an int from 0 to 2**31-1 (bool is not a version)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentTypeError(f"{what} must be an int, not {type(value).__name__} "
                                       f"({_short(value)})")
    value = int(value)
    if not 0 <= value <= MAX_VERSION:
        raise InvalidArgumentError(f"{what} must be between 0 and {MAX_VERSION}, not {value}")
    return value


def optional_version(value: Any) -> Optional[int]:
    return None if value is None else version(value)


def version_selector(value: Any, what: str = "versions") -> Union[None, str, List[int]]:
    """``None`` (all), ``"latest"``, an int, or a list of ints -> None, "latest" or a list."""
    if value is None or value == "latest" and isinstance(value, str):
        return value
    if isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be None, 'latest', an int or a list of ints, "
                                   f"not {_short(value)}")
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
    """Data and candidates must be HDF5 files h5py can open; models TorchScript archives.

    The HDF5 check (:func:`hdf5_problem`) reads the superblock itself rather
    than opening the file with h5py, which costs ~0.5-1 ms per file (minutes
    for 10^5 files).
    """
    if entry == "models":
        from .loaders.torchscript import is_torchscript_archive
        if not is_torchscript_archive(path):
            raise WrongFileFormatError(f"not a TorchScript archive (torch.jit.save): {path!r}")
        return
    problem = hdf5_problem(path)
    if problem is not None:
        raise WrongFileFormatError(f"not a readable HDF5 file ({problem}): {path!r}")


def metadata(value: Any, reserved: Iterable[str] = (), what: str = "metadata") -> Dict[str, Any]:
    """A copy of ``value`` whose keys and values Kosh stores faithfully.

    Values: bool, int (64-bit), finite float, str, or a list of one of those
    (ints and floats may mix). None, NaN, infinities, nested dicts and tuples
    are rejected, as are keys the store itself uses (``reserved``).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(f"{what} must be a dict, not {type(value).__name__} "
                                       f"({_short(value)})")
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
        out[key] = _value(item, f"{what}[{key!r}]")
    return out


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
                               "allowed: bool, int, float, str or a list of one of those")


def _encodable(text: str, what: str, error: type = InvalidArgumentError) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid Unicode text: {_short(text)}") from None


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
    from .catalog.feed import ACTIONS  # here: ams.catalog imports this module
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
        raise InvalidArgumentTypeError(f"limit must be an int, not {type(limit).__name__} "
                                       f"({_short(limit)})")
    if not 1 <= limit <= MAX_CHANGES_LIMIT:
        raise InvalidArgumentError(f"limit must be between 1 and {MAX_CHANGES_LIMIT}, not {limit}")
    if action is not None and (not isinstance(action, str) or action not in ACTIONS):
        raise InvalidArgumentError(f"unknown change action {_short(action)}; valid: "
                                   + ", ".join(ACTIONS))
    return {"after": event_id(after, "after"), "limit": int(limit),
            "domain_name": optional_name(domain_name, "domain name"),
            "entry_type": None if entry_type is None else _entry_type(entry_type),
            "action": action}


# --------------------------------------------------------------------------- HDF5
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SIZES = (2, 4, 8, 16, 32)     # sizes of offsets and lengths HDF5 accepts
_SUPERBLOCK_FLAGS = 0x07       # write access, file ok, SWMR write


def hdf5_problem(path: str) -> Optional[str]:
    """Why ``path`` is not an HDF5 file that the HDF5 library would open, or None.

    What ``H5Fopen`` checks before it reads any dataset, from the file's first
    bytes: the signature (at 0, 512, 1024, 2048... after a user block), the
    superblock (version, field sizes, flags, checksum of versions 2-3), that
    the file is not shorter than the end-of-file address the superblock records
    (truncated copies, killed writers), that no writer holds HDF5's lock on it
    or left the "open for writing" flag, and that the root group's object
    header is where the superblock says. Compared with ``h5py.File(path, "r")``
    on truncated, corrupted, locked, crashed and non-HDF5 files it rejects the
    same ones; damage deeper in the file (which opening does not read either)
    is not detected.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as error:
        return f"cannot open it: {error.strerror}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        locked = _hdf5_lock_problem(fd)
        if locked:
            return locked
        size = info.st_size
        head = os.pread(fd, 4096, 0)
        super_addr = 0
        while True:
            if super_addr + 8 > size:
                return "no HDF5 signature"
            block = (head[super_addr:super_addr + 256] if super_addr + 256 <= len(head)
                     else os.pread(fd, 256, super_addr))
            if block[:8] == HDF5_SIGNATURE:
                break
            super_addr = 512 if super_addr == 0 else super_addr * 2
        return _superblock_problem(fd, block, super_addr, size)
    finally:
        os.close(fd)


def _hdf5_lock_problem(fd: int) -> Optional[str]:
    """HDF5 (>= 1.10) holds an exclusive flock while a writer has the file open."""
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in ("FALSE", "0"):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when fd is closed
    except BlockingIOError:
        return "another process has it open for writing (HDF5 file lock)"
    except OSError as error:  # no locks on this filesystem: HDF5 ignores that too
        if error.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            return f"cannot lock it: {error.strerror}"
    return None


def _superblock_problem(fd: int, block: bytes, super_addr: int, size: int) -> Optional[str]:
    version = block[8] if len(block) > 8 else None
    try:
        if version in (0, 1):
            width = block[13]
            if width not in _SIZES or block[14] not in _SIZES:
                return "corrupt superblock (sizes of offsets and lengths)"
            if any(block[9:13]) or block[15] or _little(block, 20, 4) & ~_SUPERBLOCK_FLAGS:
                return "corrupt superblock (reserved fields or flags)"
            start = 24 if version == 0 else 28
            # base, free space, end of file, driver info, root entry (name offset, header)
            base, eof, root = (_address(block, start + i * width, width) for i in (0, 2, 5))
        elif version in (2, 3):
            width = block[9]
            if width not in _SIZES or block[10] not in _SIZES:
                return "corrupt superblock (sizes of offsets and lengths)"
            end = 12 + 4 * width
            if _lookup3(block[:end]) != _little(block, end, 4):
                return "corrupt superblock (checksum mismatch)"
            if block[11] & ~_SUPERBLOCK_FLAGS:
                return "corrupt superblock (flags)"
            if version == 3 and block[11] & 0x01 and not block[11] & 0x04:
                return ("it is marked open for writing: its writer is running or crashed "
                        "(h5clear clears the mark)")
            # base, superblock extension, end of file, root group object header
            base, eof, root = (_address(block, 12 + i * width, width) for i in (0, 2, 3))
        else:
            return f"unknown superblock version {version}"
    except IndexError:
        return "truncated superblock"
    if base is None or eof is None or root is None:
        return "corrupt superblock (undefined address)"
    if base != super_addr:  # a user block was added in front: HDF5 moves the addresses
        eof -= base - super_addr
        base = super_addr
    if eof < 0 or size < eof:
        return f"truncated: {size} bytes, its superblock says {eof}"
    header = os.pread(fd, 16, base + root)
    if not (header[:4] == b"OHDR" or (len(header) == 16 and header[0] == 1 and header[1] == 0)):
        return "corrupt: no root group object header"
    return None


def _little(block: bytes, offset: int, width: int) -> int:
    if offset + width > len(block):
        raise IndexError(offset)
    return int.from_bytes(block[offset:offset + width], "little")


def _address(block: bytes, offset: int, width: int) -> Optional[int]:
    value = _little(block, offset, width)
    return None if value == (1 << (8 * width)) - 1 else value  # all ones: undefined


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, HDF5's metadata checksum."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & mask
    pos = 0
    while length > 12:
        a = (a + int.from_bytes(data[pos:pos + 4], "little")) & mask
        b = (b + int.from_bytes(data[pos + 4:pos + 8], "little")) & mask
        c = (c + int.from_bytes(data[pos + 8:pos + 12], "little")) & mask
        a = (a - c) & mask; a ^= rot(c, 4); c = (c + b) & mask    # noqa: E702 - lookup3's mix
        b = (b - a) & mask; b ^= rot(a, 6); a = (a + c) & mask    # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 8); b = (b + a) & mask    # noqa: E702
        a = (a - c) & mask; a ^= rot(c, 16); c = (c + b) & mask   # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 19); a = (a + c) & mask   # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 4); b = (b + a) & mask    # noqa: E702
        pos += 12
        length -= 12
    if length == 0:
        return c
    tail = data[pos:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & mask
    b = (b + int.from_bytes(tail[4:8], "little")) & mask
    c = (c + int.from_bytes(tail[8:12], "little")) & mask
    c ^= b; c = (c - rot(b, 14)) & mask    # noqa: E702 - lookup3's final
    a ^= c; a = (a - rot(c, 11)) & mask    # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & mask    # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & mask    # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & mask     # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & mask    # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & mask    # noqa: E702
    return c
