"""The README's quickstart really runs, end to end, on the embedded SQLite default."""

import json
import os
import re
import subprocess
import sys

import h5py
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "quickstart.py")


def test_quickstart_runs_and_reports_the_store(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["data_version_added"] == 1
    assert sorted(summary["data_versions"]) == ["1", "2"]
    assert len(summary["data_versions"]["1"]) == 3
    assert summary["promoted"] == summary["data_versions"]["2"]
    assert len(summary["candidate_versions"]["1"]) == 1  # one of two candidates promoted
    (model,) = summary["latest_model"]
    assert model["metadata"]["val_error"] == 0.034 and model["entry_type"] == "models"
    assert os.path.isfile(tmp_path / "store" / "ams.db")
    with h5py.File(summary["promoted"][0], "r") as handle:
        assert handle["inputs"].shape == (8, 2)


@pytest.mark.parametrize("keep", [False, True])
def test_quickstart_names_its_temporary_folder_and_keeps_it_only_if_asked(tmp_path, keep):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, SCRIPT] + (["--keep"] if keep else []),
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    (workdir,) = re.findall(r"^quickstart: working in (.+)$", done.stderr, re.MULTILINE)
    assert os.path.dirname(workdir) == str(scratch)
    if keep:
        assert f"quickstart: kept {workdir}" in done.stderr
        assert os.path.isfile(os.path.join(workdir, "store", "ams.db"))
    else:
        assert f"quickstart: deleted {workdir}" in done.stderr
        assert os.listdir(scratch) == []
    assert json.loads(done.stdout)["data_version_added"] == 1
