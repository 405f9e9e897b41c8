"""Writes of the catalogue: register files in a version, dissociate them, in bulk.

Every function runs inside a write transaction that holds the store's write
lock (see :mod:`ams.catalog.transactions`) and writes exactly the records Kosh
writes (an ensemble per domain, a dataset per entry and version, a file record
per path; see :mod:`ams.catalog.records`), in a constant number of statements
per call. Automatic versions come from a high-water mark kept in ams's own table
``ams_version_mark``, so a version is never handed out twice, even after every
file of the highest version was removed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set

from sina import sjson
from sqlalchemy.engine import Connection

from ..errors import BackendError, DuplicateEntryError, InvalidArgumentError
from ..url import StoreURL
from . import schema
from .mysql import MySQLValues
from .reads import find_datasets, find_ensembles, locate, read_raws
from .records import (
    NOT_INHERITED,
    Dataset,
    Ensemble,
    FileRecord,
    NewFile,
    StoreKinds,
    new_ids,
    new_raw,
    now_string,
    record_rows,
)
from .sql import (
    DATA_TABLES,
    DOCUMENT,
    RECORD,
    RELATIONSHIP,
    Rows,
    chunks,
    extend,
    insert,
    is_sqlite,
    marks,
    run,
)
from .transactions import Retry

#: Files whose rows one add builds and inserts at a time (memory stays flat).
ADD_BATCH = 2000
#: The highest version the store keeps (Sina also stores versions as REAL).
MAX_VERSION = 2**31 - 1


@dataclass
class WriteContext:
    """What writes need besides the connection: the store's kinds and its server's limits."""

    kinds: StoreKinds
    url: StoreURL
    max_packet: Optional[int] = None

    def packet_limit(self, conn: Connection) -> Optional[int]:
        """MariaDB's max_allowed_packet (bytes), read once; None on SQLite."""
        if is_sqlite(conn):
            return None
        if self.max_packet is None:
            self.max_packet = int(run(conn, "SELECT @@max_allowed_packet")[0][0])
        return self.max_packet


@dataclass
class RemoveResult:
    """Records a removal dissociated, and which of their paths the store still references."""

    removed: List[FileRecord] = field(default_factory=list)
    still_referenced: Set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- adding
def add(conn: Connection, ctx: WriteContext, application_name: str, domain_name: str,
        entry_type: str, mime_type: str, files: Sequence[NewFile],
        version: Optional[int]) -> int:
    """Register ``files`` in one version of one entry (a new one when None); return it."""
    kinds = ctx.kinds
    taken = locate(conn, kinds, [f.path for f in files])
    if taken:
        path, where = next(iter(sorted(taken.items())))
        raise DuplicateEntryError(f"{path!r} is already registered ({where})"
                                  + (f" and {len(taken) - 1} more" if len(taken) > 1 else ""),
                                  path=path)
    # Fail fast when the new files alone overflow the dataset record (MariaDB).
    limit = ctx.packet_limit(conn)
    if limit and sum(2 * len(f.path) + 120 for f in files) > limit:
        raise _too_big(ctx, entry_type, domain_name, version, len(files), None, limit)
    now = time.time()
    ensembles = find_ensembles(conn, kinds, application_name, [domain_name])
    inserts: Rows = defaultdict(list)  # type: ignore[assignment]
    if not ensembles:
        ensemble = _new_ensemble(kinds, application_name, domain_name, inserts)
        datasets: List[Dataset] = []
    else:
        ensemble = ensembles[0]
        datasets = find_datasets(conn, kinds, ensembles, [entry_type])
    if version is None:
        version = _next_version(conn, ensemble.id, entry_type, datasets, domain_name)
    target = next((d for d in datasets if d.version == version), None)
    is_new_dataset = target is None
    if target is None:
        dataset_raw = _new_dataset_raw(kinds, ensemble, entry_type, version, now)
        target = Dataset(dataset_raw["id"], ensemble, entry_type, version)
    else:
        dataset_raw = read_raws(conn, [target.id])[target.id]
    had_files = bool(dataset_raw["files"])

    date = now_string()
    for new, file_id in zip(files, new_ids(len(files))):
        raw = new_raw(file_id, kinds.file)
        data = raw["data"]
        info = raw["user_defined"]["kosh_information"]
        values = dict(new.metadata)
        values.update({"fast_sha": new.fast_sha, "uri": new.path, "mime_type": mime_type,
                       "associated": [target.id]})
        for key, value in values.items():
            data[key] = {"value": value}
            info[f"{key}_last_modified"] = now
        data["last_modified_date"] = {"value": date}
        data["creation_date"] = {"value": date}
        extend(inserts, record_rows(raw))
        dataset_raw["files"][new.path] = {"mimetype": mime_type, "kosh_id": file_id}
        dataset_raw["user_defined"]["kosh_information"][
            f"{new.path}___associated_last_modified"] = now
        if len(inserts[RECORD]) >= ADD_BATCH:
            check_record_sizes(conn, ctx, inserts)
            insert(conn, inserts)
            inserts = defaultdict(list)  # type: ignore[assignment]
    dataset_raw["data"]["last_modified_date"] = {"value": date}
    _check_fits(conn, ctx, dataset_raw, target, len(files))

    if is_new_dataset:
        inserts[RELATIONSHIP].append({"subject_id": target.id, "object_id": ensemble.id,
                                      "predicate": kinds.predicate})
        extend(inserts, record_rows(dataset_raw))
    elif had_files:  # append in place: raw, its date, the new documents
        _update_dataset(conn, target.id, dataset_raw, date)
        inserts[DOCUMENT].extend({"id": target.id, "uri": new.path, "mimetype": mime_type,
                                  "tags": None} for new in files)
    else:  # an empty dataset left by plain Kosh: rewrite it whole
        _replace_records(conn, [dataset_raw])
    check_record_sizes(conn, ctx, inserts)
    insert(conn, inserts)
    _raise_mark(conn, ensemble.id, entry_type, version)
    if is_new_dataset:
        _check_version_unique(conn, kinds, application_name, domain_name, entry_type, version)
    return version


def _next_version(conn: Connection, ensemble_id: str, entry_type: str,
                  datasets: Sequence[Dataset], domain_name: str) -> int:
    """One above every version this entry has ever had (existing datasets and the mark)."""
    rows = run(conn, f'SELECT "high" FROM "{schema.VERSION_MARK}" WHERE "ensemble_id" = ? '
               'AND "entry_type" = ?', (ensemble_id, entry_type))
    high = max([d.version for d in datasets] + [int(rows[0][0]) if rows else 0])
    if high >= MAX_VERSION:
        raise InvalidArgumentError(
            f"{entry_type} of domain {domain_name!r} has reached version {high}, the highest "
            f"the store keeps ({MAX_VERSION}); give an explicit version to add to an existing one")
    return high + 1


def _raise_mark(conn: Connection, ensemble_id: str, entry_type: str, version: int) -> None:
    """Remember ``version`` as used: later automatic versions go above it (one upsert)."""
    if is_sqlite(conn):
        sql = (f'INSERT INTO "{schema.VERSION_MARK}" ("ensemble_id", "entry_type", "high") '
               'VALUES (?, ?, ?) ON CONFLICT ("ensemble_id", "entry_type") DO UPDATE SET '
               '"high" = MAX("high", excluded."high")')
    else:
        sql = (f'INSERT INTO "{schema.VERSION_MARK}" ("ensemble_id", "entry_type", "high") '
               'VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE "high" = GREATEST("high", VALUES("high"))')
    run(conn, sql, (ensemble_id, entry_type, version))


def _check_fits(conn: Connection, ctx: WriteContext, dataset_raw: Dict[str, Any],
                target: Dataset, added: int) -> None:
    """Refuse, before writing it, a dataset record MariaDB would reject.

    Kosh keeps a dataset's whole file list in its record (~150 bytes plus
    twice the path per file), and the server refuses statements over its
    max_allowed_packet (16 MiB by default, ~50,000-100,000 files).
    """
    limit = ctx.packet_limit(conn)
    if not limit:
        return
    text = sjson.dumps(dataset_raw)
    size = len(text) + text.count(b'"') + text.count(b"\\") + 1024  # escaped, plus SQL
    if size > limit:
        raise _too_big(ctx, target.entry_type, target.ensemble.domain_name, target.version,
                       added, size, limit)


def check_record_sizes(conn: Connection, ctx: WriteContext, rows: Rows) -> None:
    """Refuse a file record bigger than MariaDB's max_allowed_packet, naming it."""
    limit = ctx.packet_limit(conn)
    if not limit:
        return
    for row in rows.get(RECORD, ()):
        size = len(row["raw"]) * 2 + 1024
        if size > limit:
            raise BackendError(
                f"a record of ~{size:,} bytes is over the max_allowed_packet ({limit:,} bytes) "
                f"of the MariaDB server {ctx.url.host}:{ctx.url.port}; store less metadata per "
                "file or raise it on the server (SET GLOBAL max_allowed_packet=1073741824); "
                "nothing was added")


def _too_big(ctx: WriteContext, entry_type: str, domain_name: str, version: Optional[int],
             added: int, size: Optional[int], limit: int) -> BackendError:
    where = f"version {version} of" if version is not None else "one version of"
    record = f"a record of {size:,} bytes" if size else "one record"
    return BackendError(
        f"cannot add {added} file(s) to {where} {entry_type} in domain {domain_name!r}: "
        f"Kosh keeps a dataset's file list in {record}, over the max_allowed_packet "
        f"({limit:,} bytes) of the MariaDB server {ctx.url.host}:{ctx.url.port}; "
        "raise it on the server (SET GLOBAL max_allowed_packet=1073741824 and in its "
        "configuration) or spread the files over several versions; nothing was added")


def _check_version_unique(conn: Connection, kinds: StoreKinds, application_name: str,
                          domain_name: str, entry_type: str, version: int) -> None:
    """Re-check, inside the locked transaction, that ``version`` is ours alone.

    The write lock already serialises every ams writer; this catches a writer
    that does not take it (plain Kosh, a foreign tool) committing the same
    version of the entry meanwhile. Kosh's tables cannot hold a unique
    constraint across a dataset's version and its ensemble, so the guarantee
    is this check: a duplicate rolls the call back and it runs again.
    """
    ensembles = find_ensembles(conn, kinds, application_name, [domain_name])
    same = [d for d in find_datasets(conn, kinds, ensembles, [entry_type]) if d.version == version]
    if len(same) > 1:
        raise Retry(f"{len(same)} datasets hold version {version} of {entry_type} in "
                    f"domain {domain_name!r}")


def _new_ensemble(kinds: StoreKinds, application_name: str, domain_name: str,
                  inserts: Rows) -> Ensemble:
    raw = new_raw(new_ids(1)[0], kinds.ensemble)
    date = now_string()
    raw["data"] = {"application_name": {"value": application_name},
                   "creator": {"value": kinds.creator},
                   "creation_date": {"value": date},
                   "name": {"value": domain_name},
                   "last_modified_date": {"value": date}}
    extend(inserts, record_rows(raw))
    return Ensemble(raw["id"], domain_name, application_name, raw)


def _new_dataset_raw(kinds: StoreKinds, ensemble: Ensemble, entry_type: str, version: int,
                     now: float) -> Dict[str, Any]:
    raw = new_raw(new_ids(1)[0], kinds.dataset)
    date = now_string()
    raw["data"] = {"version": {"value": version}, "creator": {"value": kinds.creator},
                   "creation_date": {"value": date}, "name": {"value": entry_type},
                   "last_modified_date": {"value": date}}
    for key, datum in ensemble.raw["data"].items():  # Kosh's attribute inheritance
        if key not in NOT_INHERITED:
            raw["data"][key] = {"value": datum["value"]}
            raw["user_defined"]["kosh_information"][f"{key}_last_modified"] = now
    return raw


# --------------------------------------------------------------------------- removing
def remove(conn: Connection, kinds: StoreKinds, records: Sequence[FileRecord]) -> RemoveResult:
    """Dissociate ``records`` from their datasets (Kosh's dissociate, in bulk).

    A file record left with no dataset is deleted, one still shared (plain-Kosh
    stores) is rewritten; a dataset left empty is deleted.
    """
    result = RemoveResult(removed=list(records))
    if not records:
        return result
    now = time.time()
    date = now_string()
    by_dataset: Dict[str, List[FileRecord]] = defaultdict(list)
    for record in records:
        by_dataset[record.dataset.id].append(record)
    dataset_raws = read_raws(conn, list(by_dataset))
    leaving: Dict[str, Set[str]] = defaultdict(set)
    associated: Dict[str, List[str]] = {}
    for record in records:
        leaving[record.id].add(record.dataset.id)
        associated[record.id] = record.associated
    left = {record_id: [a for a in associated[record_id] if a not in gone]
            for record_id, gone in leaving.items()}
    delete_ids = [record_id for record_id, still in left.items() if not still]
    rewrite: List[Dict[str, Any]] = []
    shared = [record_id for record_id, still in left.items() if still]
    for record_id, raw in read_raws(conn, shared).items():  # plain-Kosh stores only
        raw["data"]["associated"]["value"] = left[record_id]
        raw["data"]["last_modified_date"] = {"value": date}
        rewrite.append(raw)
    empty_datasets = []
    for dataset_id, gone in by_dataset.items():
        raw = dataset_raws[dataset_id]
        for record in gone:
            raw["files"].pop(record.path, None)
            raw["user_defined"]["kosh_information"][
                f"{record.path}___associated_last_modified"] = now
        for chunk in chunks([r.path for r in gone]):
            run(conn, f'DELETE FROM "Document" WHERE "id" = ? AND "uri" IN ({marks(len(chunk))})',
                (dataset_id, *chunk))
        if raw["files"]:
            _update_dataset(conn, dataset_id, raw, date)
        else:
            empty_datasets.append(dataset_id)
    _delete_records(conn, delete_ids + empty_datasets)
    if rewrite:  # file records shared with other datasets (plain-Kosh stores)
        _replace_records(conn, rewrite)
    result.still_referenced = set(locate(conn, kinds, [r.path for r in records]))
    return result


# --------------------------------------------------------------------------- records
def _update_dataset(conn: Connection, dataset_id: str, raw: Dict[str, Any], date: str) -> None:
    """A dataset's new file list: its raw and its last_modified_date, in place.

    Kosh keeps the file list inside the dataset's raw JSON, so this rewrites
    it whole (O(files of the dataset)); the data rows are left alone.
    """
    raw["data"]["last_modified_date"] = {"value": date}
    text = sjson.dumps(raw)
    if is_sqlite(conn):
        run(conn, 'UPDATE "Record" SET "raw" = ? WHERE "id" = ?', (text, dataset_id))
    else:  # built here: the connector would copy and scan the big value several times
        values = MySQLValues.of(conn.connection.driver_connection)
        run(conn, b"UPDATE `Record` SET `raw` = " + values.bytes(text)
            + b" WHERE `id` = " + values.bytes(dataset_id), literal_sql=True)
    run(conn, 'UPDATE "StringData" SET "value" = ? WHERE "id" = ? AND "name" = ?',
        (date, dataset_id, "last_modified_date"))


def _delete_records(conn: Connection, record_ids: List[str]) -> None:
    """Delete records and every row that hangs off them (Sina's cascade, explicitly)."""
    for chunk in chunks(record_ids):
        in_list = marks(len(chunk))
        _delete_rows(conn, chunk)
        run(conn, f'DELETE FROM "Relationship" WHERE "subject_id" IN ({in_list})'
            f' OR "object_id" IN ({in_list})', (*chunk, *chunk))
        run(conn, f'DELETE FROM "Record" WHERE "id" IN ({in_list})', chunk)


def _replace_records(conn: Connection, raws: List[Dict[str, Any]]) -> None:
    """Sina's update (delete and re-insert), keeping the records' relationships."""
    inserts: Rows = defaultdict(list)  # type: ignore[assignment]
    for chunk in chunks([raw["id"] for raw in raws]):
        _delete_rows(conn, chunk)
    for raw in raws:
        rows = record_rows(raw)
        run(conn, 'UPDATE "Record" SET "raw" = ? WHERE "id" = ?',
            (rows.pop(RECORD)[0]["raw"], raw["id"]))
        extend(inserts, rows)
    insert(conn, inserts)


def _delete_rows(conn: Connection, record_ids: Sequence[str]) -> None:
    in_list = marks(len(record_ids))
    for table in DATA_TABLES + (DOCUMENT,):
        run(conn, f'DELETE FROM "{table.name}" WHERE "id" IN ({in_list})', record_ids)
