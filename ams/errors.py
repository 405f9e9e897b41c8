"""One exception tree for the whole package.

Every error ``ams`` raises derives from :class:`AMSStoreError`, and also from
the built-in exception a caller of the original API would have caught, so
existing ``except ValueError:`` clauses keep working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AMSStoreError",
    "StoreClosedError",
    "ReadOnlyStoreError",
    "BadURLError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidMetadataError",
    "UnknownEntryTypeError",
    "MissingFileError",
    "WrongFileFormatError",
    "DuplicateEntryError",
    "NotFoundError",
    "BackendError",
    "ConcurrencyError",
    "BrokerError",
    "MissingDependencyError",
    "ImportSourceError",
    "LineageError",
    "AliasError",
    "DestinationExistsError",
    "FileOperationError",
    "UnsafeFilesystemError",
]


class AMSStoreError(Exception):
    """Base class of every error raised by ``ams``.

    Besides its message, an error carries what it is about as attributes
    (``path``, ``paths``, ``models``, ``aliases``, ``versions``...; None when not
    given), so callers need not parse messages::

        except DuplicateEntryError as error:
            skipped.append(error.path)
    """

    path: Any = None  # Any: ImportError (MissingDependencyError) declares str | None
    paths = None
    models = None
    aliases = None
    versions = None

    def __init__(self, *args: object, **fields: object) -> None:
        super().__init__(*args)
        for name, value in fields.items():
            setattr(self, name, value)


class StoreClosedError(AMSStoreError, RuntimeError):
    """A data call was made on a store that is not open."""


class ReadOnlyStoreError(AMSStoreError, RuntimeError):
    """A write was attempted on a store opened with ``read_only=True``."""


class BadURLError(AMSStoreError, ValueError):
    """The store URL is not one of the accepted forms."""


class InvalidArgumentError(AMSStoreError, ValueError):
    """An argument has the right type but a value the store cannot accept."""


class InvalidArgumentTypeError(AMSStoreError, TypeError):
    """An argument has a type the store cannot accept."""


class InvalidMetadataError(AMSStoreError, ValueError):
    """A metadata key or value cannot be stored faithfully."""


class UnknownEntryTypeError(AMSStoreError, ValueError):
    """An entry type other than ``data``, ``models`` or ``candidates``."""


class MissingFileError(AMSStoreError, FileNotFoundError):
    """A file to register does not exist (or is a directory)."""


class WrongFileFormatError(AMSStoreError, ValueError):
    """A file is not of the format its entry type requires (HDF5, TorchScript)."""


class DuplicateEntryError(AMSStoreError, ValueError):
    """A path is already registered in the store."""


class NotFoundError(AMSStoreError, LookupError):
    """Something asked for by name is not in the store."""


class BackendError(AMSStoreError, RuntimeError):
    """The database failed: unreachable, bad credentials, lost connection."""


class ConcurrencyError(BackendError):
    """A write kept conflicting with other writers after all retries."""


class BrokerError(BackendError):
    """The message broker (RabbitMQ) failed: unreachable, refused the login, or refused a message."""


class MissingDependencyError(AMSStoreError, ImportError):
    """An optional dependency (e.g. matplotlib, extra ``plot``) is not installed."""


class ImportSourceError(AMSStoreError, ValueError):
    """An older catalogue to import is unreadable, incomplete or holds records that cannot be stored."""


class LineageError(AMSStoreError, RuntimeError):
    """Purging data that a registered model was trained on (pass ``force=True`` to do it anyway)."""


class AliasError(AMSStoreError, RuntimeError):
    """Removing or moving away a version that deployment aliases point to (``force=True`` to do it)."""


class DestinationExistsError(InvalidArgumentError):
    """A copy's destination name is taken; nothing is ever overwritten."""


class FileOperationError(AMSStoreError, OSError):
    """Copying or deleting a user's file failed on disk (full, read-only, permissions)."""


class UnsafeFilesystemError(AMSStoreError, RuntimeError):
    """A writable SQLite store on a network or parallel filesystem, whose locking is unreliable."""
