"""The facade: :class:`AMSDataStore`, the persistent catalogue of AMS.

It checks every argument, makes one call to the catalogue (:mod:`ams.catalog`,
the only code that knows Kosh's tables) and logs what it did; it never builds
queries and never touches a file itself (files are :mod:`ams.files`'s job,
driven by the catalogue inside its transactions).

>>> with AMSDataStore("my-app", "sqlite:///ams.db") as store:
...     store.add_data("EOS", ["run1.h5", "run2.h5"], metadata={"cycle": 3})
...     [os.path.basename(path) for path in store.get_data_files("EOS", versions="latest")]
1
['run1.h5', 'run2.h5']
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

from . import _match, _validate, importer, notebook
from .catalog import Catalog, NewFile, now_string
from .compat import StoreCompat, create_store_directories, remove_aliases
from .errors import (
    BackendError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
    NotFoundError,
    ReadOnlyStoreError,
    StoreClosedError,
)
from .files import fast_sha
from .importer import ImportReport
from .keys import ENTRY_TYPES, MIME_TYPES, RESERVED_KEYS, RESERVED_MODEL_KEYS, SUFFIXES
from .store_journal import StoreJournal
from .store_types import AMSModelDescr, VerifyReport
from .url import StoreURL, parse_store_url

__all__ = ["AMSDataStore", "RemoveReport", "create_store_directories"]

LOGGER = logging.getLogger(__name__)

VersionSelector = Union[None, str, int, Sequence[int]]


@dataclass
class RemoveReport:
    """What a ``remove_*`` call did.

    ``removed``: paths whose records were removed; ``not_found``: requested
    paths the entry does not hold; ``purged``: files deleted from disk;
    ``kept``: removed paths not deleted because the store still references
    them; ``purge_errors``: path -> why deleting it failed.
    """

    removed: List[str] = field(default_factory=list)
    not_found: List[str] = field(default_factory=list)
    purged: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    purge_errors: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"removed": list(self.removed), "not_found": list(self.not_found),
                "purged": list(self.purged), "kept": list(self.kept),
                "purge_errors": dict(self.purge_errors)}


class AMSDataStore(StoreCompat, StoreJournal):
    """A class representing the persistent data of AMS.

    A catalogue of files in three entry types per domain (a physics sub-model
    such as ``EOS``): ``data`` (HDF5 training files), ``candidates`` (HDF5
    files that may become data) and ``models`` (TorchScript surrogates), each
    in integer versions with metadata. It lives in a Kosh store (SQLite file
    or MariaDB database) with the original backend's layout, so plain Kosh
    reads it too.

    Construction does no I/O; call :meth:`open` or use ``with``.

    Concurrency: any number of processes (each with its own store object) and
    threads may read and write one store at once. Every add, remove, move,
    alias change or repair changes the records in one transaction under a
    store-wide write lock (SQLite ``BEGIN IMMEDIATE``, MariaDB ``SELECT ... FOR
    UPDATE`` on Kosh's store-info row), with its change events and, for a
    purge or a move, the intents of its file operations (see ``ams.files``),
    so auto versions are allocated inside it and never repeat; lock waits and
    deadlocks are retried with backoff and surface only as
    :class:`~ams.errors.ConcurrencyError` after 8 attempts. Each read call sees
    one committed state. One open store object may be shared by threads: each
    call takes its own connection from a thread-safe pool. Only :meth:`open`
    and :meth:`close` must not race with calls in other threads.
    """

    entry_suffix = dict(SUFFIXES)
    entry_mime_types = dict(MIME_TYPES)
    valid_entries = set(ENTRY_TYPES)
    valid_dbs = {"sqlite", "mariadb"}

    def __init__(self, application_name: str, url: Union[str, "os.PathLike[str]"],
                 read_only: bool = False,
                 root_path: Union[None, str, "os.PathLike[str]"] = None, *,
                 allow_network_filesystem: bool = False) -> None:
        """Initializes the AMSDataStore class. Upon init the kosh-store is closed and not connected.

        ``url``: ``sqlite:///path.db``, a plain path, or
        ``mariadb://user:password@host:port/database``. ``read_only=True``
        refuses every write (for analysis jobs and notebooks).
        ``allow_network_filesystem=True`` (or ``AMS_ALLOW_NETWORK_FS=1``) lets a
        writable SQLite store live on NFS, Lustre, GPFS...: refused by default,
        since SQLite's locking there is unreliable (use MariaDB).
        ``root_path``:
        the folder of ``data/``, ``candidates/``, ``models/`` (default: the
        SQLite file's folder; none on MariaDB). The original backend's form
        ``AMSDataStore(store_path, store_name, name, delete_all_contents=False)``
        is accepted too (see :mod:`ams.compat`).
        """
        self._application_name = _validate.name(application_name, "application_name")
        self._url: StoreURL = parse_store_url(url)
        self._read_only = _validate.boolean(read_only, "read_only")
        self._allow_network_filesystem = _validate.boolean(allow_network_filesystem,
                                                           "allow_network_filesystem")
        self._catalog: Optional[Catalog] = None
        self._kosh_store: Any = None  # plain Kosh store of kosh_dataset, opened on first use
        self._init_root_path(root_path)

    # ------------------------------------------------------------------ lifecycle
    @property
    def application_name(self) -> str:
        return self._application_name

    @property
    def url(self) -> StoreURL:
        """The parsed URL (its ``str()`` hides the password)."""
        return self._url

    @property
    def read_only(self) -> bool:
        return self._read_only

    def is_open(self) -> bool:
        """Check whether we are connected to a database."""
        return self._catalog is not None

    def open(self) -> "AMSDataStore":
        """Open and connect to the database, creating the tables if needed; returns self.

        Loaders are never saved into the store (a pickled loader reference makes
        every process that cannot import ``ams`` fail in ``kosh.connect``):
        :meth:`kosh_dataset` registers them on its own Kosh store, and a notebook
        with plain ``kosh.connect`` calls ``ams.loaders.register_loaders(store)``.
        """
        if self._catalog is not None:
            return self
        catalog = Catalog(self._url, read_only=self._read_only,
                          allow_network_filesystem=self._allow_network_filesystem)
        catalog.open()
        self._catalog = catalog
        if catalog.created:
            LOGGER.info("created %s in %s", ", ".join(catalog.created), self._url)
        LOGGER.debug("opened %s", self)
        return self

    def close(self) -> None:
        """Close the connection (and the Kosh store of :meth:`kosh_dataset`); harmless when already closed."""
        if self._kosh_store is not None:
            kosh_store, self._kosh_store = self._kosh_store, None
            try:
                notebook.close_kosh(kosh_store)  # also drops Kosh's exit clean-up for it
            except Exception as error:  # noqa: BLE001 - closing must not fail the caller
                LOGGER.warning("closing the Kosh store of %s failed: %s", self._url, error)
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> "AMSDataStore":
        return self.open()

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        self.close()

    def __str__(self) -> str:
        state = "open" if self.is_open() else "closed"
        mode = ", read-only" if self._read_only else ""
        return f"AMSDataStore(application_name={self._application_name!r}, url='{self._url}', {state}{mode})"

    __repr__ = __str__

    @property
    def created_tables(self) -> List[str]:
        """Tables and indexes the last :meth:`open` created (empty for an existing store)."""
        return list(self._require_open().created)

    def _require_open(self) -> Catalog:
        if self._catalog is None:
            raise StoreClosedError(f"the store {self._url} is closed; call open() or use 'with'")
        return self._catalog

    def _require_writable(self) -> Catalog:
        catalog = self._require_open()
        if self._read_only:
            raise ReadOnlyStoreError(f"the store {self._url} was opened read-only")
        return catalog

    # ------------------------------------------------------------------ adding
    def add_data(self, domain_name: str, data_files: Sequence[str] = (), version: Optional[int] = None,
                 metadata: Optional[Mapping[str, Any]] = None, *,
                 progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Adds files in the kosh-store and associates them to the 'data' entry.

        ``data_files`` are HDF5 files; all go into one version (a new one when
        ``version`` is None). Returns the version. Nothing is recorded if any
        file is rejected. ``progress(done, total)`` is called as each file is
        checked (checking, not the one database write, is what takes time).
        """
        return self._add_entries(domain_name, "data", data_files, version, metadata,
                                 progress=progress)

    def add_candidates(self, domain_name: str, data_files: Sequence[str] = (),
                       version: Optional[int] = None,
                       metadata: Optional[Mapping[str, Any]] = None, *,
                       progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Adds files in the kosh-store and associates them to the 'candidates' entry."""
        return self._add_entries(domain_name, "candidates", data_files, version, metadata,
                                 progress=progress)

    def add_model(self, domain_name: str, model: AMSModelDescr, test_error: float,
                  val_error: float, version: Optional[int] = None,
                  metadata: Optional[Mapping[str, Any]] = None,
                  trained_on: Union[None, Sequence[int], Mapping[str, Sequence[int]]] = None) -> int:
        """Adds a model in the kosh-store and associates them to the 'models' entry.

        The model's fields (path, threshold, uq_type, uq_aggregate), ``test_error``
        and ``val_error`` become attributes of its entry; a ``metadata`` key that
        collides with them is an error. Returns the version.

        ``trained_on``: the data versions of the same domain that trained the
        model (a list, or ``{"data": [1, 2]}``). They must exist; they and their
        files are recorded on the model's entry (``trained_on_data_versions``,
        ``trained_on_files``) in the same transaction, for :meth:`model_lineage`
        and so that purging those files is refused.
        """
        if not isinstance(model, AMSModelDescr):
            raise InvalidArgumentTypeError(f"model must be an AMSModelDescr, not "
                                           f"{type(model).__name__}")
        errors = {"test_error": _validate.error_value(test_error, "test_error"),
                  "val_error": _validate.error_value(val_error, "val_error")}
        attributes = _validate.metadata({**{k: v for k, v in model.to_dict().items() if k != "path"},
                                         **errors})
        training = None if trained_on is None else _validate.data_versions(trained_on)
        return self._add_entries(domain_name, "models", [cast(str, model.path)], version, metadata,
                                 extra=attributes, trained_on=training)

    def _add_entries(self, domain_name: str, entry_type: str, filenames: Sequence[str],
                     version: Optional[int] = None, metadata: Optional[Mapping[str, Any]] = None,
                     extra: Optional[Dict[str, Any]] = None,
                     progress: Optional[Callable[[int, int], None]] = None,
                     trained_on: Optional[List[int]] = None) -> int:
        """Adds files of entry_type on the designated domain_name with one version and metadata.

        ``trained_on``: data versions whose files the catalogue records on the
        entries, inside the add's transaction.
        """
        catalog = self._require_writable()
        domain_name = _validate.name(domain_name, "domain_name")
        entry_type = _validate.entry_type(entry_type)
        paths = _validate.unique(_validate.path_list(filenames, "files"), "files")
        if not paths:
            raise InvalidArgumentError(f"no files given to add to {entry_type} of {domain_name!r}")
        version = _validate.optional_version(version)
        values = _validate.metadata(metadata, RESERVED_MODEL_KEYS if entry_type == "models"
                                    else RESERVED_KEYS)
        values.update(extra or {})
        values["date"] = now_string()
        files = []
        for path in paths:
            # One metadata dict shared by the call's files, not 10^5 copies.
            files.append(self._new_file(path, entry_type, values))
            if progress is not None:
                progress(len(files), len(paths))
        result = catalog.add(self._application_name, domain_name, entry_type,
                             MIME_TYPES[entry_type], files, version, trained_on=trained_on,
                             precommit=lambda: _still_there(paths))
        LOGGER.info("added %d file(s) to %s/%s version %d", len(files), domain_name,
                    entry_type, result)
        return result

    @staticmethod
    def _new_file(path: str, entry_type: str, metadata: Dict[str, Any]) -> NewFile:
        """The per-file checks of an add (exists, format) and Kosh's checksum."""
        _validate.existing_file(path)
        _validate.file_format(path, entry_type)
        return NewFile(path, metadata, fast_sha(path), os.path.getsize(path))

    # ------------------------------------------------------------------ removing
    @remove_aliases("filenames", "data_files")
    def remove_data(self, domain_name: str, filenames: Optional[Sequence[str]],
                    version: VersionSelector = None, metadata: Optional[Mapping[str, Any]] = None,
                    purge: bool = True, force: bool = False, *,
                    remove_all: bool = False) -> RemoveReport:
        """Remove files from the data entry and, by default (``purge=True``), DELETE THEM FROM DISK.

        Purging a file that a registered model of this application was trained on
        (see ``add_model(trained_on=...)``) raises :class:`ams.errors.LineageError`
        naming the models, and changes nothing, unless ``force=True``.
        Without ``purge`` the records go and the files stay;
        :meth:`model_lineage` then reports those files as missing. Removing files
        of a version a deployment alias points to raises
        :class:`ams.errors.AliasError` unless ``force=True`` (which also unsets
        the alias, recorded in its history).
        """
        return self._remove_entries(domain_name, "data", filenames, version, metadata, purge,
                                    force=force, remove_all=remove_all)

    @remove_aliases("models", "model")
    def remove_models(self, domain_name: str, models: Optional[Sequence[str]],
                      version: VersionSelector = None,
                      metadata: Optional[Mapping[str, Any]] = None,
                      purge: bool = True, *, remove_all: bool = False,
                      force: bool = False) -> RemoveReport:
        """Remove models from the models entry and, by default (``purge=True``), delete their files.

        A version a deployment alias points to is refused (:class:`ams.errors.AliasError`)
        unless ``force=True``, which also unsets the alias.
        """
        return self._remove_entries(domain_name, "models", models, version, metadata, purge,
                                    force=force, remove_all=remove_all)

    @remove_aliases("filenames", "data_files")
    def remove_candidates(self, domain_name: str, filenames: Optional[Sequence[str]],
                          version: VersionSelector = None,
                          metadata: Optional[Mapping[str, Any]] = None,
                          purge: bool = True, *, remove_all: bool = False,
                          force: bool = False) -> RemoveReport:
        """Remove files from the candidates entry and, by default (``purge=True``), delete them.

        Aliased versions are refused unless ``force=True`` (as for models).
        """
        return self._remove_entries(domain_name, "candidates", filenames, version, metadata,
                                    purge, force=force, remove_all=remove_all)

    def _remove_entries(self, domain_name: str, entry_type: str,
                        filenames: Optional[Sequence[str]], version: VersionSelector = None,
                        metadata: Optional[Mapping[str, Any]] = None,
                        purge: bool = True, force: bool = False,
                        remove_all: bool = False) -> RemoveReport:
        """Remove the matching records in one transaction; purge their files after the commit.

        ``filenames=None`` removes every file the ``version`` and ``metadata``
        filters match, and with neither filter refuses unless ``remove_all=True``.
        ``version="latest"`` means, as in :meth:`search`, the highest version
        among the matches, resolved inside the write transaction. Requested
        paths the entry does not hold are reported and logged as a warning.
        A purged file is deleted only after the commit, under the write lock,
        when no record of the store references it any more and its path still
        leads to the very file that was registered; a failed deletion is
        reported (``purge_errors``) and does not stop the others.
        """
        catalog = self._require_writable()
        domain_name = _validate.name(domain_name, "domain_name")
        entry_type = _validate.entry_type(entry_type)
        paths = None if filenames is None else _validate.path_list(filenames, "filenames")
        versions = _validate.version_selector(version, "version")
        match = _match.compile_conditions(metadata)
        purge = _validate.boolean(purge, "purge")
        force = _validate.boolean(force, "force")
        remove_all = _validate.boolean(remove_all, "remove_all")
        if paths is None and versions is None and not metadata and not remove_all:
            raise InvalidArgumentError(
                f"remove_{entry_type}({domain_name!r}, None) with no version and no metadata "
                f"would remove every {entry_type} file of the domain"
                + (" and delete them from disk" if purge else "")
                + "; pass remove_all=True to do that, or name files, a version or metadata")
        if paths is not None and not paths:
            return RemoveReport()
        outcome = catalog.remove(self._application_name, domain_name, entry_type, paths,
                                 versions, match, purge,
                                 guard_lineage=purge and not force and entry_type == "data",
                                 force=force)
        report = RemoveReport(removed=outcome.removed, purged=outcome.purged,
                              purge_errors=outcome.purge_errors)
        if paths is not None:
            report.not_found = sorted(set(paths) - set(report.removed))
            if report.not_found:
                LOGGER.warning("%d file(s) to remove are not in %s/%s%s: %s",
                               len(report.not_found), domain_name, entry_type,
                               "" if version is None else f" version {version}",
                               ", ".join(report.not_found[:5]))
        LOGGER.info("removed %d file(s) from %s/%s", len(report.removed), domain_name, entry_type)
        report.kept = sorted(set(report.removed) & outcome.still_referenced)
        return report

    # ------------------------------------------------------------------ checking
    def verify(self, domain_name: Optional[str] = None, repair: bool = False) -> VerifyReport:
        """Compare every record of this application (and legacy ensembles) with the disk.

        Files get deleted or rewritten behind the catalogue's back (scratch
        purges, a job rerun into the same path); this finds the records whose
        file is missing, or whose content differs from registration (Kosh's
        ``fast_sha``, which samples the file, so it is cheap on big files).
        ``repair=True`` drops the records of missing files, in one transaction,
        re-checking each file under the write lock; it never touches a file and
        never drops a changed one (read-only stores refuse it). Records Kosh
        stored without a ``fast_sha`` are only checked for existence. A SQLite
        store file that ``PRAGMA quick_check`` finds damaged raises
        :class:`~ams.errors.BackendError` naming the file.

        >>> report = store.verify("EOS")
        >>> report.ok, [e["filename"] for e in report.missing]
        (True, [])
        """
        domain_name = _validate.optional_name(domain_name, "domain_name")
        repair = _validate.boolean(repair, "repair")
        catalog = self._require_writable() if repair else self._require_open()
        damage = catalog.damage()
        if damage:
            raise BackendError(f"the store file {self._url.location} is damaged (PRAGMA "
                               f"quick_check: {damage[0]}" + (f" and {len(damage) - 1} more"
                                                              if len(damage) > 1 else "")
                               + "); restore it from a backup before trusting its records")
        records = catalog.records(self._application_name, domain_name)
        report = VerifyReport(checked=len(records))
        for record in records:
            described = {"id": record.id,
                         "application_name": record.dataset.ensemble.application_name,
                         "domain_name": record.dataset.ensemble.domain_name,
                         "filename": record.path, "entry_type": record.dataset.entry_type,
                         "version": record.dataset.version}
            if not os.path.isfile(record.path):
                report.missing.append(described)
                continue
            if record.fast_sha is None:
                continue
            try:
                current = fast_sha(record.path)
            except OSError as error:
                report.unreadable.append({**described, "error": str(error)})
                continue
            if current != record.fast_sha:
                report.changed.append({**described, "registered_fast_sha": record.fast_sha,
                                       "current_fast_sha": current})
        unfinished = catalog.unfinished(self._application_name)
        report.stray_copies, report.unpurged = unfinished.stray_copies, unfinished.unpurged
        if repair and report.missing:
            report.repaired = catalog.drop_missing(self._application_name, domain_name,
                                                   {entry["id"] for entry in report.missing})
            LOGGER.info("verify: dropped %d record(s) of missing files", len(report.repaired))
        if repair and (report.stray_copies or report.unpurged):
            removed, outcome = catalog.finish_unfinished(self._application_name)
            report.cleaned = sorted(set(removed) | set(outcome.purged))
            LOGGER.info("verify: removed %d stray copy(ies), finished %d purge(s)",
                        len(removed), len(outcome.purged))
        if not report.ok:
            LOGGER.warning("verify: %d record(s) checked, %d missing, %d changed, %d unreadable",
                           report.checked, len(report.missing), len(report.changed),
                           len(report.unreadable))
        return report

    # ------------------------------------------------------------------ versions and files
    def get_data_versions(self, domain_name: str, associate_files: bool = False):
        """Returns a list of versions existing for the data entry (or version -> files)."""
        return self._get_entry_versions(domain_name, "data", associate_files)

    def get_model_versions(self, domain_name: str, associate_files: bool = False):
        """Returns a list of versions existing for the model entry (or version -> files)."""
        return self._get_entry_versions(domain_name, "models", associate_files)

    def get_candidate_versions(self, domain_name: str, associate_files: bool = False):
        """Returns a list of versions existing for the candidate entry (or version -> files)."""
        return self._get_entry_versions(domain_name, "candidates", associate_files)

    def _get_entry_versions(self, domain_name: str, entry_type: str,
                            associate_files: bool = False,
                            only: VersionSelector = None) -> Union[List[int], Dict[int, List[str]]]:
        """Sorted distinct versions, or with ``associate_files`` a dict version -> paths.

        ``only`` (None, "latest" or a list of versions, already checked) limits
        which versions' files are read.
        """
        catalog = self._require_open()
        domain_name = _validate.name(domain_name, "domain_name")
        entry_type = _validate.entry_type(entry_type)
        associate_files = _validate.boolean(associate_files, "associate_files")
        if not associate_files:
            return catalog.versions(self._application_name, domain_name, entry_type)
        return catalog.files_by_version(self._application_name, domain_name, entry_type,
                                        only=only)  # type: ignore[arg-type]  # checked: never a bare int

    def get_files(self, domain_name: str, entry: str, versions: VersionSelector = None) -> List[str]:
        """Returns a list of paths to files for the specified version(s).

        ``versions``: None -> all files; ``"latest"`` -> files of the highest
        version; ``"@name"`` -> files of the version the alias points to (none
        when unset); an int or a list of ints -> files of those versions. An
        unknown domain gives an empty list.
        """
        entry = _validate.entry_type(entry, "entry")
        selector = _validate.version_selector(versions)
        by_version = cast(Dict[int, List[str]],
                          self._get_entry_versions(domain_name, entry, associate_files=True,
                                                   only=selector))
        if not by_version:
            self._hint_unknown_domain(domain_name)
            return []
        if isinstance(selector, str):  # "latest" or "@alias": the catalogue chose one version
            chosen = [max(by_version)]
        elif selector is None:
            chosen = list(by_version)
        else:
            chosen = [v for v in cast(Sequence[int], selector) if v in by_version]
        return [path for v in chosen for path in by_version[v]]

    def get_candidate_files(self, domain_name: str, versions: VersionSelector = None) -> List[str]:
        """Files of the candidates entry for ``versions`` (None, "latest", int or list)."""
        return self.get_files(domain_name, "candidates", versions)

    def get_model_files(self, domain_name: str, versions: VersionSelector = None) -> List[str]:
        """Files of the models entry for ``versions`` (None, "latest", int or list)."""
        return self.get_files(domain_name, "models", versions)

    def get_data_files(self, domain_name: str, versions: VersionSelector = None) -> List[str]:
        """Files of the data entry for ``versions`` (None, "latest", int or list)."""
        return self.get_files(domain_name, "data", versions)

    # ------------------------------------------------------------------ finding
    def find(self, domain_name: Optional[str] = None, filename: Optional[str] = None,
             entry_type: Optional[str] = None, version: Union[None, int, str] = None) -> List[Dict[str, Any]]:
        """Entries (dicts) matching all given filters; ``version`` may be ``"latest"``."""
        path = None if filename is None else _validate.absolute_path(filename, "filename")
        return self._entries(domain_name, entry_type, version, {}, None if path is None else [path])

    def search(self, domain_name: Optional[str] = None, entry: Optional[str] = None,
               version: Union[None, int, str] = None,
               metadata: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
        """Search for entries whose metadata match, as dicts.

        ``metadata``: ``{key: value}`` for equality, or ``{key: {op: value}}``
        with ``op`` in ``==, !=, <, <=, >, >=, in``. Metadata filters first;
        ``version="latest"`` then keeps the matches of the highest matching
        version per domain and entry.

        >>> [e["version"] for e in store.search("EOS", "models", "latest", {"val_error": {"<": 0.1}})]
        [3]
        """
        return self._entries(domain_name, entry, version, metadata, None)

    def _entries(self, domain_name: Optional[str], entry_type: Optional[str],
                 version: Union[None, int, str], metadata: Any,
                 paths: Optional[List[str]]) -> List[Dict[str, Any]]:
        catalog = self._require_open()
        domain_name = _validate.optional_name(domain_name, "domain_name")
        if entry_type is not None:
            entry_type = _validate.entry_type(entry_type)
        selector = None if version is None else _validate.single_version(version)
        conditions = _match.parse_conditions(metadata)
        entries = catalog.entries(self._application_name, domain_name, entry_type, selector,
                                  conditions, _match.matcher(conditions), paths)
        if not entries and domain_name is not None:
            self._hint_unknown_domain(domain_name)
        return [entry.to_dict() for entry in entries]

    def _hint_unknown_domain(self, domain_name: str) -> None:
        """Log which domains exist when an empty result came from a domain that does not."""
        known = sorted({domain for _app, domain in
                        self._require_open().domains(self._application_name)})
        if domain_name not in known:
            LOGGER.warning("no domain %r in application %r (domains: %s)", domain_name,
                           self._application_name, ", ".join(known) or "none")

    def summary(self) -> List[Dict[str, Any]]:
        """What the store holds for this application (and legacy ensembles), per domain and entry.

        One dict per (domain, entry type): ``application_name``, ``domain_name``,
        ``entry_type``, ``versions``, ``latest_version``, ``files`` and ``bytes``
        (sizes on disk now; a missing file counts 0).

        >>> [(s["domain_name"], s["entry_type"], s["files"]) for s in store.summary()]
        [('EOS', 'candidates', 1), ('EOS', 'data', 3), ('EOS', 'models', 3)]
        """
        return self._require_open().summary(self._application_name)

    # ------------------------------------------------------------------ lineage
    def model_lineage(self, domain_name: str, version: Union[int, str]) -> Dict[str, Any]:
        """Which data trained the models of ``version`` (an int or ``"latest"``).

        Returns ``{"domain_name", "version", "models": [{"filename",
        "data_versions", "present", "missing"}], "data_versions", "present",
        "missing"}``: ``present`` are the training files still registered as
        data of the domain, ``missing`` those no longer registered (removed
        with ``purge=False`` or ``force=True``). Models added without
        ``trained_on`` have empty lists. An unknown version is a
        :class:`NotFoundError`.

        >>> store.model_lineage("EOS", "latest")["missing"]
        []
        """
        catalog = self._require_open()
        domain_name = _validate.name(domain_name, "domain_name")
        return catalog.lineage(self._application_name, domain_name,
                               _validate.single_version(version))

    # ------------------------------------------------------------------ importing
    def import_from(self, source: Union[str, "os.PathLike[str]"],
                    application_name: Optional[str] = None, missing: str = "import",
                    progress: Union[None, bool, Callable[[int, int], None]] = None,
                    ) -> "ImportReport":
        """Import an older AMS catalogue into this store; returns an :class:`ImportReport`.

        ``source``: the older SQL-table store (a table ``entries``) as a SQLite
        path or URL or a MariaDB URL, or the first Kosh-era store (its
        ``ams_config.json``, the folder holding it, or the Kosh file). The
        kind is detected. Every record keeps its application, domain, entry,
        version and metadata; one transaction per domain/entry/version.
        ``application_name`` imports only that application's records (and
        names the application of a Kosh file that has no ``ams_config.json``).
        ``missing="import"`` registers records whose file is gone (counted as
        ``imported_missing``); ``"skip"`` leaves them out (``skipped_missing``).
        Paths this store already holds are skipped, so a second run imports
        nothing. The whole source is checked before anything is written: a
        corrupt source raises :class:`ams.errors.ImportSourceError`.
        ``progress``: a callable gets ``(done, total)`` as files are checked
        and written; True draws :mod:`ams.progress`'s bar on stderr; None or
        False: nothing (the library never draws on its own).

        >>> store.import_from("old/ams_config.json").to_dict()["imported"]
        120
        """
        catalog = self._require_writable()
        application_name = _validate.optional_name(application_name, "application_name")
        if missing not in ("import", "skip"):
            raise InvalidArgumentError(f"missing must be 'import' or 'skip', not {missing!r}")
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise InvalidArgumentTypeError(f"progress must be None, a bool or a callable, "
                                           f"not {type(progress).__name__}")
        return importer.import_catalogue(catalog, source, application_name, missing, progress)

    # ------------------------------------------------------------------ moving
    def move(self, domain_name: str, dest_root_path: Union[str, "os.PathLike[str]"],
             src_type: str, dest_type: str, filenames: Sequence[str],
             version: Optional[int] = None, *, copy: bool = True,
             force: bool = False) -> List[str]:
        """Move registered files from ``src_type`` to ``dest_type`` (e.g. candidates -> data).

        Copies each file into ``dest_root_path``, registers the copies in one
        version of ``dest_type`` (a new one unless ``version``) with their
        metadata, removes the sources from ``src_type`` and deletes the source
        files. A copy is written under a temporary name and linked into place
        without replacing anything, so an existing destination (also one made
        by a concurrent move) is an error and is never overwritten. If anything
        fails before the database commit, exactly the copies and folders this
        call made are removed and the store is unchanged; after the commit the
        copies stay registered whatever happens. Returns the new paths.

        ``copy=False`` promotes in place: the same paths change entry in one
        transaction, metadata kept, nothing on disk touched
        (``dest_root_path`` must then be the files' own folder). Moving away a
        version a deployment alias points to raises :class:`ams.errors.AliasError`
        unless ``force=True`` (which also unsets the alias).
        """
        catalog = self._require_writable()
        domain_name = _validate.name(domain_name, "domain_name")
        src_type = _validate.entry_type(src_type, "src_type")
        dest_type = _validate.entry_type(dest_type, "dest_type")
        if src_type == dest_type:
            raise InvalidArgumentError(f"src_type and dest_type are both {src_type!r}")
        sources = _validate.unique(_validate.path_list(filenames, "filenames"), "filenames")
        if not sources:
            raise InvalidArgumentError("no files given to move")
        dest_root = _validate.absolute_path(dest_root_path, "dest_root_path")
        version = _validate.optional_version(version)
        copy = _validate.boolean(copy, "copy")
        force = _validate.boolean(force, "force")
        if copy:
            targets = _validate.move_targets(sources, dest_root)
        else:
            outside = [src for src in sources if os.path.dirname(src) != dest_root]
            if outside:
                raise InvalidArgumentError(
                    f"copy=False moves files in place: dest_root_path must be their folder "
                    f"{os.path.dirname(outside[0])!r}, not {dest_root!r}")
            targets = list(sources)
        for src in sources:
            _validate.existing_file(src)
            _validate.file_format(src, dest_type)
        registered = {r["filename"] for r in self._entries(domain_name, src_type, None, {}, sources)}
        missing = [src for src in sources if src not in registered]
        if missing:
            raise NotFoundError(f"not registered as {src_type} of domain {domain_name!r}: "
                                + ", ".join(map(repr, missing)), paths=missing)
        new_version, outcome = catalog.move(
            self._application_name, domain_name, src_type, dest_type, MIME_TYPES[dest_type],
            list(zip(sources, targets)), version, copy=copy,
            make_folder=dest_root if copy else None, force=force)
        if outcome.purge_errors:
            LOGGER.warning("move: %d source file(s) were not deleted: %s",
                           len(outcome.purge_errors), "; ".join(
                               f"{path}: {why}" for path, why in outcome.purge_errors.items()))
        LOGGER.info("moved %d file(s) of %s from %s to %s version %d%s", len(targets),
                    domain_name, src_type, dest_type, new_version, "" if copy else " in place")
        return targets

    # ------------------------------------------------------------------ notebooks
    def load_model(self, domain_name: str, version: Union[int, str] = "latest") -> Tuple[Any, Dict[str, Any]]:
        """The model of ``version`` (default the latest) as a loaded ``torch.jit`` module, and its entry.

        Returns ``(module, entry)``; ``entry`` is a :meth:`find` dict whose
        ``metadata`` holds ``val_error``, ``test_error``, ``threshold``...
        The module is loaded on CPU (torch is imported only here). Raises
        :class:`NotFoundError` when the domain has no such model.

        >>> model, entry = store.load_model("EOS")
        >>> entry["version"], entry["metadata"]["val_error"]
        (3, 0.05)
        """
        self._require_open()
        return notebook.load_model(self, domain_name, version)

    def load_data(self, domain_name: str, entry: str = "data", versions: VersionSelector = None,
                  features: Union[str, Sequence[str]] = ("inputs", "outputs")) -> Tuple[Any, ...]:
        """HDF5 ``features`` of the selected files, each concatenated along axis 0.

        ``versions`` as in :meth:`get_files`; files in that order. Returns one
        numpy array per feature. A file lacking a feature, or whose shape beyond
        axis 0 differs from the first file's, raises an error naming both.

        >>> inputs, outputs = store.load_data("EOS", versions="latest")
        >>> inputs.shape, outputs.shape
        ((4, 2), (4, 1))
        """
        self._require_open()
        return notebook.load_data(self, domain_name, entry, versions, features)

    def kosh_dataset(self, domain_name: str, entry: str, version: Union[int, str] = "latest") -> Any:
        """The Kosh dataset of ``entry`` version ``version``, for people who want Kosh's own API.

        Opens (once, closed by :meth:`close`) a plain read-only ``kosh.connect``
        on the same database with ``ams``'s loaders registered in-process, so
        ``.get("model")`` works on models. Raises :class:`NotFoundError` when
        there is no such dataset.

        >>> store.kosh_dataset("EOS", "data", 1).version
        1
        """
        catalog = self._require_open()
        domain_name = _validate.name(domain_name, "domain_name")
        entry = _validate.entry_type(entry, "entry")
        version = notebook.version_or_latest(version)
        dataset_id, known = catalog.dataset_id(self._application_name, domain_name, entry, version)
        if dataset_id is None:
            where = "any version" if version == "latest" else f"version {version}"
            raise NotFoundError(f"no {entry} dataset of {where} in domain {domain_name!r} of "
                                f"application {self._application_name!r} ({entry} versions: "
                                f"{known or 'none'})", versions=known)
        if self._kosh_store is None:
            self._kosh_store = notebook.connect_kosh(self._url)
        return notebook.kosh_dataset(self._kosh_store, dataset_id)

    # ------------------------------------------------------------------ names
    def suggest_model_file_name(self, domain_name: Optional[str] = None) -> str:
        """A fresh ``<domain>_<unique>.pt``: a path in ``root_path/models`` (bare without a root)."""
        return self._suggested_path("models", domain_name)

    def suggest_candidate_file_name(self, domain_name: Optional[str] = None) -> str:
        """A fresh ``<domain>_<unique>.h5``: a path in ``root_path/candidates`` (bare without a root)."""
        return self._suggested_path("candidates", domain_name)

    def suggest_data_file_name(self, domain_name: Optional[str] = None) -> str:
        """A fresh ``<domain>_<unique>.h5``: a path in ``root_path/data`` (bare without a root)."""
        return self._suggested_path("data", domain_name)

    def _suggest_entry_file_name(self, entry: str, domain_name: Optional[str] = None) -> str:
        entry = _validate.entry_type(entry, "entry")
        domain_name = _validate.optional_name(domain_name, "domain_name")
        if domain_name is not None and ("/" in domain_name or "\x00" in domain_name):
            raise InvalidArgumentError(f"domain_name {domain_name!r} cannot be part of a file name")
        prefix = domain_name or self._application_name.replace("/", "_")
        return f"{prefix}_{uuid.uuid4().hex}.{self.entry_suffix[entry]}"


def _still_there(paths: Sequence[str]) -> None:
    """Raise if a file vanished between the checks and the commit."""
    for path in paths:
        if not os.path.isfile(path):
            raise MissingFileError(f"file disappeared before it could be registered: {path!r}")
