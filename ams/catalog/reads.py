"""Reads of the catalogue: ensembles, datasets and file records, narrowed in SQL.

Every function takes a connection inside a read (or write) transaction and the
store's :class:`~ams.catalog.records.StoreKinds`, and returns plain values.
Metadata conditions are pushed into SQL as a necessary condition only (through
the (name, value) indexes of Sina's data tables); the exact, type-aware match
is :mod:`ams._match`'s. :func:`latest_versions` is the one place "latest" is
resolved.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import sqlalchemy as sa
from sina import sjson
from sqlalchemy.engine import Connection

from .records import Dataset, Ensemble, FileRecord, MemberDataset, StoreKinds, as_int
from .sql import RECORD, RELATIONSHIP, STRING_LIST_ENTRY, chunks, marks, run, stream

#: A search narrowed in SQL to at most this many records fetches them by id.
BY_ID_LIMIT = 5000


def find_ensembles(conn: Connection, kinds: StoreKinds, application_name: Optional[str],
              domain_names: Optional[Iterable[str]] = None) -> List[Ensemble]:
    """Ensembles visible to the application: its own and legacy (no application_name).

    ``application_name=None``: every ensemble of every application (importer).
    """
    sql = ('SELECT r."id", s."value", r."raw" FROM "Record" r JOIN "StringData" s'
           ' ON s."id" = r."id" AND s."name" = ? WHERE r."type" = ?')
    rows: List[Any] = []
    if domain_names is None:
        rows = run(conn, sql, ("name", kinds.ensemble))
    else:
        for chunk in chunks(sorted(set(domain_names))):
            rows.extend(run(conn, sql + f' AND s."value" IN ({marks(len(chunk))})',
                             ("name", kinds.ensemble, *chunk)))
    out = []
    for record_id, name, raw in rows:
        raw = sjson.loads(raw)
        app = raw["data"].get("application_name", {}).get("value")
        if app is None or application_name is None or app == application_name:
            out.append(Ensemble(record_id, name, app, raw))
    # Oldest first, own before legacy, so writes pick a stable target.
    out.sort(key=lambda e: (e.application_name is None,
                            e.raw["data"].get("creation_date", {}).get("value", ""), e.id))
    return out


def find_datasets(conn: Connection, kinds: StoreKinds, ensembles: Sequence[Ensemble],
             entry_types: Optional[Iterable[str]] = None) -> List[Dataset]:
    if not ensembles:
        return []
    by_id = {e.id: e for e in ensembles}
    sql = ('SELECT rel."object_id", r."id", n."value", v."value" FROM "Relationship" rel'
           ' JOIN "Record" r ON r."id" = rel."subject_id"'
           ' JOIN "StringData" n ON n."id" = r."id" AND n."name" = ?'
           ' JOIN "ScalarData" v ON v."id" = r."id" AND v."name" = ?'
           ' WHERE rel."predicate" = ? AND r."type" = ?')
    params: List[Any] = ["name", "version", kinds.predicate, "dataset"]
    if entry_types is not None:
        names = sorted(set(entry_types))
        sql += f' AND n."value" IN ({marks(len(names))})'
        params += names
    out = []
    for chunk in chunks(sorted(by_id)):
        for ensemble_id, dataset_id, entry_type, version in run(
                conn, sql + f' AND rel."object_id" IN ({marks(len(chunk))})',
                (*params, *chunk)):
            out.append(Dataset(dataset_id, by_id[ensemble_id], entry_type, int(version)))
    out.sort(key=lambda d: (d.ensemble.domain_name, d.entry_type, d.version, d.id))
    return out


def dataset_paths(conn: Connection, datasets: Sequence[Dataset]) -> Dict[str, List[str]]:
    """Dataset id -> associated uris (Kosh's Document rows), sorted."""
    out: Dict[str, List[str]] = {d.id: [] for d in datasets}
    # In (id, uri) order: SQLite reads it straight from the primary key index,
    # and the sort below then only checks it.
    if len(out) <= 20:  # the usual case: uris alone, one query per dataset
        for dataset_id in out:
            out[dataset_id] = [uri for (uri,) in run(
                conn, 'SELECT "uri" FROM "Document" WHERE "id" = ? ORDER BY "uri"',
                (dataset_id,))]
    else:
        for chunk in chunks(list(out)):
            for dataset_id, uri in run(conn, 'SELECT "id", "uri" FROM "Document" WHERE "id"'
                                        f' IN ({marks(len(chunk))}) ORDER BY "id", "uri"',
                                        chunk):
                out[dataset_id].append(uri)
    for paths in out.values():
        paths.sort()
    return out


def file_records(conn: Connection, kinds: StoreKinds, datasets: Sequence[Dataset],
                 paths: Optional[Iterable[str]] = None,
                 conditions: Sequence[Tuple[str, str, Any]] = (),
                 keep_raw: bool = True) -> List[FileRecord]:
    """The file records associated with ``datasets`` (optionally only ``paths``).

    ``keep_raw=False``: the records keep path, metadata and checksum only
    (:attr:`FileRecord.raw` is then unavailable), for reads of many records.

    ``conditions`` (``(key, operator, operand)`` triples from
    :func:`ams._match.parse_conditions`) narrow the read in SQL, through the
    (name, value) indexes of Sina's ScalarData and StringData, so that only
    candidate records are fetched and parsed. That narrowing is a necessary
    condition only (every record matching the conditions is returned, maybe
    a few more); the caller applies the exact, type-aware match.
    """
    by_id = {d.id: d for d in datasets}
    if not by_id:
        return []
    candidates = _candidate_ids(conn, kinds, conditions)
    if candidates is not None and not candidates:
        return []
    sql = ('SELECT e."value", r."id", r."raw" FROM "ListStringDataEntry" e'
           ' JOIN "Record" r ON r."id" = e."id"')
    where = ' WHERE e."name" = ? AND r."type" = ?'
    params: Tuple[Any, ...] = ("associated", kinds.file)
    out = []

    def collect(sql: str, params: Sequence[Any]) -> None:
        for dataset_id, record_id, raw in stream(conn, sql, params):
            if dataset_id in by_id and (candidates is None or record_id in candidates):
                out.append(FileRecord(record_id, by_id[dataset_id], raw, keep_raw))

    if paths is not None:  # the records of these uris, by index (never a scan per chunk)
        by_path: Set[str] = set()
        for chunk in chunks(sorted(set(paths))):
            by_path.update(row[0] for row in run(
                conn, 'SELECT "id" FROM "StringData" WHERE "name" = ? AND "value" IN '
                f'({marks(len(chunk))})', ("uri", *chunk)))
        candidates = by_path if candidates is None else candidates & by_path
        if not candidates:
            return []
    if candidates is not None and (paths is not None or len(candidates) <= BY_ID_LIMIT):
        for chunk in chunks(sorted(candidates)):
            collect(sql + where + f' AND r."id" IN ({marks(len(chunk))})', (*params, *chunk))
    else:  # most of the datasets' records: read them dataset by dataset
        for chunk in chunks(sorted(by_id)):
            collect(sql + where + f' AND e."value" IN ({marks(len(chunk))})',
                    (*params, *chunk))
    return _sorted_records(out)


def _sorted_records(records: List[FileRecord]) -> List[FileRecord]:
    records.sort(key=lambda f: (f.dataset.ensemble.domain_name, f.dataset.entry_type,
                                f.dataset.version, f.path))
    return records


def _candidate_ids(conn: Connection, kinds: StoreKinds,
                   conditions: Sequence[Tuple[str, str, Any]]) -> Optional[Set[str]]:
    """Ids of the records that can match all ``conditions``; None: no narrowing."""
    ids: Optional[Set[str]] = None
    for key, op, operand in conditions:
        queries = _condition_sql(key, op, operand)
        if queries is None:
            continue
        found: Set[str] = set()
        for query in queries:  # one set of ids alive, however many match
            found.update(row[0] for row in stream(conn, *query)
                         if ids is None or row[0] in ids)
        ids = found
        if not ids:
            break
    return ids


def locate(conn: Connection, kinds: StoreKinds, paths: Iterable[str]) -> Dict[str, str]:
    """Where each of ``paths`` is registered in the whole store (any application)."""
    path_list = sorted(set(paths))
    found: Dict[str, List[str]] = defaultdict(list)
    for chunk in chunks(path_list):
        in_list = marks(len(chunk))
        for dataset_id, uri in run(conn, 'SELECT "id", "uri" FROM "Document" WHERE "uri" IN '
                                    f'({in_list})', chunk):
            found[dataset_id].append(uri)
        # A file record left without a dataset still owns its path in Kosh.
        for (uri,) in run(conn, 'SELECT s."value" FROM "StringData" s JOIN "Record" r ON'
                           ' r."id" = s."id" WHERE s."name" = ? AND r."type" = ? AND'
                           f' s."value" IN ({in_list})', ("uri", kinds.file, *chunk)):
            found.setdefault("", []).append(uri)
    out: Dict[str, str] = {}
    descriptions = describe_datasets(conn, kinds, [d for d in found if d])
    for dataset_id, uris in found.items():
        for uri in uris:
            if dataset_id:
                out[uri] = descriptions.get(dataset_id, f"dataset {dataset_id}")
            else:
                out.setdefault(uri, "a Kosh file record of this store")
    return out


def describe_datasets(conn: Connection, kinds: StoreKinds, dataset_ids: List[str]) -> Dict[str, str]:
    out = {}
    for chunk in chunks(dataset_ids):
        rows = conn.execute(
            sa.select(RECORD.c.id, RECORD.c.raw, RELATIONSHIP.c.object_id)
            .outerjoin(RELATIONSHIP, sa.and_(RELATIONSHIP.c.subject_id == RECORD.c.id,
                                              RELATIONSHIP.c.predicate == kinds.predicate))
            .where(RECORD.c.id.in_(chunk))).all()
        ensemble_ids = [r[2] for r in rows if r[2]]
        ensembles: Dict[Any, Any] = dict(conn.execute(sa.select(RECORD.c.id, RECORD.c.raw)
                                      .where(RECORD.c.id.in_(ensemble_ids))).all()) if ensemble_ids else {}
        for dataset_id, raw, ensemble_id in rows:
            data = sjson.loads(raw)["data"]
            ensemble = sjson.loads(ensembles[ensemble_id])["data"] if ensemble_id in ensembles else {}
            out[dataset_id] = (
                f"application {ensemble.get('application_name', {}).get('value')!r}, "
                f"domain {ensemble.get('name', {}).get('value')!r}, "
                f"entry {data.get('name', {}).get('value')!r}, "
                f"version {as_int(data.get('version', {}).get('value'))}")
    return out


def member_datasets(conn: Connection, kinds: StoreKinds,
                    ensembles: Sequence[Ensemble]) -> List[MemberDataset]:
    """Every dataset of ``ensembles`` with its raw ``name`` and ``version`` (None if absent).

    Unlike :meth:`datasets`, a dataset without an integer version is not
    skipped, so the importer can name it.
    """
    by_id = {e.id: e for e in ensembles}
    out = []
    query = (sa.select(RELATIONSHIP.c.object_id, RECORD.c.id, RECORD.c.raw)
             .join(RECORD, RECORD.c.id == RELATIONSHIP.c.subject_id)
             .where(RELATIONSHIP.c.predicate == kinds.predicate))
    for chunk in chunks(sorted(by_id)):
        for ensemble_id, dataset_id, raw in conn.execute(
                query.where(RELATIONSHIP.c.object_id.in_(chunk))):
            data = sjson.loads(raw)["data"]
            out.append(MemberDataset(dataset_id, by_id[ensemble_id],
                                     data.get("name", {}).get("value"),
                                     data.get("version", {}).get("value")))
    out.sort(key=lambda d: (d.ensemble.domain_name, str(d.name), str(d.version), d.id))
    return out


def files_listing(conn: Connection, kinds: StoreKinds, attribute: str, values: Iterable[str],
                  within: Optional[Set[str]] = None) -> Dict[str, Tuple[str, List[str]]]:
    """File records whose list attribute ``attribute`` holds any of ``values``.

    ``within``: only records associated with one of these dataset ids. Returns
    path -> (where it is registered, the matching values).
    """
    hits: Dict[str, List[str]] = defaultdict(list)
    query = (sa.select(STRING_LIST_ENTRY.c.id, STRING_LIST_ENTRY.c.value)
             .join(RECORD, RECORD.c.id == STRING_LIST_ENTRY.c.id)
             .where(STRING_LIST_ENTRY.c.name == attribute,
                    RECORD.c.type == kinds.file))
    for chunk in chunks(sorted(set(values))):
        for record_id, value in conn.execute(query.where(STRING_LIST_ENTRY.c.value.in_(chunk))):
            hits[record_id].append(value)
    if not hits:
        return {}
    raws = read_raws(conn, list(hits))
    if within is not None:
        raws = {record_id: raw for record_id, raw in raws.items()
                if within & set(raw["data"].get("associated", {}).get("value", []))}
        hits = {record_id: hits[record_id] for record_id in raws}
        if not hits:
            return {}
    dataset_ids = sorted({d for raw in raws.values()
                          for d in raw["data"].get("associated", {}).get("value", [])})
    where = describe_datasets(conn, kinds, dataset_ids)
    out = {}
    for record_id, matched in hits.items():
        data = raws[record_id]["data"]
        places = [where.get(d, f"dataset {d}") for d in data.get("associated", {}).get("value", [])]
        out[data["uri"]["value"]] = ("; ".join(places) or "no dataset", sorted(matched))
    return out


def read_raws(conn: Connection, record_ids: List[str]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for chunk in chunks(record_ids):
        for record_id, raw in run(conn, 'SELECT "id", "raw" FROM "Record" WHERE "id" IN '
                                   f'({marks(len(chunk))})', chunk):
            out[record_id] = sjson.loads(raw)
    return out


def _condition_sql(key: str, op: str, operand: Any) -> Optional[List[Tuple[str, Tuple[Any, ...]]]]:
    """Queries whose union is the ids of records whose data can satisfy ``key op operand``;
    None: any record can.

    A necessary condition only, as Sina stores it: str values in StringData,
    numbers and bools in ScalarData as floating point. So numbers are compared
    as floats, and strict comparisons as non-strict ones (an int beyond 2**53
    and its float differ), which keeps every true match. ``in`` becomes one
    ``IN (...)`` per table and chunk, so thousands of values work on both backends.
    """
    if op == "in":
        if any(isinstance(item, list) for item in operand):
            return None
        strings = sorted({item for item in operand if isinstance(item, str)})
        numbers = sorted({float(item) for item in operand if not isinstance(item, str)})
        queries = []
        for table, values in (("StringData", strings), ("ScalarData", numbers)):
            for chunk in chunks(values):
                queries.append((f'SELECT "id" FROM "{table}" WHERE "name" = ? AND "value" IN '
                                f'({marks(len(chunk))})', (key, *chunk)))
        return queries  # "in []" matches nothing
    if op == "==":
        if isinstance(operand, list):
            return None
        return _condition_sql(key, "in", [operand])
    if op not in ("<", "<=", ">", ">=") or isinstance(operand, (list, bool)):
        return None  # "!=" and lists: no index helps
    value: Union[str, float]
    if isinstance(operand, str):
        table, value, compare = "StringData", operand, op
    else:
        table, value, compare = "ScalarData", float(operand), op.rstrip("=") + "="
    return [(f'SELECT "id" FROM "{table}" WHERE "name" = ? AND "value" {compare} ?', (key, value))]


def latest_versions(datasets: Iterable[Dataset]) -> Dict[Tuple[str, str], int]:
    """(domain, entry type) -> its highest version among ``datasets``: what "latest" means."""
    top: Dict[Tuple[str, str], int] = {}
    for dataset in datasets:
        key = (dataset.ensemble.domain_name, dataset.entry_type)
        top[key] = max(top.get(key, dataset.version), dataset.version)
    return top


def keep_latest(records: List[FileRecord]) -> List[FileRecord]:
    """The records of the highest version among them, per domain and entry type."""
    top = latest_versions(record.dataset for record in records)
    return [r for r in records
            if r.dataset.version == top[(r.dataset.ensemble.domain_name, r.dataset.entry_type)]]


def entry_datasets(conn: Connection, kinds: StoreKinds, application_name: Optional[str],
                   domain_names: Optional[Iterable[str]],
                   entry_types: Optional[Iterable[str]] = None) -> List[Dataset]:
    """The datasets of these domains and entry types visible to the application."""
    return find_datasets(conn, kinds, find_ensembles(conn, kinds, application_name, domain_names),
                         entry_types)
