"""The fast paths keep the store's behaviour: the HDF5 check, Kosh's fast sha,
path resolution, search narrowed in SQL, the files of chosen versions, and
MariaDB's record-size limit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ams import _match, _validate
from ams.errors import BackendError, WrongFileFormatError
from ams.files import fast_sha
from ams.formats import hdf5_problem

from conftest import h5py_opens, rejected


# ------------------------------------------------------------------ the HDF5 check
def _h5(path, **kwargs) -> str:
    import h5py
    import numpy as np
    with h5py.File(path, "w", **kwargs) as handle:
        handle["inputs"] = np.arange(40.0).reshape(20, 2)
    return str(path)


def _variant(src: str, path, transform) -> str:
    with open(src, "rb") as handle:
        data = bytearray(handle.read())
    with open(path, "wb") as handle:
        handle.write(transform(data))
    return str(path)


def _flip(offset: int):
    def flip(data: bytearray) -> bytes:
        data[offset] ^= 0xFF
        return bytes(data)
    return flip


def test_hdf5_check_agrees_with_h5py(tmp_path):
    """On good, truncated, corrupted, foreign and still-being-written files, the
    HDF5 check rejects exactly what h5py.File(path, "r") cannot open."""
    plain = _h5(tmp_path / "plain.h5")
    latest = _h5(tmp_path / "latest.h5", libver="latest")
    files = {
        "plain": plain, "latest": latest,
        "user block": _h5(tmp_path / "ub.h5", userblock_size=512),
        "bytes appended": _variant(plain, tmp_path / "longer.h5", lambda d: bytes(d) + b"\0" * 999),
        "moved by 1024": _variant(plain, tmp_path / "jam.h5", lambda d: b"J" * 1024 + bytes(d)),
        "moved by 100": _variant(plain, tmp_path / "jam100.h5", lambda d: b"J" * 100 + bytes(d)),
        "empty": _variant(plain, tmp_path / "empty.h5", lambda d: b""),
        "text": _variant(plain, tmp_path / "text.h5", lambda d: b"not hdf5\n" * 300),
        "signature only": _variant(plain, tmp_path / "sig.h5", lambda d: bytes(d[:8]) + b"\xff" * 3000),
    }
    for name, src in (("plain", plain), ("latest", latest)):
        size = os.path.getsize(src)
        for cut in (size - 1, size // 2, 100, 40):
            files[f"{name} cut to {cut}"] = _variant(src, tmp_path / f"{name}_{cut}.h5",
                                                     lambda d, cut=cut: bytes(d[:cut]))
        for offset in (9, 13, 20, 30, 40):
            files[f"{name} byte {offset} flipped"] = _variant(src, tmp_path / f"{name}_f{offset}.h5",
                                                              _flip(offset))
    crashed = tmp_path / "crashed.h5"
    subprocess.run([sys.executable, "-c", (
        "import h5py, numpy, os\n"
        f"h = h5py.File({str(crashed)!r}, 'w', libver='latest'); h['x'] = numpy.zeros(9); h.flush()\n"
        "os._exit(0)")], check=True)
    files["writer crashed"] = str(crashed)
    writing = tmp_path / "writing.h5"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import h5py, numpy, sys, time\n"
        f"h = h5py.File({str(writing)!r}, 'w'); h['x'] = numpy.zeros(9); h.flush()\n"
        "print('ready', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        files["being written"] = str(writing)
        verdicts = {name: (hdf5_problem(path) is None, h5py_opens(path))
                    for name, path in files.items()}
    finally:
        writer.communicate("")
    assert {name for name, (mine, h5py_says) in verdicts.items() if mine != h5py_says} == set()
    assert {name for name, (ok, _) in verdicts.items() if ok} == {
        "plain", "latest", "user block", "bytes appended", "moved by 1024"}


def test_a_truncated_hdf5_file_is_rejected(store, make_h5, unchanged, tmp_path):
    good = make_h5()
    cut = _variant(make_h5(), tmp_path / "files" / "cut.h5", lambda d: bytes(d[:-1]))
    guard = unchanged()
    error = rejected(guard, WrongFileFormatError, ValueError, "truncated",
                     store.add_data, "EOS", [good, cut])
    assert cut in str(error)


# ------------------------------------------------------------------ Kosh's fast sha
@pytest.mark.parametrize("size", [0, 1, 2047, 2048, 2049, 2059, 4096, 65536, 65537, 300_001])
def test_fast_sha_is_kosh_s(tmp_path, size):
    from kosh.utils import compute_fast_sha
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(size))
    assert fast_sha(str(path)) == compute_fast_sha(str(path))
    missing = str(tmp_path / "missing.h5")
    assert fast_sha(missing) == compute_fast_sha(missing)


# ------------------------------------------------------------------ path resolution
def test_paths_resolve_like_realpath(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.h5").write_bytes(b"x")
    os.symlink("a/b", tmp_path / "dir_link")
    os.symlink("b/f.h5", tmp_path / "a" / "file_link")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    names = ["a/b/f.h5", "dir_link/f.h5", "a/file_link", "dir_link/../x.h5", "missing/x.h5",
             "x.h5", "dir_link/", "loop1/x", "./a/./b/f.h5", "a//b//f.h5", "a/b/f.h5/..",
             str(tmp_path / "dir_link" / "f.h5"), "dir_link/missing/../f.h5"]
    assert _validate.path_list(names, "files") == [os.path.realpath(name) for name in names]


# ------------------------------------------------------------------ search narrowed in SQL
_BIG = 2**60


def test_search_matches_a_plain_python_filter(store, make_h5):
    """Searches that SQL narrows return exactly what matching every entry in Python returns."""
    values = [
        {"n": 3, "x": 0.5, "s": "b", "flag": True, "tags": ["a", "b"]},
        {"n": 3.0, "x": 1e-300, "s": "B", "flag": False},
        {"n": 1, "x": -0.0, "s": "ä", "flag": 1},
        {"n": _BIG + 1, "x": 2.5, "s": "", "tags": [1, 2]},
        {"n": _BIG, "s": "b ", "flag": 0},
        {"n": True, "x": 7, "s": "a'\"\\%s?"},
        {"other": "b"},
    ]
    for version, metadata in enumerate(values, start=1):
        store.add_data("EOS", [make_h5()], version=version, metadata=metadata)
    store.add_candidates("EOS", [make_h5()], metadata={"n": 3, "s": "b"})
    everything = store.find()
    assert len(everything) == len(values) + 1
    queries = [
        {"n": 3}, {"n": 3.0}, {"n": True}, {"n": 1}, {"n": _BIG}, {"n": _BIG + 1},
        {"n": {">": _BIG}}, {"n": {">=": _BIG + 1}}, {"n": {"<": _BIG + 1}}, {"n": {"<=": 1}},
        {"x": {"<": 0}}, {"x": {"<=": 0.0}}, {"x": {">": 1e-301}}, {"x": 7},
        {"s": "b"}, {"s": "B"}, {"s": ""}, {"s": {"<": "b"}}, {"s": {">=": "b"}},
        {"s": {">": "a"}}, {"s": "a'\"\\%s?"}, {"s": {"in": ["b", "ä", 3]}}, {"n": {"in": [1, _BIG]}},
        {"n": {"in": []}}, {"s": {"!=": "b"}}, {"flag": False}, {"flag": 0}, {"flag": {"in": [True, 0]}},
        {"tags": ["a", "b"]}, {"tags": {"in": [[1, 2]]}}, {"n": 3, "s": "b"}, {"n": 3, "s": "B"},
        {"missing": 1}, {"n": {">": 0, "<": 2}},
    ]
    for query in queries:
        match = _match.compile_conditions(query)
        expected = sorted(e["filename"] for e in everything if match(e["metadata"]))
        for entry in (None, "data"):
            got = sorted(e["filename"] for e in store.search("EOS", entry, None, query))
            wanted = expected if entry is None else sorted(
                e["filename"] for e in everything
                if match(e["metadata"]) and e["entry_type"] == "data")
            assert got == wanted, (query, entry)
    latest = store.search("EOS", "data", "latest", {"n": {"in": [3, _BIG]}})
    assert [e["version"] for e in latest] == [5]


def test_find_by_filename_among_many(store, make_h5):
    files = [make_h5() for _ in range(30)]
    store.add_data("EOS", files[:20])
    store.add_data("EOS", files[20:])
    assert [e["filename"] for e in store.find(filename=files[25])] == [files[25]]
    assert [e["version"] for e in store.find("EOS", files[3], "data")] == [1]
    report = store.remove_data("EOS", files[5:25], purge=False)
    assert sorted(report.removed) == sorted(files[5:25])
    assert store.get_data_files("EOS") == sorted(files[:5]) + sorted(files[25:])


# ------------------------------------------------------------------ files of chosen versions
def test_files_of_chosen_versions(store, make_h5):
    one, two, three = [make_h5() for _ in range(2)], [make_h5()], [make_h5() for _ in range(3)]
    for version, files in ((1, one), (2, two), (7, three)):
        store.add_data("EOS", files, version=version)
    assert store.get_data_files("EOS", "latest") == sorted(three)
    assert store.get_data_files("EOS", [7, 1]) == sorted(one) + sorted(three)
    assert store.get_data_files("EOS", 2) == two
    assert store.get_data_files("EOS", [3]) == []
    assert store.get_data_files("EOS") == sorted(one) + two + sorted(three)
    assert store.get_data_versions("EOS", associate_files=True) == {
        1: sorted(one), 2: two, 7: sorted(three)}


# ------------------------------------------------------------------ MariaDB's record size
def test_a_dataset_record_over_max_allowed_packet_is_refused(store, backend, make_h5, unchanged):
    """Kosh keeps a version's file list in one record; MariaDB refuses statements
    over max_allowed_packet (16 MiB by default, ~10^5 files). The store says so
    before writing; here the server's limit is lowered for this store object."""
    if backend != "mariadb":
        pytest.skip("SQLite has no packet limit")
    first = [make_h5() for _ in range(3)]
    store.add_data("EOS", first)
    more = [make_h5() for _ in range(20)]
    per_file = 2 * len(more[0]) + 120          # what one file adds to the record, roughly
    store._catalog._context.max_packet = 10 * per_file  # as if the server allowed statements this long
    guard = unchanged()
    rejected(guard, BackendError, RuntimeError, "spread the files over several versions",
             store.add_data, "EOS", more)            # refused before anything is written
    rejected(guard, BackendError, RuntimeError, "max_allowed_packet",
             store.add_data, "EOS", more[:8], version=1)   # 11 files: the record is too big
    assert store.add_data("EOS", more[:1]) == 2
    assert store.get_data_files("EOS", "latest") == more[:1]
