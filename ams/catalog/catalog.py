"""The catalogue's operations, in the domain's words: add, remove, move, entries, versions.

:class:`Catalog` gathers :class:`~ams.catalog.base.CatalogBase` (opening,
transactions), :class:`~ams.catalog.file_effects.FileEffects` (moves, purges)
and :class:`~ams.catalog.journal.Journal` (aliases, change feed); this module
holds the reads and the adds and removes of records.

:class:`Catalog` is the one door to the store's database: each method is one
operation (one read snapshot or one locked write transaction, retried on
conflicts) over Kosh's records, returning plain values. The facade
(:class:`ams.AMSDataStore`) checks arguments and calls one of these; nothing
else in the package reads the tables.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union, cast

from sqlalchemy.engine import Connection

from ..errors import LineageError, NotFoundError
from ..keys import TRAINED_ON_FILES, TRAINED_ON_VERSIONS
from ..store_types import Entry
from . import aliases, reads, writes
from .base import VersionSelector, select_versions
from .file_effects import FileEffects, RemoveOutcome
from .journal import file_events
from .records import (
    Dataset,
    FileRecord,
    MemberDataset,
    NewFile,
)

LOGGER = logging.getLogger(__name__)

Match = Callable[[Mapping[str, Any]], bool]


class Catalog(FileEffects):
    """Kosh's tables of one store, for any application; see the module docstring."""

    # ------------------------------------------------------------------ reads
    def entries(self, application_name: Optional[str], domain_name: Optional[str],
                entry_type: Optional[str], version: Union[None, int, str],
                conditions: Sequence[Tuple[str, str, Any]], match: Match,
                paths: Optional[Sequence[str]] = None) -> List[Entry]:
        """Entries matching every filter; ``version="latest"`` keeps, per domain and
        entry, the highest version among the matches; ``"@name"``, per domain and entry,
        the version that alias points to."""
        alias = aliases.parse_selector(version)
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name,
                                            None if domain_name is None else [domain_name],
                                            None if entry_type is None else [entry_type])
            if isinstance(version, int):
                datasets = [d for d in datasets if d.version == version]
            elif alias is not None:
                pointed: Dict[Tuple[str, str], VersionSelector] = {}
                for key in {(d.ensemble.domain_name, d.entry_type) for d in datasets}:
                    pointed[key] = self._resolve(conn, cast(str, application_name), *key,
                                                 cast(str, version))
                datasets = [d for d in datasets
                            if [d.version] == pointed[(d.ensemble.domain_name, d.entry_type)]]
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
        """Version -> sorted paths; ``only``: None (all), "latest", "@alias" or a list of versions."""
        with self._transactions().read() as conn:
            only = self._resolve(conn, application_name, domain_name, entry_type, only)
            datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                            [entry_type])
            datasets = select_versions(datasets, only)
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
        """The Kosh id of one entry's dataset of ``version`` ("latest", "@alias"), and all its versions."""
        with self._transactions().read() as conn:
            datasets = reads.entry_datasets(conn, self.kinds, application_name, [domain_name],
                                            [entry_type])
            only = self._resolve(conn, application_name, domain_name, entry_type,
                                 version if isinstance(version, str) else [version])
        known = sorted({d.version for d in datasets})
        chosen = select_versions(datasets, only)
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
        """Which data trained the models of ``version`` (an int, "latest" or "@alias")."""
        with self._transactions().read() as conn:
            ensembles = reads.find_ensembles(conn, self.kinds, application_name, [domain_name])
            datasets = reads.find_datasets(conn, self.kinds, ensembles, ["models"])
            existing = sorted({d.version for d in datasets})
            wanted: Any = existing[-1] if version == "latest" and existing else version
            if aliases.parse_selector(version) is not None:
                resolved = self._resolve(conn, application_name, domain_name, "models",
                                         cast(str, version))
                if not resolved:
                    raise NotFoundError(f"alias {version!r} is not set on models of domain "
                                        f"{domain_name!r}")
                wanted = cast(List[int], resolved)[0]
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
            precommit: Optional[Callable[[], None]] = None, action: str = "add") -> int:
        """Register ``files`` in one version (a new one when None) of one entry; return it.

        ``trained_on``: data versions of the domain recorded (with their files) on
        every new entry, read inside the same transaction. ``precommit`` runs last
        inside it (a re-check of the files); raising there rolls everything back.
        The change feed gets one ``action`` event ("add", or "import") in the same
        transaction.
        """
        sizes = sum(_size(f.path) if f.size is None else f.size for f in files)

        def work(conn: Connection) -> int:
            new_files = files
            if trained_on is not None:
                lineage = self._training_data(conn, application_name, domain_name, trained_on)
                new_files = [NewFile(f.path, {**f.metadata, **lineage}, f.fast_sha, f.size)
                             for f in files]
            result = writes.add(conn, self._context_(), application_name, domain_name,
                                entry_type, mime_type, new_files, version)
            self.record_events(conn, [{
                "application_name": application_name, "domain_name": domain_name,
                "entry_type": entry_type, "action": action, "version": result,
                "files": [f.path for f in files], "bytes": sizes}])
            if precommit is not None:
                precommit()
            return result
        return self._write("add", work)

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
               purge: bool, guard_lineage: bool, force: bool = False) -> RemoveOutcome:
        """Remove the matching records in one transaction; then purge their files.

        ``versions="latest"`` is resolved inside the write transaction: the highest
        version among the records the other filters match. With ``purge``, the
        paths no longer referenced get a purge intent in the same transaction and
        are deleted after the commit, under the write lock, by :meth:`_purge`.
        ``guard_lineage``: refuse to purge data files that models of this
        application were trained on (:class:`LineageError`). Versions that
        deployment aliases point to are refused (:class:`AliasError`) unless
        ``force``, which also removes those aliases. One "remove" event per version.
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
            self.guard_aliases(conn, application_name, chosen, force, "remove files of")
            result = writes.remove(conn, self.kinds, chosen)
            self.record_events(conn, file_events(application_name, "remove", result.removed))
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

    # ------------------------------------------------------------------ verifying
    def damage(self) -> List[str]:
        """What SQLite's ``PRAGMA quick_check`` finds wrong with the store's file ([]: sound;
        always [] on MariaDB, whose server checks its own pages)."""
        if self.url.backend != "sqlite":
            return []
        with self._transactions().read("check") as conn:
            rows = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        return [] if rows == ["ok"] else rows
    def drop_missing(self, application_name: str, domain_name: Optional[str],
                     ids: Set[str]) -> List[str]:
        """Drop, in one transaction, the records ``ids`` whose file is (still) missing."""
        def work(conn: Connection) -> writes.RemoveResult:
            records = self._records(conn, application_name, domain_name)
            result = writes.remove(conn, self.kinds, [r for r in records if r.id in ids
                                                      and not os.path.isfile(r.path)])
            self.record_events(conn, file_events(application_name, "repair", result.removed))
            return result
        return sorted(r.path for r in self._write("repair", work).removed)


def entry_of(record: FileRecord) -> Entry:
    dataset = record.dataset
    return Entry(id=record.id, application_name=dataset.ensemble.application_name,
                 domain_name=dataset.ensemble.domain_name, filename=record.path,
                 entry_type=dataset.entry_type, version=dataset.version,
                 metadata=record.metadata)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
