"""The catalogue's operations, in the domain's words: add, remove, move, entries, versions.

:class:`Catalog` is the one door to the store's database: each method is one
operation (one read snapshot or one locked write transaction, retried on
conflicts) over Kosh's records, returning plain values. The facade
(:class:`ams.AMSDataStore`) checks arguments and calls one of these; nothing
else in the package reads the tables.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import files as disk
from ..errors import BackendError, LineageError, NotFoundError
from ..keys import TRAINED_ON_FILES, TRAINED_ON_VERSIONS
from ..store_types import Entry
from ..url import StoreURL
from . import aliases, reads, schema, writes
from .filesystems import refuse_network_filesystem
from .records import (
    Dataset,
    FileRecord,
    MemberDataset,
    NewFile,
    StoreKinds,
    bootstrap_records,
    now_string,
    record_rows,
    user_id,
    username,
)
from .sql import RECORD, Rows, extend, insert
from .transactions import CONNECT_TIMEOUT_SECONDS, DUPLICATE_KEY, STORE_INFO_ID, Transactions, create_engine

LOGGER = logging.getLogger(__name__)

VersionSelector = Union[None, str, Sequence[int]]
Match = Callable[[Mapping[str, Any]], bool]


@dataclass
class RemoveOutcome:
    """What a removal did: paths removed, still referenced elsewhere, purged, and purge failures."""

    removed: List[str] = field(default_factory=list)
    still_referenced: Set[str] = field(default_factory=set)
    purged: List[str] = field(default_factory=list)
    purge_errors: Dict[str, str] = field(default_factory=dict)


@dataclass
class Unfinished:
    """File operations a killed call left: copies of a move, purges (see :meth:`Catalog.unfinished`)."""

    stray_copies: List[str] = field(default_factory=list)
    unpurged: List[str] = field(default_factory=list)


class Catalog:
    """Kosh's tables of one store, for any application; see the module docstring."""

    def __init__(self, url: StoreURL, read_only: bool = False,
                 allow_network_filesystem: bool = False,
                 connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.read_only = read_only
        self.allow_network_filesystem = allow_network_filesystem
        self.connect_timeout = connect_timeout
        self.created: List[str] = []
        self.kinds = StoreKinds()
        self.transactions: Optional[Transactions] = None
        self._context: Optional[writes.WriteContext] = None
        self._tables: Dict[str, bool] = {}
        #: Test hooks: name -> callable, run at named points of a call (races, kills).
        self.hooks: Dict[str, Callable[[], None]] = {}

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self.url.backend == "sqlite":
            self._check_sqlite_file()
        engine = create_engine(self.url, self.connect_timeout)
        self.transactions = Transactions(self.url, engine, self.connect_timeout)
        try:
            with self.transactions.translate_errors("open"):
                if not self.read_only:
                    self.created = schema.create_tables(engine) + schema.create_own_tables(engine)
                    with engine.begin() as conn:  # DDL commits on MariaDB: its own transaction
                        self.created += aliases.create_tables(conn)
                    self._initialise_kosh()
                self._read_store_info()
        except BaseException:
            self.close()
            raise
        self._context = writes.WriteContext(self.kinds, self.url)

    def close(self) -> None:
        if self.transactions is not None:
            self.transactions.engine.dispose()
            self.transactions = None

    def _check_sqlite_file(self) -> None:
        path = cast(str, self.url.path)  # a sqlite URL always has a path
        if os.path.isdir(path):
            raise BackendError(f"no store at {path}: it is a folder, not a store file")
        if self.read_only:
            if not os.path.isfile(path):
                # sqlite3 would create an empty file (and a reader must not write).
                raise BackendError(f"no store at {path}: the file does not exist")
            return
        if not self.allow_network_filesystem:
            refuse_network_filesystem(path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as error:
            raise BackendError(f"cannot create the folder of the store {path}: "
                               f"{error.strerror}") from None
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            self._refuse_foreign_sqlite(path)

    def _refuse_foreign_sqlite(self, path: str) -> None:
        """A SQLite file holding tables but no Kosh store is someone else's: never add to it."""
        import sqlite3
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                names = {row[0] for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise BackendError(f"{path} is not a SQLite database ({error}); the store needs "
                               "its own file") from None
        if names and "Record" not in names:
            raise BackendError(
                f"{path} holds a database that is not a Kosh store (tables: "
                f"{', '.join(sorted(names)[:5])}); refusing to add the store's tables to it. "
                "Use another file, or import an older AMS catalogue with import_from "
                "(ams-store import)")

    def _initialise_kosh(self) -> None:
        """Write Kosh's store-info and user records the way ``kosh.connect`` does.

        ``kosh.connect`` writes them with separate Sina calls that race when
        several processes open a new store at once (and swallow their errors). So
        Kosh's own functions make the records in a private in-memory Sina store,
        and the missing ones are copied here in one write transaction under the
        store's lock. On MariaDB, before the store-info row exists to be locked, a
        concurrent opener's duplicate key rolls back and the retry finds the records.
        """
        transactions = self._transactions()
        wanted = {STORE_INFO_ID, user_id(username()), user_id("anonymous")}

        def present(conn: Connection) -> Set[str]:
            return set(conn.execute(sa.select(RECORD.c.id).where(RECORD.c.id.in_(sorted(wanted))))
                       .scalars())

        with transactions.read("open") as conn:
            if present(conn) == wanted:
                return
        raws = bootstrap_records([username(), "anonymous"])
        # kosh.connect's close() stamps the store-info record; a new store gets it too.
        raws[STORE_INFO_ID]["data"].setdefault("last_modified_date", {"value": now_string()})

        def work(conn: Connection) -> None:
            inserts: Rows = {}
            for record_id in sorted(wanted - present(conn)):
                extend(inserts, record_rows(raws[record_id]))
            insert(conn, inserts)
        transactions.write("open", work, retry_codes=(DUPLICATE_KEY,))

    def _read_store_info(self) -> None:
        with self._transactions().engine.connect() as conn:
            if self.read_only and not sa.inspect(conn).has_table(RECORD.name):
                raise BackendError(f"{self.url.location} is not a Kosh store (it has no "
                                   f"{RECORD.name} table); a read-only open creates nothing: "
                                   "create the store first (ams-store create)")
            rows: Dict[Any, Any] = dict(conn.execute(sa.select(RECORD.c.id, RECORD.c.raw).where(
                RECORD.c.id.in_([STORE_INFO_ID, user_id(username())]))).all())
        if STORE_INFO_ID not in rows:
            raise BackendError(f"{self.url.location} is not a Kosh store (no store-info record); "
                               "create the store first (ams-store create)")
        self.kinds = StoreKinds.from_store_info(rows[STORE_INFO_ID], set(rows))

    def _transactions(self) -> Transactions:
        if self.transactions is None:
            raise BackendError(f"the catalogue of {self.url} is closed")
        return self.transactions

    @property
    def engine(self) -> sa.engine.Engine:
        return self._transactions().engine

    def _hook(self, name: str) -> None:
        hook = self.hooks.get(name)
        if hook is not None:
            hook()

    def _write(self, operation: str, work: Callable[[Connection], Any]) -> Any:
        return self._transactions().write(operation, work)

    # ------------------------------------------------------------------ reads
    def entries(self, application_name: Optional[str], domain_name: Optional[str],
                entry_type: Optional[str], version: Union[None, int, str],
                conditions: Sequence[Tuple[str, str, Any]], match: Match,
                paths: Optional[Sequence[str]] = None) -> List[Entry]:
        """Entries matching every filter; ``version="latest"`` keeps, per domain and
        entry, the highest version among the matches."""
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name,
                                            None if domain_name is None else [domain_name],
                                            None if entry_type is None else [entry_type])
            if isinstance(version, int):
                datasets = [d for d in datasets if d.version == version]
            records = reads.file_records(conn, self.kinds, datasets, paths, conditions,
                                         keep_raw=False)
        records = [r for r in records if match(r.metadata)]
        if version == "latest":
            records = reads.keep_latest(records)
        return [entry_of(r) for r in records]

    def versions(self, application_name: str, domain_name: str, entry_type: str) -> List[int]:
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                            [entry_type])
        return sorted({d.version for d in datasets})

    def files_by_version(self, application_name: str, domain_name: str, entry_type: str,
                         only: VersionSelector = None) -> Dict[int, List[str]]:
        """Version -> sorted paths; ``only``: None (all), "latest" or a list of versions."""
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                            [entry_type])
            datasets = _select_versions(datasets, only)
            paths = reads.dataset_paths(conn, datasets)
        out: Dict[int, List[str]] = {}
        for dataset in datasets:
            out.setdefault(dataset.version, []).extend(paths[dataset.id])
        return {v: sorted(out[v]) for v in sorted(out)}

    def records(self, application_name: str, domain_name: Optional[str]) -> List[FileRecord]:
        """Every file record of the application's (and legacy) ensembles, or of one domain."""
        with self._transactions().read() as conn:
            return self._records(conn, application_name, domain_name)

    def _records(self, conn: Connection, application_name: Optional[str],
                 domain_name: Optional[str]) -> List[FileRecord]:
        datasets = reads.entry_datasets(conn, self.kinds, application_name,
                                        None if domain_name is None else [domain_name])
        return reads.file_records(conn, self.kinds, datasets, keep_raw=False)

    def member_datasets(self) -> List[MemberDataset]:
        """Every dataset of every ensemble with its raw name and version (for importing)."""
        with self._transactions().read() as conn:
            return reads.member_datasets(conn, self.kinds,
                                         reads.find_ensembles(conn, self.kinds, None))

    def dataset_files(self, datasets: Sequence[Dataset]) -> List[FileRecord]:
        """The file records of ``datasets`` (for importing)."""
        with self._transactions().read() as conn:
            return reads.file_records(conn, self.kinds, datasets, keep_raw=False)

    def dataset_id(self, application_name: str, domain_name: str, entry_type: str,
                   version: Union[int, str]) -> Tuple[Optional[str], List[int]]:
        """The Kosh id of one entry's dataset of ``version`` (or "latest"), and all its versions."""
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                            [entry_type])
        known = sorted({d.version for d in datasets})
        chosen = _select_versions(datasets, "latest" if version == "latest" else [int(version)])
        if len(chosen) > 1:
            LOGGER.warning("%d Kosh datasets hold %s version %d of %s; using %s", len(chosen),
                           entry_type, chosen[0].version, domain_name, chosen[0].id)
        return (chosen[0].id if chosen else None), known

    def locate(self, paths: Iterable[str]) -> Dict[str, str]:
        """Where each of ``paths`` is registered in the whole store (any application)."""
        with self._transactions().read() as conn:
            return reads.locate(conn, self.kinds, paths)

    def domains(self, application_name: Optional[str]) -> List[Tuple[Optional[str], str]]:
        """(application, domain) of every ensemble visible to the application (all when None)."""
        with self._transactions().read() as conn:
            ensembles = reads.find_ensembles(conn, self.kinds, application_name)
        return sorted({(e.application_name, e.domain_name) for e in ensembles},
                      key=lambda item: (item[0] or "", item[1]))

    def summary(self, application_name: Optional[str]) -> List[Dict[str, Any]]:
        """Per application, domain and entry: versions, files, bytes on disk, latest version."""
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name, None)
            paths = reads.dataset_paths(conn, datasets)
        groups: Dict[Tuple[Optional[str], str, str], List[Dataset]] = {}
        for dataset in datasets:
            key = (dataset.ensemble.application_name, dataset.ensemble.domain_name,
                   dataset.entry_type)
            groups.setdefault(key, []).append(dataset)
        out = []
        for (application, domain, entry_type), members in sorted(
                groups.items(), key=lambda item: (item[0][0] or "", item[0][1], item[0][2])):
            files = [p for d in members for p in paths[d.id]]
            out.append({"application_name": application, "domain_name": domain,
                        "entry_type": entry_type,
                        "versions": sorted({d.version for d in members}),
                        "latest_version": max(d.version for d in members),
                        "files": len(files), "bytes": sum(_size(p) for p in files)})
        return out

    def lineage(self, application_name: str, domain_name: str,
                version: Union[int, str]) -> Dict[str, Any]:
        """Which data trained the models of ``version`` (an int or "latest")."""
        with self._transactions().read() as conn:
            ensembles = reads.find_ensembles(conn, self.kinds, application_name, [domain_name])
            datasets = reads.find_datasets(conn, self.kinds, ensembles, ["models"])
            existing = sorted({d.version for d in datasets})
            wanted = existing[-1] if version == "latest" and existing else version
            if wanted not in existing:
                raise NotFoundError(f"no models version {version!r} in domain {domain_name!r} "
                                    f"(existing: {', '.join(map(str, existing)) or 'none'})",
                                    versions=existing)
            models = reads.file_records(conn, self.kinds,
                                        [d for d in datasets if d.version == wanted])
            trained = {p for m in models for p in m.metadata.get(TRAINED_ON_FILES, [])}
            data = reads.find_datasets(conn, self.kinds, ensembles, ["data"])
            registered = {r.path for r in reads.file_records(conn, self.kinds, data, trained)}
        out: Dict[str, Any] = {"domain_name": domain_name, "version": wanted, "models": []}
        for model in models:
            files = model.metadata.get(TRAINED_ON_FILES, [])
            out["models"].append({
                "filename": model.path,
                "data_versions": list(model.metadata.get(TRAINED_ON_VERSIONS, [])),
                "present": [p for p in files if p in registered],
                "missing": [p for p in files if p not in registered]})
        for key in ("data_versions", "present", "missing"):
            out[key] = sorted({item for model in out["models"] for item in model[key]})
        return out

    # ------------------------------------------------------------------ adding
    def add(self, application_name: str, domain_name: str, entry_type: str, mime_type: str,
            files: Sequence[NewFile], version: Optional[int],
            trained_on: Optional[Sequence[int]] = None,
            precommit: Optional[Callable[[], None]] = None) -> int:
        """Register ``files`` in one version (a new one when None) of one entry; return it.

        ``trained_on``: data versions of the domain recorded (with their files) on
        every new entry, read inside the same transaction. ``precommit`` runs last
        inside it (a re-check of the files); raising there rolls everything back.
        """
        def work(conn: Connection) -> int:
            new_files = files
            if trained_on is not None:
                lineage = self._training_data(conn, application_name, domain_name, trained_on)
                new_files = [NewFile(f.path, {**f.metadata, **lineage}, f.fast_sha) for f in files]
            result = writes.add(conn, self._context_(), application_name, domain_name,
                                entry_type, mime_type, new_files, version)
            if precommit is not None:
                precommit()
            return result
        return self._write("add", work)

    def _context_(self) -> writes.WriteContext:
        if self._context is None:
            raise BackendError(f"the catalogue of {self.url} is closed")
        return self._context

    def _training_data(self, conn: Connection, application_name: str, domain_name: str,
                       versions: Sequence[int]) -> Dict[str, Any]:
        datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                        ["data"])
        existing = sorted({d.version for d in datasets})
        absent = [v for v in versions if v not in existing]
        if absent:
            raise NotFoundError(
                f"trained_on: data version(s) {', '.join(map(str, absent))} of domain "
                f"{domain_name!r} do not exist (existing: "
                f"{', '.join(map(str, existing)) or 'none'})", versions=absent)
        paths = reads.dataset_paths(conn, [d for d in datasets if d.version in versions])
        return {TRAINED_ON_VERSIONS: list(versions),
                TRAINED_ON_FILES: sorted(p for group in paths.values() for p in group)}

    # ------------------------------------------------------------------ removing
    def remove(self, application_name: str, domain_name: str, entry_type: str,
               paths: Optional[Sequence[str]], versions: VersionSelector, match: Match,
               purge: bool, guard_lineage: bool) -> RemoveOutcome:
        """Remove the matching records in one transaction; then purge their files.

        ``versions="latest"`` is resolved inside the write transaction: the highest
        version among the records the other filters match. With ``purge``, the
        paths no longer referenced get a purge intent in the same transaction and
        are deleted after the commit, under the write lock, by :meth:`_purge`.
        ``guard_lineage``: refuse to purge data files that models of this
        application were trained on (:class:`LineageError`).
        """
        tag = uuid.uuid4().hex

        def work(conn: Connection) -> writes.RemoveResult:
            records = self._entry_records(conn, application_name, domain_name, entry_type,
                                          versions, paths)
            chosen = [r for r in records if match(r.metadata)]
            if versions == "latest":
                chosen = reads.keep_latest(chosen)
            if guard_lineage and chosen:
                self._lineage_guard(conn, application_name, chosen)
            result = writes.remove(conn, self.kinds, chosen)
            if purge:
                self._intend_purges(conn, application_name, tag, result)
            return result
        result = self._write("remove", work)
        outcome = RemoveOutcome(removed=sorted(r.path for r in result.removed),
                                still_referenced=result.still_referenced)
        if purge and result.removed:
            self._hook("before_purge")
            self._purge(application_name, tag, outcome)
        return outcome

    def _entry_records(self, conn: Connection, application_name: str, domain_name: str,
                       entry_type: str, versions: VersionSelector,
                       paths: Optional[Sequence[str]]) -> List[FileRecord]:
        datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                        [entry_type])
        if versions is not None and versions != "latest":
            datasets = _select_versions(datasets, versions)
        return reads.file_records(conn, self.kinds, datasets, paths, keep_raw=False)

    def _lineage_guard(self, conn: Connection, application_name: str,
                       records: Sequence[FileRecord]) -> None:
        """Refuse to purge files this application's models were trained on."""
        models = {d.id for d in reads.entry_datasets(conn, self.kinds, application_name, None,
                                                     ["models"])}
        users = reads.files_listing(conn, self.kinds, TRAINED_ON_FILES,
                                    [r.path for r in records], within=models)
        if not users:
            return
        files = sorted({path for _where, matched in users.values() for path in matched})
        described = "; ".join(f"{model!r} ({where})" for model, (where, _m) in sorted(users.items()))
        raise LineageError(
            f"refusing to purge {len(files)} data file(s) that {len(users)} registered "
            f"model(s) were trained on: {described}; files: "
            + ", ".join(map(repr, files[:5])) + (" ..." if len(files) > 5 else "")
            + ". Remove those models first, remove with purge=False, or pass force=True "
              "(ams-store remove --force)", models=sorted(users), paths=files)

    def _intend_purges(self, conn: Connection, application_name: str, tag: str,
                       result: writes.RemoveResult) -> None:
        now = time.time()
        rows = [{"id": f"{tag}-{index}", "operation": "purge",
                 "application_name": application_name, "path": record.path, "source": None,
                 "fast_sha": record.fast_sha, "created": now}
                for index, record in enumerate(result.removed)
                if record.path not in result.still_referenced]
        if rows:
            conn.execute(_intent_table(conn).insert(), rows)

    def _purge(self, application_name: str, tag: Optional[str], outcome: RemoveOutcome) -> None:
        """Delete the files of pending purge intents (``tag``'s, or all), under the write lock.

        Each path is re-checked there: still registered (added again since) ->
        kept; no longer the registered file (folder replaced by a symlink, content
        changed) -> reported in ``purge_errors``. A failure on one file does not
        stop the others. The intents are dropped in the same transaction.
        """
        def work(conn: Connection) -> None:
            table = _intent_table(conn)
            query = sa.select(table.c.id, table.c.path, table.c.fast_sha).where(
                table.c.operation == "purge", table.c.application_name == application_name)
            if tag is not None:
                query = query.where(table.c.id.like(f"{tag}-%"))
            intents = conn.execute(query).all()
            taken = reads.locate(conn, self.kinds, [path for _id, path, _sha in intents])
            for _id, path, registered_sha in intents:
                if path in taken:
                    outcome.still_referenced.add(path)
                    continue
                problem = disk.purge(path, registered_sha)
                if problem is None:
                    if path not in outcome.purged:
                        outcome.purged.append(path)
                elif problem == disk.GONE:
                    LOGGER.debug("purge: %s was already gone", path)
                else:
                    outcome.purge_errors[path] = problem
                    LOGGER.error("purge: not deleting %s: %s", path, problem)
            if intents:
                conn.execute(table.delete().where(table.c.id.in_([i[0] for i in intents])))
        self._write("purge", work)
        outcome.purged.sort()

    # ------------------------------------------------------------------ moving
    def move(self, application_name: str, domain_name: str, src_type: str, dest_type: str,
             mime_type: str, moves: Sequence[Tuple[str, str]], version: Optional[int],
             copy: bool = True, make_folder: Optional[str] = None,
             ) -> Tuple[int, RemoveOutcome]:
        """Move registered files of ``src_type`` to ``dest_type`` (one new version unless given).

        ``moves``: (source, destination) paths. With ``copy``: copy intents are
        recorded first (so that :meth:`unfinished` explains a killed move), each
        copy is placed without replacing anything (:class:`ams.files.Placement`),
        then ONE transaction registers the copies with the sources' metadata,
        removes the sources and records their purges; a failure before that commit
        removes exactly the copies and folders this call made. After the commit the
        sources are purged under the write lock. Without ``copy``: one transaction
        re-files the same paths; nothing on disk is touched.
        """
        tag = uuid.uuid4().hex
        placement = disk.Placement(tag=tag)
        date = now_string()
        if copy:
            self._record_copy_intents(application_name, tag, moves)
        try:
            if copy:
                if make_folder is not None:
                    placement.make_folders(make_folder)
                for source, target in moves:
                    placement.copy(source, target)
                    self._hook("after_copy")

            def work(conn: Connection) -> Tuple[int, writes.RemoveResult]:
                sources = self._entry_records(conn, application_name, domain_name, src_type,
                                              None, [src for src, _ in moves])
                by_path = {r.path: r for r in sources}
                missing = [src for src, _ in moves if src not in by_path]
                if missing:
                    raise NotFoundError(f"not registered as {src_type} of domain {domain_name!r}: "
                                        + ", ".join(map(repr, missing)), paths=missing)
                removed = writes.remove(conn, self.kinds, [by_path[src] for src, _ in moves])
                copies = [NewFile(target, {**by_path[src].metadata, "date": date},
                                  by_path[src].fast_sha or disk.fast_sha(target))
                          for src, target in moves]
                new_version = writes.add(conn, self._context_(), application_name, domain_name,
                                         dest_type, mime_type, copies, version)
                if copy:
                    self._drop_intents(conn, tag)
                    removed.still_referenced = set(reads.locate(
                        conn, self.kinds, [src for src, _ in moves]))
                    self._intend_purges(conn, application_name, tag, removed)
                self._hook("before_commit")
                return new_version, removed
            new_version, result = self._write("move", work)
        except BaseException:
            left = placement.undo()
            try:
                self._write("move", lambda conn: self._drop_intents(conn, tag))
            except Exception as error:  # noqa: BLE001 - verify reports what is left
                LOGGER.error("move: could not drop the copy intents of %s: %s", tag, error)
            if left:
                LOGGER.error("move: could not remove %d copy(ies): %s", len(left), ", ".join(left))
            raise
        # Committed: from here on the copies are registered and never removed.
        outcome = RemoveOutcome(removed=sorted(r.path for r in result.removed),
                                still_referenced=result.still_referenced)
        if copy:
            self._hook("before_purge")
            self._purge(application_name, tag, outcome)
        return new_version, outcome

    def _record_copy_intents(self, application_name: str, tag: str,
                             moves: Sequence[Tuple[str, str]]) -> None:
        now = time.time()
        rows = [{"id": f"{tag}-{index}", "operation": "copy",
                 "application_name": application_name, "path": target, "source": source,
                 "fast_sha": None, "created": now}
                for index, (source, target) in enumerate(moves)]
        self._write("move", lambda conn: conn.execute(_intent_table(conn).insert(), rows))

    @staticmethod
    def _drop_intents(conn: Connection, tag: str) -> None:
        table = _intent_table(conn)
        conn.execute(table.delete().where(table.c.id.like(f"{tag}-%")))

    # ------------------------------------------------------------------ aliases
    def set_alias(self, application_name: str, domain_name: str, entry_type: str, alias: str,
                  version: int, user: str) -> Optional[int]:
        """Point ``alias`` at an existing ``version`` in one locked transaction; the previous one."""
        def work(conn: Connection) -> Optional[int]:
            existing = sorted({d.version for d in reads.entry_datasets(
                conn, self.kinds, application_name, [domain_name], [entry_type])})
            if version not in existing:
                raise NotFoundError(
                    f"no {entry_type} version {version} in domain {domain_name!r} to point "
                    f"alias {alias!r} at (existing: {', '.join(map(str, existing)) or 'none'})",
                    versions=existing)
            return aliases.set_alias(conn, application_name, domain_name, entry_type, alias,
                                     version, user)
        return self._write("alias", work)

    def remove_alias(self, application_name: str, domain_name: str, entry_type: str,
                     alias: str, user: str) -> Optional[int]:
        return self._write("alias", lambda conn: aliases.remove_alias(
            conn, application_name, domain_name, entry_type, alias, user))

    def read_aliases(self, read: Callable[[Connection], Any], default: Any) -> Any:
        """Run ``read(conn)`` on the alias table; ``default`` for a store that has none yet."""
        with self._transactions().read() as conn:
            if aliases.TABLE_NAME not in self._tables:
                self._tables[aliases.TABLE_NAME] = sa.inspect(conn).has_table(aliases.TABLE_NAME)
            if not self._tables[aliases.TABLE_NAME]:
                return default
            return read(conn)

    # ------------------------------------------------------------------ verifying
    def unfinished(self, application_name: str) -> Unfinished:
        """What killed moves and purges of the application left on disk."""
        with self._transactions().read() as conn:
            if not self._has_intents(conn):
                return Unfinished()
            table = _intent_table(conn)
            intents = conn.execute(sa.select(table.c.id, table.c.operation, table.c.path).where(
                table.c.application_name == application_name)).all()
            taken = reads.locate(conn, self.kinds, [path for _id, _op, path in intents])
        out = Unfinished()
        for intent_id, operation, path in intents:
            if operation == "copy":  # a partial copy under its temporary name, too
                partial = disk.Placement(tag=intent_id.rsplit("-", 1)[0]).temporary_name(path)
                if os.path.lexists(partial):
                    out.stray_copies.append(partial)
            if path in taken or not os.path.lexists(path):
                continue
            (out.stray_copies if operation == "copy" else out.unpurged).append(path)
        out.stray_copies.sort()
        out.unpurged.sort()
        return out

    def finish_unfinished(self, application_name: str) -> Tuple[List[str], RemoveOutcome]:
        """Undo killed moves (remove their unregistered copies) and finish killed purges."""
        removed: List[str] = []

        def undo_copies(conn: Connection) -> None:
            table = _intent_table(conn)
            intents = conn.execute(sa.select(table.c.id, table.c.path).where(
                table.c.operation == "copy", table.c.application_name == application_name)).all()
            taken = reads.locate(conn, self.kinds, [path for _id, path in intents])
            for intent_id, path in intents:
                tag = intent_id.rsplit("-", 1)[0]
                removed.extend(disk.remove_temporary_copies(os.path.dirname(path), tag))
                if path not in taken and os.path.lexists(path):
                    problem = disk.purge(path, None)
                    if problem in (None, disk.GONE):
                        removed.append(path)
                    else:
                        LOGGER.error("verify: could not remove the stray copy %s: %s", path,
                                     problem)
            if intents:
                conn.execute(table.delete().where(table.c.id.in_([i[0] for i in intents])))
        self._write("repair", undo_copies)
        outcome = RemoveOutcome()
        self._purge(application_name, None, outcome)
        return sorted(removed), outcome

    def _has_intents(self, conn: Connection) -> bool:
        if schema.FILE_INTENT not in self._tables:
            self._tables[schema.FILE_INTENT] = sa.inspect(conn).has_table(schema.FILE_INTENT)
        return self._tables[schema.FILE_INTENT]

    def drop_missing(self, application_name: str, domain_name: Optional[str],
                     ids: Set[str]) -> List[str]:
        """Drop, in one transaction, the records ``ids`` whose file is (still) missing."""
        def work(conn: Connection) -> writes.RemoveResult:
            records = self._records(conn, application_name, domain_name)
            return writes.remove(conn, self.kinds, [r for r in records if r.id in ids
                                                    and not os.path.isfile(r.path)])
        return sorted(r.path for r in self._write("repair", work).removed)


def entry_of(record: FileRecord) -> Entry:
    dataset = record.dataset
    return Entry(id=record.id, application_name=dataset.ensemble.application_name,
                 domain_name=dataset.ensemble.domain_name, filename=record.path,
                 entry_type=dataset.entry_type, version=dataset.version,
                 metadata=record.metadata)


def _select_versions(datasets: List[Dataset], only: VersionSelector) -> List[Dataset]:
    if only is None:
        return datasets
    if only == "latest":
        top = max((d.version for d in datasets), default=None)
        return [d for d in datasets if d.version == top]
    wanted = set(only)
    return [d for d in datasets if d.version in wanted]


def _intent_table(conn: Connection) -> sa.Table:
    return schema._own_schema(mariadb=conn.dialect.name != "sqlite").tables[schema.FILE_INTENT]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
