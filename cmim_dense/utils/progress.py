"""Progress bars that suit both a terminal and a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

# A redirected stream (a log file, CI output) gets one plain line this often, not a redraw
# every tenth of a second.
LOG_INTERVAL_S = 10.0


class _LineTqdm(tqdm):
    """tqdm that writes each update as its own line (no carriage returns)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        self.fp.write((msg or self.__str__()) + "\n")
        self.fp.flush()
        return True


def progress_bar(
    iterable: Iterable, desc: str, unit: str, total: int | None = None, disable: bool = False
) -> tqdm:
    """Iterate ``iterable`` with a progress bar on stderr.

    On a terminal it is tqdm's usual bar. When stderr is not a terminal it writes one line every
    :data:`LOG_INTERVAL_S` seconds (and a last one at the end), so a log file stays readable.
    """
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable)
    return _LineTqdm(
        iterable,
        desc=desc,
        unit=unit,
        total=total,
        disable=disable,
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        ascii=True,
        ncols=80,
    )
