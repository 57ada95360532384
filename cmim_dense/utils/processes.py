"""Jobs in a process of their own."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from cmim_dense.utils.allocator import retain_freed_memory


def in_fresh_process(job: Callable, *args) -> Any:
    """``job(*args)`` in a freshly spawned process (``job`` and ``args`` picklable); returns its
    result. Processes that ran torch training and OpenVINO have died of SIGSEGV, at data-loader
    and stage boundaries (cause not found; README, Tests): a job in a process of its own takes
    only itself down, and leaves no OpenVINO state in the caller. As with any spawned process,
    a script that calls this must keep its own work under ``if __name__ == "__main__":``.

    Raises:
        concurrent.futures.process.BrokenProcessPool: the process died (e.g. a signal).
    """
    # spawn: a forked child would inherit the parent's OpenMP and OpenVINO state; a spawned
    # one starts with malloc's defaults, so it takes the tools' allocator settings first
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, context, initializer=retain_freed_memory) as pool:
        return pool.submit(job, *args).result()
