"""ams.formats: the HDF5 verdict is h5py's, the TorchScript verdict torch.jit.save's layout.

The HDF5 check must refuse exactly the files ``h5py.File(path, "r")`` cannot
open: on a seeded corpus of damaged files, on files writers hold open or left
behind, and on paths that are not regular files. It never raises.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from ams import formats
from ams.errors import WrongFileFormatError
from ams.formats import check_file_format, hdf5_problem, torchscript_problem

from conftest import h5py_opens


def _write_h5(path: Path, **kwargs) -> bytes:
    """A small but not trivial file: datasets (one chunked), a group, attributes."""
    with h5py.File(path, "w", **kwargs) as handle:
        handle["inputs"] = np.arange(40.0).reshape(20, 2)
        handle.create_dataset("outputs", data=np.arange(30.0), chunks=(10,), maxshape=(None,))
        group = handle.create_group("meta")
        group.attrs["code"] = "EOS"
        group["step"] = np.int64(7)
    return path.read_bytes()


def _write_one_dataset(path: Path, **kwargs) -> bytes:
    """The file of the issue: byte 71 set to 0x80 made the old hand parser overflow."""
    with h5py.File(path, "w", **kwargs) as handle:
        handle["inputs"] = np.arange(40.0).reshape(20, 2)
    return path.read_bytes()


# ------------------------------------------------------------------ the mutated corpus
# name -> (writer, h5py.File keyword arguments, where the superblock starts)
_BASES = {
    "one dataset": (_write_one_dataset, {}, 0),
    "plain": (_write_h5, {}, 0),
    "latest": (_write_h5, {"libver": "latest"}, 0),
    "v110": (_write_h5, {"libver": "v110"}, 0),
    "user block 512": (_write_h5, {"userblock_size": 512}, 512),
    "latest, user block 1024": (_write_h5, {"libver": "latest", "userblock_size": 1024}, 1024),
}


def _mutations(data: bytes, superblock: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Seeded damage of one good file: bytes set anywhere and in the superblock,
    bits flipped in the superblock, truncations, bytes appended, junk in front."""
    size = len(data)

    def setting(offsets: list[int]) -> bytes:
        damaged = bytearray(data)
        for offset in offsets:
            damaged[offset] = rng.randrange(256)
        return bytes(damaged)

    for _ in range(120):
        offset = rng.randrange(size)
        yield f"byte {offset} set", setting([offset])
    for _ in range(120):
        offset = superblock + rng.randrange(128)
        yield f"superblock byte {offset} set", setting([offset])
    for _ in range(40):
        offsets = sorted(superblock + rng.randrange(1024) for _ in range(rng.randint(2, 4)))
        yield f"bytes {offsets} set", setting(offsets)
    for _ in range(60):
        offset, bit = superblock + rng.randrange(96), rng.randrange(8)
        damaged = bytearray(data)
        damaged[offset] ^= 1 << bit
        yield f"bit {bit} of byte {offset} flipped", bytes(damaged)
    for _ in range(40):
        cut = rng.randrange(size)
        yield f"cut to {cut}", data[:cut]
    for cut in (size - 1, superblock + 8, superblock + 47, superblock + 95):
        yield f"cut to {cut}", data[:cut]
    for _ in range(15):
        extra = rng.randint(1, 4096)
        yield f"{extra} bytes appended", data + rng.randbytes(extra)
    for junk in (1, 100, 511, 512, 1024, 2048, 4096, rng.randint(1, 3000)):
        yield f"{junk} junk bytes in front", rng.randbytes(junk) + data


def _corpus(folder: Path) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(20240611)
    for base, (write, kwargs, superblock) in _BASES.items():
        data = write(folder / "base.h5", **kwargs)
        yield base, data
        for offset in sorted({71, superblock + 71}):
            damaged = bytearray(data)
            damaged[offset] = 0x80
            yield f"{base}: byte {offset} = 0x80", bytes(damaged)
        for name, damaged in _mutations(data, superblock, rng):
            yield f"{base}: {name}", damaged


def test_hdf5_verdict_is_h5py_s_on_a_mutated_corpus(tmp_path):
    """On >1,000 seeded damaged files hdf5_problem refuses exactly what h5py cannot open."""
    path = tmp_path / "case.h5"
    verdicts: dict[str, tuple[bool, bool]] = {}
    reasons = set()
    for name, data in _corpus(tmp_path):
        path.write_bytes(data)
        problem = hdf5_problem(str(path))  # raising here fails the test: it must not
        assert problem is None or (isinstance(problem, str) and problem), name
        verdicts[name] = (problem is None, h5py_opens(str(path)))
        if problem is not None:
            reasons.add(problem)
    disagreements = {name: verdict for name, verdict in verdicts.items() if verdict[0] != verdict[1]}
    assert disagreements == {}
    assert len(verdicts) >= 1000
    opened = sum(mine for mine, _ in verdicts.values())
    assert 100 < opened < len(verdicts) - 100, "the corpus should hold plenty of both"
    assert {base for base in _BASES if verdicts[base] == (True, True)} == set(_BASES)
    assert "one dataset: byte 71 = 0x80" in verdicts  # checked, not raised, agreed
    assert any("truncated file" in reason for reason in reasons)
    assert any("signature" in reason for reason in reasons)


def test_a_file_cut_by_one_byte_is_refused_as_truncated(tmp_path):
    data = _write_h5(tmp_path / "good.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:-1])
    assert hdf5_problem(str(tmp_path / "good.h5")) is None
    assert "truncated" in hdf5_problem(str(cut))
    with pytest.raises(WrongFileFormatError, match=r"^not a readable HDF5 file \(truncated"):
        check_file_format(str(cut), "data")
    check_file_format(str(tmp_path / "good.h5"), "candidates")


def test_the_file_access_list_is_h5py_file_s():
    """The check opens files with the same property list h5py.File builds by default."""
    from h5py._hl.files import make_fapl  # h5py's own; here only to catch drift
    _, read_only, file_access = formats._hdf5()
    assert read_only == h5py.h5f.ACC_RDONLY
    assert file_access.equal(make_fapl(None))


# ------------------------------------------------------------------ writers
_WRITER = """
import sys, h5py, numpy
path, mode = sys.argv[1], sys.argv[2]
handle = h5py.File(path, "w", libver="latest" if mode == "swmr" else None)
handle.create_dataset("x", data=numpy.zeros(9), chunks=(9,), maxshape=(None,))
if mode == "swmr":
    handle.swmr_mode = True
handle.flush()
print("ready", flush=True)
sys.stdin.read()
"""


class _Writer:
    """A real process holding ``path`` open for writing until stopped or killed."""

    def __init__(self, path: Path, mode: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), mode],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise AssertionError(f"the writer did not start (said {line!r})")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.communicate("")
        self.process.stdout.close()


@pytest.mark.parametrize("mode", ["plain", "swmr"])
def test_a_file_a_running_writer_holds_is_refused(tmp_path, mode):
    path = tmp_path / f"{mode}.h5"
    writer = _Writer(path, mode)
    try:
        problem = hdf5_problem(str(path))
        opened = h5py_opens(str(path))
    finally:
        writer.stop()
    assert problem is not None and not opened
    assert hdf5_problem(str(path)) is None and h5py_opens(str(path))  # closed cleanly


def test_a_file_a_killed_swmr_writer_left_is_refused(tmp_path):
    path = tmp_path / "killed.h5"
    writer = _Writer(path, "swmr")
    try:
        writer.kill()
    finally:
        writer.stop()
    assert not h5py_opens(str(path))
    problem = hdf5_problem(str(path))
    assert problem is not None and "open for write" in problem
    with pytest.raises(WrongFileFormatError, match="not a readable HDF5 file"):
        check_file_format(str(path), "data")


def test_a_file_a_killed_plain_writer_left_gets_h5py_s_verdict(tmp_path):
    """Without SWMR nothing marks the file open: whatever h5py says, the check says."""
    path = tmp_path / "killed.h5"
    writer = _Writer(path, "plain")
    try:
        writer.kill()
    finally:
        writer.stop()
    assert (hdf5_problem(str(path)) is None) == h5py_opens(str(path))


def test_a_file_this_process_writes_gets_h5py_s_verdict(tmp_path):
    path = tmp_path / "mine.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros(3)
        handle.flush()
        assert (hdf5_problem(str(path)) is None) == h5py_opens(str(path))
        handle["y"] = np.ones(3)  # the writer is unharmed
    with h5py.File(path, "r") as handle:
        assert sorted(handle) == ["x", "y"]


# ------------------------------------------------------------------ paths that are not files
def test_paths_that_are_not_regular_files_give_a_reason(tmp_path):
    good = tmp_path / "good.h5"
    _write_h5(good)
    (tmp_path / "folder").mkdir()
    os.symlink(good, tmp_path / "link.h5")
    os.symlink(tmp_path / "folder", tmp_path / "folder_link")
    os.symlink(tmp_path / "gone.h5", tmp_path / "dangling.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    assert hdf5_problem(str(tmp_path / "link.h5")) is None
    assert hdf5_problem(tmp_path / "link.h5") is None  # os.PathLike too
    for name, fragment in [("folder", "not a regular file"), ("folder_link", "not a regular file"),
                           ("missing.h5", "No such file"), ("dangling.h5", "No such file"),
                           ("empty.h5", "signature")]:
        problem = hdf5_problem(str(tmp_path / name))
        assert problem is not None and fragment in problem, (name, problem)
        assert torchscript_problem(str(tmp_path / name)) is not None
    for odd in ["", "a\0b"]:
        assert isinstance(hdf5_problem(odd), str)
        assert isinstance(torchscript_problem(odd), str)
    with pytest.raises(WrongFileFormatError, match="not a regular file"):
        check_file_format(str(tmp_path / "folder"), "data")


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    """Opening a fifo would block until a writer comes; the check must not."""
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    answers: dict[str, object] = {}

    def check() -> None:
        answers["hdf5"] = hdf5_problem(str(fifo))
        answers["torchscript"] = torchscript_problem(str(fifo))

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the check blocked on a fifo"
    assert answers == {"hdf5": "not a regular file", "torchscript": "not a regular file"}


# ------------------------------------------------------------------ TorchScript
def test_torchscript_archives_and_the_files_that_are_not(tmp_path):
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    scripted = tmp_path / "model.pt"
    torch.jit.script(module).save(str(scripted))
    state = tmp_path / "state.pt"
    torch.save(module.state_dict(), str(state))
    hdf5 = tmp_path / "data.h5"
    _write_h5(hdf5)

    assert torchscript_problem(str(scripted)) is None
    assert torchscript_problem(scripted) is None
    check_file_format(str(scripted), "models")
    assert "constants.pkl" in torchscript_problem(str(state))
    assert "zip" in torchscript_problem(str(hdf5))
    for refused in (state, hdf5):
        with pytest.raises(WrongFileFormatError) as error:
            check_file_format(str(refused), "models")
        assert str(error.value) == f"not a TorchScript archive (torch.jit.save): {str(refused)!r}"
    with pytest.raises(WrongFileFormatError, match=r"not a readable HDF5 file \(file signature"):
        check_file_format(str(scripted), "data")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(scripted.read_bytes()[:-30])
    assert torchscript_problem(str(cut)) is not None


def test_the_loader_keeps_its_yes_no_form(tmp_path):
    from ams.loaders import is_torchscript_archive
    hdf5 = tmp_path / "data.h5"
    _write_h5(hdf5)
    assert is_torchscript_archive(hdf5) is False
    assert is_torchscript_archive(tmp_path) is False


def test_importing_formats_imports_neither_kosh_nor_torch():
    code = ("import ams.formats, sys; heavy = {'kosh', 'torch'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
