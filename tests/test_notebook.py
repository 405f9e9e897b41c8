"""Execute examples/browse_store.ipynb in a real ipykernel; any cell error fails the test."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "browse_store.ipynb"
KERNEL = "python3"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ensure_kernel() -> None:
    """``python3`` comes with ipykernel; install the spec (``--user``) only if it is missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True)


def _seconds(cell) -> float:
    from datetime import datetime
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def _outputs(cell) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for o in cell.outputs)


def test_browse_store_notebook_runs(tmp_path: Path, monkeypatch) -> None:
    _ensure_kernel()
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    # The kernel inherits this environment: tempfile.mkdtemp() lands in scratch,
    # and IPython's history and kernel connection files stay out of $HOME.
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-cache"))  # torch's own
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    started = time.monotonic()
    nbclient.NotebookClient(notebook, timeout=120, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(cwd)}}).execute()
    elapsed = time.monotonic() - started
    print(f"notebook executed in {elapsed:.1f} s; slowest cells (s):",
          sorted((round(_seconds(cell), 1) for cell in notebook.cells
                  if cell.cell_type == "code"), reverse=True)[:4])

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors
    text = "\n".join(_outputs(cell) for cell in code)
    assert "ensemble EOS of application demo-app" in text          # plain Kosh sees the layout
    assert "candidates version 1" in text and "models     version 2" in text
    assert "RecursiveScriptModule" in text                          # the TorchScript loader
    assert "model version 2" in text                                # load_model: the latest
    assert "inputs (320, 2) outputs (320, 1)" in text               # load_data: all 5 files
    images = [base64.b64decode(o.data["image/png"]) for cell in code for o in cell.outputs
              if "data" in o and "image/png" in o.data]
    assert len(images) == 1 and images[0][:8] == PNG_MAGIC         # the plot, inline
    # The notebook wrote only into its temporary folder, and removed it.
    assert os.listdir(scratch) == [] and os.listdir(cwd) == []
