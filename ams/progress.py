"""The one progress bar: a ``(done, total)`` callback that draws on a terminal.

The library reports progress only through callbacks (``add_data(progress=)``,
``import_from(progress=)``); this is the callback the command line passes (and
``import_from(progress=True)`` for people at a terminal). On a terminal it draws
``label [#####.....] done/total``; elsewhere it writes a count line every 10%
when asked (``counts=True``, the CLI's ``-v``), or nothing.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

__all__ = ["ProgressBar"]

#: Calls that check fewer files than this show no progress (they are quick).
MIN_FILES = 10


class ProgressBar:
    """``bar(done, total)``: see the module docstring.

    ``always=True`` draws the bar even when ``stream`` is not a terminal and
    for any number of files (an explicit request, e.g. ``progress=True``).
    """

    def __init__(self, label: str, total: int, stream: Optional[TextIO] = None,
                 counts: bool = False, always: bool = False, width: int = 30,
                 prefix: str = "ams-store") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.total, self.width, self.prefix = label, total, width, prefix
        self.bar = always or bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = always or (total >= MIN_FILES and (self.bar or counts))
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or not total:
            return
        step = done * (100 if self.bar else 10) // total
        if step == self._shown:
            return
        self._shown = step
        if self.bar:
            filled = self.width * done // total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                              f"{done}/{total}")
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.prefix}: {self.label}: {done}/{total} files\n")
        self.stream.flush()
