"""Hidden set-up of the pages' doctests: a temporary working folder with real files.

Every page that runs examples starts with a ``testsetup`` block that makes a
:class:`Workdir` (a new temporary folder, made the working directory, so the
examples' relative paths and ``sqlite:///`` URLs land in it) and ends with a
``testcleanup`` block that closes it (back to the old working directory, the
folder deleted). Nothing is written into the repository.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile


class Workdir:
    """A temporary working directory holding real HDF5 files and TorchScript models."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="ams-docs-")
        self._previous = os.getcwd()
        os.chdir(self.path)
        # The examples show return values; without a handler, the library's warnings
        # (such as verify's summary) would reach the build's stderr through logging's
        # last-resort handler.
        self._quiet = logging.NullHandler()
        logging.getLogger("ams").addHandler(self._quiet)

    def h5(self, *names: str, rows: int = 8) -> list:
        """Write HDF5 files with ``inputs`` (rows x 2) and ``outputs`` (rows x 1)."""
        import h5py
        import numpy as np

        rng = np.random.default_rng(len(os.listdir(self.path)))
        for name in names:
            os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
            with h5py.File(name, "w") as handle:
                handle["inputs"] = rng.random((rows, 2), dtype="float32")
                handle["outputs"] = rng.random((rows, 1), dtype="float32")
        return list(names)

    def model(self, name: str) -> str:
        """Write a TorchScript model (a linear layer, 2 inputs, 1 output)."""
        import torch

        torch.manual_seed(0)
        torch.jit.script(torch.nn.Linear(2, 1)).save(name)
        return name

    def close(self) -> None:
        logging.getLogger("ams").removeHandler(self._quiet)
        os.chdir(self._previous)
        shutil.rmtree(self.path, ignore_errors=True)
