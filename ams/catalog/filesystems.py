"""Refuse a writable SQLite store on a network or parallel filesystem (NFS, Lustre, GPFS...).

SQLite's locking relies on POSIX locks that these filesystems implement
unreliably or not at all: concurrent writers there lose writes silently.
Detection reads the filesystem's ``statfs`` magic number.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

from ..errors import UnsafeFilesystemError

#: statfs f_type of the filesystems whose locking SQLite cannot trust.
NETWORK_FILESYSTEMS = {
    0x6969: "NFS",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0x19830326: "BeeGFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x517B: "SMB",
    0x00C36400: "CephFS",
}
ALLOW_VARIABLE = "AMS_ALLOW_NETWORK_FS"


def filesystem_magic(path: str) -> Optional[int]:
    """The statfs ``f_type`` of the filesystem holding ``path`` (or its nearest existing parent)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    buffer = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.statfs(os.fsencode(path), buffer) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def refuse_network_filesystem(path: str, magic: Optional[int] = None) -> None:
    """Raise :class:`UnsafeFilesystemError` when ``path`` is on a network filesystem.

    ``AMS_ALLOW_NETWORK_FS=1`` (or ``allow_network_filesystem=True``) allows it.
    """
    if os.environ.get(ALLOW_VARIABLE) == "1":
        return
    kind = NETWORK_FILESYSTEMS.get(filesystem_magic(path) if magic is None else magic)  # type: ignore[arg-type]  # None (unknown) finds nothing
    if kind is None:
        return
    raise UnsafeFilesystemError(
        f"refusing to write the SQLite store {path} on {kind}: SQLite's file locking is "
        f"unreliable on network and parallel filesystems, and concurrent writers lose "
        f"writes silently. Use MariaDB for a store shared by many nodes "
        f"(mariadb://user:password@host:port/database), put the SQLite file on a local "
        f"disk, or, if only one process ever writes, pass allow_network_filesystem=True "
        f"(or set {ALLOW_VARIABLE}=1). Read-only opens are allowed.", path=path)
