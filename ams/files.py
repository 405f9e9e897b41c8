"""Everything that touches users' files on disk: Kosh's checksum, copies into place, purges.

A user's file is changed like a row. A copy is written under a temporary name
in the destination folder and linked into place without replacing anything
(``os.link``, or ``renameat2(RENAME_NOREPLACE)`` where links are not
supported), so a name someone else holds is never overwritten; undoing a call
removes only what that call created (its copies, partial copies and the
folders it made). A purge deletes a file only when its path still resolves,
folder by folder without following a symlink, to a regular file whose Kosh
checksum is the one registered. The catalogue decides *what* may be deleted,
under its write lock; this module decides whether the file on disk is still
that file.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from typing import BinaryIO, List, Optional, Tuple

from .errors import DestinationExistsError, FileOperationError

LOGGER = logging.getLogger(__name__)

#: Marks the temporary names of copies in progress: ``.<name>.<intent>.ams-part``.
TEMP_SUFFIX = ".ams-part"
_WHOLE_READ = 64 * 1024  # fast_sha reads files up to this size at once
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


# --------------------------------------------------------------------------- checksums
def fast_sha(path: str, n_samples: int = 10) -> str:
    """Kosh's fast checksum of a file (what ``associate`` stores), bit for bit.

    The same digest as ``kosh.utils.compute_fast_sha``: sha256 of the size and of
    2 KiB read at ``n_samples + 2`` offsets spread like ``numpy.linspace(0, size -
    2048, n_samples + 2)``. Kosh hashes the path itself for a missing file.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return hashlib.sha256(path.encode()).hexdigest()
    with handle:
        return _fast_sha_of(handle, n_samples)


def _fast_sha_of(handle: BinaryIO, n_samples: int = 10) -> str:
    size = os.fstat(handle.fileno()).st_size
    sha = hashlib.sha256(str(size).encode())
    count = n_samples + 2
    stop = size - 2048
    if stop <= 0:
        positions = [0] * count
    else:  # linspace: i * (stop / (count - 1)), the last one exactly stop
        step = stop / (count - 1)
        positions = [int(i * step) for i in range(count - 1)] + [stop]
    if size <= _WHOLE_READ:  # one read, then the same 2 KiB slices
        content = handle.read()
        sha.update(b"".join(content[p:p + 2048] for p in positions))
        return sha.hexdigest()
    previous, chunk = -1, b""
    for position in positions:
        if position != previous:
            handle.seek(position)
            chunk = handle.read(2048)
            previous = position
        sha.update(chunk)
    return sha.hexdigest()


# --------------------------------------------------------------------------- copies
@dataclass
class Placement:
    """The files and folders one call created, so that :meth:`undo` removes exactly those.

    >>> placement = Placement(tag="1f2e")                              # doctest: +SKIP
    >>> placement.copy("/scratch/a.h5", "/store/data/a.h5")            # doctest: +SKIP
    >>> placement.undo()   # only if the database step failed          # doctest: +SKIP
    """

    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    files: List[Tuple[str, int, int]] = field(default_factory=list)  # (path, device, inode)
    folders: List[str] = field(default_factory=list)

    def make_folders(self, folder: str) -> None:
        """Create ``folder`` and its missing parents, remembering which ones this call made."""
        missing = []
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue  # made meanwhile by someone else: not ours to remove
            except OSError as error:
                raise FileOperationError(f"cannot create the folder {path!r}: "
                                         f"{error.strerror}", path=path) from None
            self.folders.append(path)

    def temporary_name(self, target: str) -> str:
        folder, name = os.path.split(target)
        return os.path.join(folder, f".{name}.{self.tag}{TEMP_SUFFIX}")

    def copy(self, source: str, target: str) -> None:
        """Copy ``source`` to ``target`` (contents and times) without replacing anything.

        Raises :class:`DestinationExistsError` when ``target`` exists (also when it
        appeared after any earlier check) and :class:`FileOperationError` on a disk
        error; either way no partial copy is left behind.
        """
        temporary = self.temporary_name(target)
        try:
            with open(source, "rb") as src, open(temporary, "xb") as dst:
                try:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                    dst.flush()
                    os.fsync(dst.fileno())
                    shutil.copystat(source, temporary)
                    info = os.fstat(dst.fileno())
                except BaseException:
                    _unlink_quietly(temporary)
                    raise
        except OSError as error:
            raise FileOperationError(f"cannot copy {source!r} to {target!r}: "
                                     f"{error.strerror or error}", path=target) from None
        try:
            _place(temporary, target)
        except FileExistsError:
            _unlink_quietly(temporary)
            raise DestinationExistsError(f"destination already exists: {target!r}",
                                         path=target) from None
        except OSError as error:
            _unlink_quietly(temporary)
            raise FileOperationError(f"cannot put the copy of {source!r} in place at "
                                     f"{target!r}: {error.strerror or error}", path=target) from None
        self.files.append((target, info.st_dev, info.st_ino))

    def undo(self) -> List[str]:
        """Remove this call's copies (if still the very files it made) and empty folders it made.

        Returns the paths it could not remove (logged); never raises.
        """
        left = []
        for path, device, inode in reversed(self.files):
            try:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)
                else:
                    LOGGER.warning("not removing %s: it is no longer the copy this call made", path)
                    left.append(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                LOGGER.error("could not remove the copy %s: %s", path, error)
                left.append(path)
        for folder in reversed(self.folders):
            try:
                os.rmdir(folder)
            except OSError:
                pass  # not empty (someone else's file) or gone: leave it
        self.files.clear()
        self.folders.clear()
        return left


def _place(temporary: str, target: str) -> None:
    """Give ``temporary`` the name ``target``, failing with FileExistsError if it exists."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                               errno.ENOSYS):
            raise
        _rename_noreplace(temporary, target)  # no hard links on this filesystem
        return
    os.unlink(temporary)


def _rename_noreplace(source: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "this system can neither link nor rename without replacing")
    if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                 _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), target)
        raise OSError(code, os.strerror(code), target)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        LOGGER.error("could not remove %s: %s", path, error)


def remove_temporary_copies(folder: str, tag: str) -> List[str]:
    """Delete the temporary copies of the call ``tag`` left in ``folder`` (a killed move)."""
    removed: List[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(f".{tag}{TEMP_SUFFIX}"):
            _unlink_quietly(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    return removed


# --------------------------------------------------------------------------- purges
GONE = "already gone"


def purge(path: str, registered_fast_sha: Optional[str]) -> Optional[str]:
    """Delete the registered file ``path`` if it is still that file; None, :data:`GONE`, or why not.

    ``path`` is absolute and was resolved when registered, so every folder on the
    way is walked without following symlinks: a folder replaced by a symlink
    since registration stops the purge. The file must be a regular file whose
    Kosh checksum is ``registered_fast_sha`` (when one was recorded).
    """
    folder, name = os.path.split(path)
    try:
        folder_fd = _open_folder_nofollow(folder)
    except FileNotFoundError:
        return GONE
    except OSError as error:
        return (f"its folder no longer resolves to the registered one ({error.strerror}); "
                "left in place")
    try:
        try:
            info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            return GONE
        if not stat.S_ISREG(info.st_mode):
            return "it is no longer a regular file (a symlink or folder now has its name); left in place"
        if registered_fast_sha is not None:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
            with os.fdopen(fd, "rb") as handle:
                if _fast_sha_of(handle) != registered_fast_sha:
                    return "its content changed since it was registered (fast_sha differs); left in place"
        os.unlink(name, dir_fd=folder_fd)
        return None
    except FileNotFoundError:
        return GONE
    except OSError as error:
        return f"cannot delete it: {error.strerror or error}"
    finally:
        os.close(folder_fd)


def _open_folder_nofollow(folder: str) -> int:
    """A descriptor of ``folder``, reached component by component with O_NOFOLLOW."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open("/", flags)
    try:
        for part in [p for p in folder.split(os.sep) if p]:
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
