"""Kosh's record layout: the only code that knows the JSON Kosh and Sina store.

A Kosh store is Sina records: one ``kosh_ensemble`` per domain, one ``dataset``
per entry and version (its file list inside its raw JSON), one ``file`` record
per registered path; each record's values are also spread over Sina's data
tables (:func:`record_rows`). This module builds and parses those records and
Kosh's bootstrap records (store info, users); it runs no SQL.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from numbers import Real
from typing import Any, Dict, List, Optional, Set

from sina import sjson

from ..keys import KOSH_FILE_FIELDS
from .sql import DOCUMENT, RECORD, SCALAR, SCALAR_LIST, STRING, STRING_LIST_ENTRY, STRING_LIST_MASTER, Rows
from .transactions import STORE_INFO_ID

# Ensemble attributes a member dataset does not inherit (Kosh's __ok_duplicates__).
NOT_INHERITED = frozenset({"creator", "id", "name", "creation_date", "last_modified_date"})


def now_string() -> str:
    """Kosh's and the original store's date format: ``str(datetime.now())``."""
    return str(datetime.now())


# --------------------------------------------------------------------------- records
def new_raw(record_id: str, record_type: str) -> Dict[str, Any]:
    """An empty Sina record in the key order Sina writes."""
    return {"id": record_id, "type": record_type, "data": {}, "curve_sets": {},
            "library_data": {}, "files": {}, "user_defined": {"kosh_information": {}}}


def record_rows(raw: Dict[str, Any]) -> Rows:
    """The table rows Sina's ``create_sql_record`` makes for ``raw`` (curves aside)."""
    record_id = raw["id"]
    rows: Rows = defaultdict(list)  # type: ignore[assignment]
    rows[RECORD].append({"id": record_id, "type": raw["type"], "raw": sjson.dumps(raw)})
    for name, datum in raw.get("data", {}).items():
        value = datum["value"]
        tags = sjson.dumps(datum["tags"]).decode() if "tags" in datum else None
        kind = type(value)  # exact-type fast paths first: ABC checks cost ~1 us each
        if kind is str:
            rows[STRING].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
        elif kind is float or kind is int or kind is bool:
            rows[SCALAR].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
        elif isinstance(value, list):
            if not value:
                continue
            if isinstance(value[0], Real):
                rows[SCALAR_LIST].append({"id": record_id, "name": name, "min": min(value),
                                           "max": max(value), "units": datum.get("units"),
                                           "tags": tags})
            else:
                rows[STRING_LIST_MASTER].append({"id": record_id, "name": name,
                                                  "units": datum.get("units"), "tags": tags})
                rows[STRING_LIST_ENTRY].extend(
                    {"id": record_id, "name": name, "index": index, "value": item}
                    for index, item in enumerate(value))
        elif isinstance(value, Real):
            rows[SCALAR].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
        elif isinstance(value, str):
            rows[STRING].append({"id": record_id, "name": name, "value": value,
                                  "units": datum.get("units"), "tags": tags})
    for uri, info in raw.get("files", {}).items():
        tags = sjson.dumps(info["tags"]).decode() if "tags" in info else None
        rows[DOCUMENT].append({"id": record_id, "uri": uri, "mimetype": info.get("mimetype"),
                                "tags": tags})
    return rows


def new_ids(count: int) -> List[str]:
    """``count`` fresh record ids, increasing within the call: UUIDv7 hex (RFC 9562).

    Kosh makes random ``uuid4().hex`` ids; any unique string works, and these
    have the same form. Ordered by time, they put new records at the end of
    every primary key (Sina's keys all start with the record id) instead of at
    random places: adding 10^5 records touches far fewer index pages (above
    all in InnoDB, whose tables are stored in primary-key order).
    """
    millis = time.time_ns() // 1_000_000
    start = random.SystemRandom().getrandbits(74) % (2**74 - count)  # 74 random bits
    out = []
    for offset in range(count):
        bits = start + offset
        value = ((millis << 80) | (0x7 << 76) | ((bits >> 62) << 64) | (0b10 << 62)
                 | (bits & (2**62 - 1)))
        out.append(f"{value:032x}")
    return out


# --------------------------------------------------------------------------- results
@dataclass
class Ensemble:
    id: str
    domain_name: str
    application_name: Optional[str]
    raw: Dict[str, Any]


@dataclass
class Dataset:
    id: str
    ensemble: Ensemble
    entry_type: str
    version: int


class FileRecord:
    """One Kosh ``file`` record, as associated with one dataset.

    Parsed once when read, keeping its path, metadata and checksum; the whole
    raw JSON (needed only to rewrite the record) is parsed again from the
    stored text on each use of :attr:`raw`. Reading 10^5 records then holds
    ~1 KB per record instead of ~5 KB of parsed JSON.
    """

    __slots__ = ("id", "path", "dataset", "metadata", "fast_sha", "associated", "_text")

    def __init__(self, record_id: str, dataset: Dataset, text: Any, keep_raw: bool = True) -> None:
        data = sjson.loads(text)["data"]
        self.id = record_id
        self.path: str = data["uri"]["value"]
        self.dataset = dataset
        self.metadata: Dict[str, Any] = {key: datum["value"] for key, datum in data.items()
                                         if key not in KOSH_FILE_FIELDS}
        sha = data["fast_sha"]["value"] if "fast_sha" in data else None
        #: Kosh's checksum of the file when it was registered (None if Kosh stored none).
        self.fast_sha: Optional[str] = sha if isinstance(sha, str) else None
        #: Ids of every dataset the record is associated with (Kosh's ``associated``).
        self.associated: List[str] = data["associated"]["value"] if "associated" in data else []
        self._text = text if keep_raw else None

    @property
    def raw(self) -> Dict[str, Any]:
        """The record's raw JSON, freshly parsed (a new dict on every access)."""
        if self._text is None:
            raise AttributeError(f"file record {self.id} was read without its raw JSON")
        return sjson.loads(self._text)

    def __repr__(self) -> str:
        return f"FileRecord(id={self.id!r}, path={self.path!r}, dataset={self.dataset.id!r})"


@dataclass
class NewFile:
    """A file to register: absolute path, metadata (already checked), Kosh's fast sha, size."""

    path: str
    metadata: Dict[str, Any]
    fast_sha: str
    size: Optional[int] = None  #: bytes on disk (None: not known yet)


@dataclass
class MemberDataset:
    """A dataset of an ensemble as stored, before its name and version are checked."""

    id: str
    ensemble: Ensemble
    name: Any
    version: Any



def username() -> str:
    return os.environ.get("USER", "default")


def user_id(username: str) -> str:
    return hashlib.md5(username.encode()).hexdigest()


def bootstrap_records(usernames: List[str]) -> Dict[str, Dict[str, Any]]:
    """Kosh's store-info and user records (id -> raw), as ``kosh.connect`` makes them.

    Made by Kosh's own functions in a private in-memory Sina store, so nothing
    touches the real store until the caller copies them in one transaction.
    """
    import sina
    from kosh.utils import create_kosh_users, update_store_and_get_info_record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datastore = sina.connect()  # in-memory SQLite
        try:
            update_store_and_get_info_record(datastore.records)
            create_kosh_users(datastore.records, users=usernames)
            ids = [STORE_INFO_ID] + [user_id(name) for name in usernames]
            return {record.id: record.raw for record in datastore.records.get(ids)}
        finally:
            datastore.close()



@dataclass
class StoreKinds:
    """The record types and predicate a store uses (from its store-info record) and our creator id."""

    file: str = "file"
    ensemble: str = "kosh_ensemble"
    dataset: str = "dataset"
    predicate: str = "is a member of ensemble"
    creator: str = "anonymous"

    @classmethod
    def from_store_info(cls, store_info_raw: Any, known_users: Set[str]) -> "StoreKinds":
        """Read the types a Kosh store-info record names; the creator as Kosh picks it."""
        kinds = cls()
        data = sjson.loads(store_info_raw)["data"]
        for attribute, name in (("file", "sources_type"), ("ensemble", "ensembles_type"),
                                ("predicate", "ensemble_predicate")):
            if name in data:
                setattr(kinds, attribute, data[name]["value"])
        me = user_id(username())
        kinds.creator = me if me in known_users else "anonymous"
        return kinds


def as_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, Real) else None  # type: ignore[call-overload]  # a Real converts at run time
