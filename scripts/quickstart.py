#!/usr/bin/env python3
"""A real end-to-end run of the catalogue on the embedded SQLite default.

Writes HDF5 training files and a TorchScript model into a folder, registers
them, promotes a candidate to data, and prints what the store holds (JSON on
stdout). Without --workdir the folder is a new temporary one, named on stderr
and deleted at the end unless --keep is given.

    python scripts/quickstart.py [--workdir DIR | --keep] [--url URL]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile

import h5py
import numpy as np

from ams import AMSDataStore, AMSModelDescr, UQAggregate, UQType


def write_h5(path: str, rows: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        handle["inputs"] = rng.random((rows, 2))
        handle["outputs"] = rng.random((rows, 1))
    return path


def write_model(path: str) -> str:
    import torch
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(),
                                         torch.nn.Linear(8, 1))).save(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="folder for the files and the store, kept "
                                          "(default: a new temporary folder, deleted at the end)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (its path is printed on stderr)")
    parser.add_argument("--url", help="store URL (default: sqlite:///<workdir>/store/ams.db); "
                                      "its files live in the work folder, so keep that "
                                      "folder (--workdir or --keep) with your own store")
    args = parser.parse_args(argv)
    if args.workdir and args.keep:
        parser.error("--keep is for the temporary folder; a --workdir is always kept")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    temporary = args.workdir is None
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="ams-quickstart-"))
    print(f"quickstart: working in {workdir}", file=sys.stderr)
    try:
        summary = run(workdir, args.url or f"sqlite:///{os.path.join(workdir, 'store', 'ams.db')}")
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"quickstart: deleted {workdir} (--keep keeps it)", file=sys.stderr)
        else:
            print(f"quickstart: kept {workdir}", file=sys.stderr)
    json.dump(summary, sys.stdout, indent=2, sort_keys=True, default=str)
    print()
    return 0


def run(workdir: str, url: str) -> dict:
    """Fill the store at ``url`` with files written under ``workdir``; return what it holds."""
    os.makedirs(os.path.join(workdir, "simulation"), exist_ok=True)
    with AMSDataStore("quickstart", url) as store:
        sim = os.path.join(workdir, "simulation")
        data = [write_h5(os.path.join(sim, store.suggest_data_file_name("EOS")), 32, seed)
                for seed in range(3)]
        candidates = [write_h5(os.path.join(sim, store.suggest_candidate_file_name("EOS")), 8, 10 + seed)
                      for seed in range(2)]
        model_path = write_model(os.path.join(workdir, store.suggest_model_file_name("EOS")))

        data_version = store.add_data("EOS", data, metadata={"cycle": 1, "source": "quickstart"})
        store.add_candidates("EOS", candidates, metadata={"cycle": 2})
        model = AMSModelDescr(model_path, threshold=0.5, uq_type=UQType.DeltaUQ,
                              uq_aggregate=UQAggregate.mean)
        model_version = store.add_model("EOS", model, test_error=0.021, val_error=0.034,
                                        metadata={"epochs": 10})
        promoted = store.move("EOS", os.path.join(workdir, "promoted"), "candidates", "data",
                              candidates[:1])

        return {
            "store": str(store),
            "data_version_added": data_version,
            "model_version_added": model_version,
            "promoted": promoted,
            "data_versions": store.get_data_versions("EOS", associate_files=True),
            "candidate_versions": store.get_candidate_versions("EOS", associate_files=True),
            "latest_model": store.search("EOS", "models", "latest", {"val_error": {"<": 0.1}}),
        }


if __name__ == "__main__":
    sys.exit(main())
