#!/usr/bin/env python3
"""Benchmark the store against a flat indexed table, on SQLite and MariaDB.

For each N and backend it times, in a fresh store: one add of N files in one
call; single-file adds (per call) when the store holds N files and when it
holds 1,000; a single-file add into a version that already holds N files;
versions; files of the latest version; all files; searches by metadata
equality and by range; removing N/2 files; and the peak memory (peak RSS of a
fresh subprocess). The same operations run on a reference flat table
``entries(id, application_name, domain_name, filename UNIQUE, entry_type,
version, metadata JSON)`` (stdlib sqlite3, or the same MariaDB server through
mysql-connector), and the table shows store / reference per operation.

The store's add includes its per-file checks (path resolution, the HDF5 check
and Kosh's fast sha, which read each file); the reference only writes rows.
The "of which per-file checks" row shows that share.

Run (the README's Performance section shows a result)::

    python scripts/benchmark.py --sizes 1000 10000 100000 --backends sqlite mariadb

Each (backend, N, implementation) runs in its own subprocess, so the memory
numbers are independent. HDF5 files are created once per run (tiny, with
h5py) and shared by all stores; ``--files-dir`` keeps them for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

# Benchmark the checkout this script belongs to, whatever else is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SINGLE_ADDS = 20      # single-file adds timed per store (each a new version)
APPENDS = 5           # single-file adds into the version holding N files
REPEATS = 5           # repetitions of each read (the median is reported)
BASELINE_N = 1000     # store size for the "single add at 1,000" comparison
DOMAIN = "EOS"
APPLICATION = "bench"

OPERATIONS: List[Tuple[str, str]] = [
    ("add", "add N files (one call)"),
    ("add_checks", "  of which per-file checks (path, HDF5, fast sha)"),
    ("single_add", "single-file add, store holds N (per call)"),
    ("single_add_1k", "single-file add, store holds 1,000 (per call)"),
    ("append", "single-file add into a version holding N"),
    ("append_1k", "single-file add into a version holding 1,000"),
    ("versions", f"versions ({SINGLE_ADDS} versions)"),
    ("latest", "files of the latest version (N files)"),
    ("all_files", "all files of the entry"),
    ("search_eq", "search metadata == (1 match)"),
    ("search_range", "search metadata range (4 matches)"),
    ("search_eq_all", "search metadata == (N matches)"),
    ("search_range_all", "search metadata range (N matches)"),
    ("remove", "remove N/2 files (one call)"),
]


# --------------------------------------------------------------------------- files
def _file_path(root: str, index: int) -> str:
    return os.path.join(root, f"d{index // 10000:03d}", f"f{index:07d}.h5")


def _make_files(args: Tuple[str, int, int]) -> int:
    import h5py
    import numpy as np
    root, start, stop = args
    made = 0
    for index in range(start, stop):
        path = _file_path(root, index)
        if os.path.exists(path):
            continue
        with h5py.File(path + ".tmp", "w") as handle:
            handle["inputs"] = np.full((4, 2), index, dtype="f4")
            handle["outputs"] = np.full((4, 1), index, dtype="f4")
        os.replace(path + ".tmp", path)
        made += 1
    return made


def make_files(root: str, count: int) -> Tuple[int, float]:
    """Create ``count`` tiny HDF5 files under ``root`` (existing ones are kept)."""
    from multiprocessing import Pool
    for folder in range(count // 10000 + 1):
        os.makedirs(os.path.join(root, f"d{folder:03d}"), exist_ok=True)
    step = 500
    jobs = [(root, start, min(start + step, count)) for start in range(0, count, step)]
    started = time.perf_counter()
    with Pool(os.cpu_count() or 1) as pool:
        made = sum(pool.imap_unordered(_make_files, jobs))
    return made, time.perf_counter() - started


# --------------------------------------------------------------------------- timing
def _timed(function: Callable[[], Any]) -> Tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def _median(function: Callable[[], Any], repeats: int = REPEATS) -> Tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        result = None  # one result alive at a time (peak memory)
        elapsed, result = _timed(function)
        times.append(elapsed)
    return statistics.median(times), result


# --------------------------------------------------------------------------- databases
def _mariadb_params(url: str) -> Dict[str, Any]:
    parts = urlsplit(url)
    return {"user": unquote(parts.username or "root"), "password": unquote(parts.password or ""),
            "host": parts.hostname or "127.0.0.1", "port": parts.port or 3306}


def _mariadb_connect(url: str, database: Optional[str] = None):
    import mysql.connector
    params = _mariadb_params(url)
    if database:
        params["database"] = database
    return mysql.connector.connect(use_pure=True, charset="utf8mb4", autocommit=True,
                                   **params)


@contextmanager
def throwaway_database(url: str) -> Iterator[str]:
    """A fresh MariaDB database, dropped afterwards; yields its name."""
    name = f"ams_bench_{uuid.uuid4().hex[:10]}"
    conn = _mariadb_connect(url)
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                              "COLLATE utf8mb4_bin")
    finally:
        conn.close()
    try:
        yield name
    finally:
        conn = _mariadb_connect(url)
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@contextmanager
def packet_room(url: str, n: int, path_length: int, notes: List[str]) -> Iterator[None]:
    """Let the server take a version of ``n`` files, restoring its setting afterwards.

    Kosh keeps a dataset's file list in one record (~2 x path + 120 bytes per
    file): past ~80,000 files it exceeds MariaDB's default 16 MiB
    max_allowed_packet and the store refuses the add. For the benchmark's big
    N the global limit is raised for the run (new connections see it).
    """
    needed = n * (2 * path_length + 160) + 2**20
    conn = _mariadb_connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT @@GLOBAL.max_allowed_packet")
        old = int(cursor.fetchall()[0][0])
        if old >= needed:
            yield
            return
        new = min(2**30, max(needed * 2, 64 * 2**20))
        cursor.execute(f"SET GLOBAL max_allowed_packet = {new}")
        notes.append(f"MariaDB max_allowed_packet raised from {old // 2**20} MiB to "
                     f"{new // 2**20} MiB for N = {n:,} (restored afterwards): that version's "
                     f"Kosh record is ~{needed / 2**20:.0f} MB.")
        try:
            yield
        finally:
            cursor.execute(f"SET GLOBAL max_allowed_packet = {old}")
    finally:
        conn.close()


def _store_url(backend: str, workdir: str, mariadb_url: str, database: Optional[str],
               label: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(workdir, label + '.db')}"
    parts = urlsplit(mariadb_url)
    return f"mariadb://{parts.netloc}/{database}"


# --------------------------------------------------------------------------- the store
class StoreBench:
    """The operations on :class:`ams.AMSDataStore`."""

    def __init__(self, url: str):
        from ams import AMSDataStore
        self.store = AMSDataStore(APPLICATION, url).open()

    def close(self) -> None:
        self.store.close()

    def add(self, paths: Sequence[str], metadata: Dict[str, Any], version: Optional[int] = None,
            entry: str = "data") -> int:
        add = self.store.add_data if entry == "data" else self.store.add_candidates
        return add(DOMAIN, list(paths), version=version, metadata=metadata)

    def versions(self, entry: str) -> List[int]:
        return self.store.get_candidate_versions(DOMAIN) if entry == "candidates" \
            else self.store.get_data_versions(DOMAIN)

    def files(self, entry: str, versions: Any) -> List[str]:
        return self.store.get_files(DOMAIN, entry, versions)

    def search(self, metadata: Dict[str, Any]) -> List[Dict[str, Any]]:
        return self.store.search(DOMAIN, None, None, metadata)

    def remove(self, paths: Sequence[str]) -> int:
        return len(self.store.remove_data(DOMAIN, list(paths), purge=False).removed)


def per_file_checks(paths: Sequence[str]) -> float:
    """Time the facade's per-file work of an add (what the reference does not do)."""
    from ams import _validate
    from ams.store import AMSDataStore
    started = time.perf_counter()
    resolved = _validate.path_list(list(paths), "files")
    for path in resolved:
        AMSDataStore._new_file(path, "data", {"cycle": 0})
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the reference
class ReferenceBench:
    """The same operations on one flat indexed table (the speed to aim for)."""

    def __init__(self, backend: str, path: str, mariadb_url: str, database: Optional[str]):
        self.backend = backend
        if backend == "sqlite":
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.param = "?"
            key = "TEXT"
        else:
            self.conn = _mariadb_connect(mariadb_url, database)
            self.param = "%s"
            key = "VARCHAR(1500)"
        cursor = self.conn.cursor()
        cursor.execute(
            "CREATE TABLE entries (id INTEGER PRIMARY KEY "
            + ("AUTOINCREMENT" if backend == "sqlite" else "AUTO_INCREMENT")
            + ", application_name VARCHAR(255) NOT NULL, domain_name VARCHAR(255) NOT NULL, "
            f"filename {key} NOT NULL UNIQUE, entry_type VARCHAR(32) NOT NULL, "
            "version INTEGER NOT NULL, metadata JSON NOT NULL)")
        cursor.execute("CREATE INDEX entries_version ON entries "
                       "(application_name, domain_name, entry_type, version)")

    def close(self) -> None:
        self.conn.close()

    def _sql(self, text: str) -> str:
        return text.replace("?", self.param)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        cursor = self.conn.cursor()
        if self.backend == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        else:
            cursor.execute("START TRANSACTION")
            cursor.execute("SELECT GET_LOCK('ams_reference', 60)")
            cursor.fetchall()
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")
        finally:
            if self.backend != "sqlite":
                cursor.execute("SELECT RELEASE_LOCK('ams_reference')")
                cursor.fetchall()

    def add(self, paths: Sequence[str], metadata: Dict[str, Any], version: Optional[int] = None,
            entry: str = "data") -> int:
        with self._write() as cursor:
            if version is None:
                cursor.execute(self._sql("SELECT MAX(version) FROM entries WHERE "
                                         "application_name = ? AND domain_name = ? AND "
                                         "entry_type = ?"), (APPLICATION, DOMAIN, entry))
                top = cursor.fetchall()[0][0]
                version = 1 if top is None else top + 1
            text = json.dumps(dict(metadata, date=str(datetime.now())))
            rows = [(APPLICATION, DOMAIN, os.path.realpath(path), entry, version, text)
                    for path in paths]
            sql = self._sql("INSERT INTO entries (application_name, domain_name, filename, "
                            "entry_type, version, metadata) VALUES (?, ?, ?, ?, ?, ?)")
            for start in range(0, len(rows), 2000):
                cursor.executemany(sql, rows[start:start + 2000])
        return version

    def versions(self, entry: str) -> List[int]:
        cursor = self.conn.cursor()
        cursor.execute(self._sql("SELECT DISTINCT version FROM entries WHERE application_name = ?"
                                 " AND domain_name = ? AND entry_type = ? ORDER BY version"),
                       (APPLICATION, DOMAIN, entry))
        return [row[0] for row in cursor.fetchall()]

    def files(self, entry: str, versions: Any) -> List[str]:
        cursor = self.conn.cursor()
        where = "application_name = ? AND domain_name = ? AND entry_type = ?"
        args: Tuple[Any, ...] = (APPLICATION, DOMAIN, entry)
        if versions == "latest":
            cursor.execute(self._sql(f"SELECT filename FROM entries WHERE {where} AND version = "
                                     f"(SELECT MAX(version) FROM entries WHERE {where}) "
                                     "ORDER BY filename"), args + args)
        else:
            cursor.execute(self._sql(f"SELECT filename FROM entries WHERE {where} "
                                     "ORDER BY version, filename"), args)
        return [row[0] for row in cursor.fetchall()]

    def search(self, metadata: Dict[str, Any]) -> List[Dict[str, Any]]:
        clauses, args = ["application_name = ?", "domain_name = ?"], [APPLICATION, DOMAIN]
        ops = {"==": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
        for key, wanted in metadata.items():
            op, value = next(iter(wanted.items())) if isinstance(wanted, dict) else ("==", wanted)
            if self.backend == "sqlite":
                field = f"json_extract(metadata, '$.{key}')"
            elif isinstance(value, str):
                field = f"JSON_VALUE(metadata, '$.{key}')"
            else:
                field = f"CAST(JSON_VALUE(metadata, '$.{key}') AS DOUBLE)"
            clauses.append(f"{field} {ops[op]} ?")
            args.append(value)
        cursor = self.conn.cursor()
        cursor.execute(self._sql("SELECT id, application_name, domain_name, filename, entry_type,"
                                 " version, metadata FROM entries WHERE "
                                 + " AND ".join(clauses)
                                 + " ORDER BY domain_name, entry_type, version, filename"), args)
        return [{"id": str(row[0]), "application_name": row[1], "domain_name": row[2],
                 "filename": row[3], "entry_type": row[4], "version": row[5],
                 "metadata": json.loads(row[6])} for row in cursor.fetchall()]

    def remove(self, paths: Sequence[str]) -> int:
        """By the filename index (the planners would rather scan the entry's rows)."""
        removed = 0
        resolved = [os.path.realpath(path) for path in paths]
        with self._write() as cursor:
            for start in range(0, len(resolved), 500):
                chunk = resolved[start:start + 500]
                marks = ", ".join([self.param] * len(chunk))
                cursor.execute(f"SELECT id, application_name, domain_name, entry_type FROM "
                               f"entries WHERE filename IN ({marks})", chunk)
                ids = [row[0] for row in cursor.fetchall()
                       if tuple(row[1:]) == (APPLICATION, DOMAIN, "data")]
                if ids:
                    cursor.execute(f"DELETE FROM entries WHERE id IN "
                                   f"({', '.join([self.param] * len(ids))})", ids)
                removed += len(ids)
        return removed


# --------------------------------------------------------------------------- one run
def _single_adds(bench: Any, extras: Sequence[str]) -> Tuple[float, float, List[float]]:
    """SINGLE_ADDS new-version adds into candidates, then APPENDS adds into data version 1."""
    singles = []
    for index, path in enumerate(extras[:SINGLE_ADDS]):
        metadata = {"cycle": index + 1, "batch": "single", "loss": index / SINGLE_ADDS}
        singles.append(_timed(lambda: bench.add([path], metadata, entry="candidates"))[0])
    appends = []
    for path in extras[SINGLE_ADDS:SINGLE_ADDS + APPENDS]:
        appends.append(_timed(lambda: bench.add([path], {"cycle": 0, "batch": "append"},
                                                version=1))[0])
    return statistics.median(singles), statistics.median(appends), singles


def run_operations(make: Callable[[str], Any], files_root: str, n: int,
                   checks: bool) -> Dict[str, Any]:
    """All timed operations on one implementation; ``make(label)`` opens a fresh one."""
    paths = [_file_path(files_root, index) for index in range(n)]
    extras = [_file_path(files_root, index) for index in
              range(n, n + SINGLE_ADDS + APPENDS)]
    times: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    bench = make("store")
    try:
        bulk = {"cycle": 0, "batch": "bulk", "loss": 0.5}
        times["add"], version = _timed(lambda: bench.add(paths, bulk))
        assert version == 1, version
        times["single_add"], times["append"], _ = _single_adds(bench, extras)
        reads: List[Tuple[str, Callable[[], Any]]] = [
            ("versions", lambda: bench.versions("candidates")),
            ("latest", lambda: bench.files("data", "latest")),
            ("all_files", lambda: bench.files("data", None))]
        for key, query in (("search_eq", {"cycle": 7}),
                           ("search_range", {"loss": {"<": 0.2}}),
                           ("search_eq_all", {"batch": "bulk"}),
                           ("search_range_all", {"cycle": {"<": 1}, "batch": "bulk"})):
            reads.append((key, lambda query=query: bench.search(query)))
        for key, read in reads:
            times[key], result = _median(read)
            counts[key] = len(result)
            result = None  # one result alive at a time (peak memory)
        times["remove"], counts["remove"] = _timed(lambda: bench.remove(paths[: n // 2]))
    finally:
        bench.close()
    if n == BASELINE_N:
        times["single_add_1k"], times["append_1k"] = times["single_add"], times["append"]
    else:
        small = make("baseline")
        try:
            small.add([_file_path(files_root, index) for index in range(BASELINE_N)],
                      {"cycle": 0, "batch": "bulk", "loss": 0.5})
            times["single_add_1k"], times["append_1k"], _ = _single_adds(
                small, [_file_path(files_root, index) for index in
                        range(n, n + SINGLE_ADDS + APPENDS)])
        finally:
            small.close()
    if checks:
        times["add_checks"] = per_file_checks(paths)
    return {"times": times, "counts": counts,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    """One (backend, N, implementation) in this process; returns the measurements."""
    workdir = tempfile.mkdtemp(prefix="ams-bench-")
    databases: List[Any] = []

    def make(label: str) -> Any:
        database = None
        if args.backend == "mariadb":
            manager = throwaway_database(args.mariadb_url)
            database = manager.__enter__()
            databases.append(manager)
        if args.impl == "store":
            return StoreBench(_store_url(args.backend, workdir, args.mariadb_url, database,
                                         label))
        return ReferenceBench(args.backend, os.path.join(workdir, label + ".db"),
                              args.mariadb_url, database)

    try:
        return run_operations(make, args.files_dir, args.n, checks=args.impl == "store")
    finally:
        for manager in databases:
            manager.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- report
def _format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def table(backend: str, n: int, store: Dict[str, Any], reference: Dict[str, Any]) -> str:
    lines = [f"### {backend}, N = {n:,}", "",
             "| operation | store | reference | store / reference |",
             "|---|---:|---:|---:|"]
    for key, label in OPERATIONS:
        mine = store["times"].get(key)
        theirs = reference["times"].get(key)
        ratio = f"{mine / theirs:.1f}x" if mine is not None and theirs else "-"
        lines.append(f"| {label} | {_format_seconds(mine)} | {_format_seconds(theirs)} | "
                     f"{ratio} |")
    lines.append(f"| peak memory (RSS of the process) | {store['peak_rss_mb']:.0f} MB | "
                 f"{reference['peak_rss_mb']:.0f} MB | "
                 f"{store['peak_rss_mb'] / reference['peak_rss_mb']:.1f}x |")
    if store["counts"] != reference["counts"]:
        lines.append("")
        lines.append(f"WARNING: result sizes differ: store {store['counts']}, "
                     f"reference {reference['counts']}")
    return "\n".join(lines)


def _run_worker(args: argparse.Namespace, backend: str, n: int, impl: str) -> Dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    try:
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--backend", backend,
                   "--n", str(n), "--impl", impl, "--files-dir", args.files_dir,
                   "--mariadb-url", args.mariadb_url, "--json", out]
        subprocess.run(command, check=True)
        with open(out) as handle:
            return json.load(handle)
    finally:
        os.remove(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "mariadb"],
                        choices=["sqlite", "mariadb"])
    parser.add_argument("--out", default="benchmark-results.md",
                        help="markdown file to write the tables to")
    parser.add_argument("--mariadb-url", default="mariadb://root:@127.0.0.1:3306/",
                        help="server to use (a throwaway database is created and dropped)")
    parser.add_argument("--files-dir", default=None,
                        help="folder for the HDF5 files, kept for the next run "
                             "(default: a temporary folder, removed at the end)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["store", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(args)
        with open(args.json, "w") as handle:
            json.dump(result, handle)
        return 0

    temporary = args.files_dir is None
    if temporary:
        args.files_dir = tempfile.mkdtemp(prefix="ams-bench-files-")
    args.files_dir = os.path.abspath(args.files_dir)
    try:
        count = max(max(args.sizes), BASELINE_N) + SINGLE_ADDS + APPENDS
        made, elapsed = make_files(args.files_dir, count)
        header = [
            "# ams-store benchmark", "",
            f"{time.strftime('%Y-%m-%d %H:%M')}, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs. Times are medians of {REPEATS} runs for reads, of "
            f"{SINGLE_ADDS} calls for single-file adds, of {APPENDS} for adds into the big "
            "version; one run for the bulk add and the remove.", "",
            f"HDF5 files: {made:,} created with h5py in {elapsed:.1f} s "
            f"({count - made:,} reused), not part of any timing below.", "",
            "The store's add includes its per-file checks (path resolution, HDF5 check, "
            "Kosh's fast sha: each file is read); the reference only inserts rows.",
            "Peak memory is the peak RSS of the subprocess that ran all the operations "
            "(interpreter and libraries included).", ""]
        print("\n".join(header), flush=True)
        sections: List[str] = []
        notes: List[str] = []
        for backend in args.backends:
            for n in args.sizes:
                with contextlib.ExitStack() as stack:
                    if backend == "mariadb":
                        stack.enter_context(packet_room(args.mariadb_url, n,
                                                        len(_file_path(args.files_dir, n)), notes))
                    store = _run_worker(args, backend, n, "store")
                    reference = _run_worker(args, backend, n, "reference")
                section = table(backend, n, store, reference)
                print(section + "\n", flush=True)
                sections.append(section)
        for note in notes:
            print(note)
        with open(args.out, "w") as handle:
            handle.write("\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
            if notes:
                handle.write("\n" + "\n\n".join(notes) + "\n")
        print(f"written to {args.out}")
    finally:
        if temporary:
            shutil.rmtree(args.files_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
