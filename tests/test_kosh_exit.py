"""Issue 16 item 4: a process that opened Kosh stores through ``kosh_dataset`` exits promptly.

Kosh registers ``atexit.register(self._clean_up)`` (a close and a ``gc.collect()``)
for every store it opens and never unregisters it, so every store stays alive until
exit and is cleaned up there. :func:`ams.notebook.close_kosh` releases it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent('''
    import gc, sys, time, weakref
    import torch  # as in a notebook or a training job: it makes each exit gc.collect() slow
    from ams import AMSDataStore, notebook
    url = sys.argv[1]
    alive = []
    for _ in range(20):
        store = AMSDataStore("app", url, read_only=True).open()
        store.kosh_dataset("EOS", "data", 1)
        kosh_store, store._kosh_store = store._kosh_store, None  # what store.close will do
        alive.append(weakref.ref(kosh_store))
        notebook.close_kosh(kosh_store)
        del kosh_store
        store.close()
    gc.collect()
    print(sum(ref() is not None for ref in alive))  # Kosh stores still held (by atexit)
    print(time.monotonic(), flush=True)
''')


def test_twenty_kosh_dataset_stores_then_a_prompt_exit(tmp_path, make_h5):
    from ams import AMSDataStore
    url = f"sqlite:///{tmp_path / 'ams.db'}"
    with AMSDataStore("app", url) as store:
        store.add_data("EOS", [make_h5()])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, url], env=env, capture_output=True,
                          text=True, timeout=300)
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr
    still_held, finished = done.stdout.split()
    assert int(still_held) == 0  # nothing left for exit (it was 20)
    exit_seconds = exited - float(finished)  # CLOCK_MONOTONIC: the same clock in both processes
    assert exit_seconds < 3, f"the interpreter took {exit_seconds:.1f} s to exit"
