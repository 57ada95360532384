"""Keep freed memory in the process, so that a training step's temporaries do not page-fault.

glibc's malloc serves a large block with ``mmap`` and gives it back to the system when it is
freed. Its mmap threshold starts at 128 KiB and rises with the blocks freed (to at most 32 MiB
on 64-bit); its trim threshold, past which it gives the free top of its heap back, starts at
128 KiB and follows at twice the mmap threshold. A training step allocates and frees the same
weight- and activation-sized tensors every step, so each step faults their pages in again: in
a binary ResNet-18's SGD step, one fault per 4 KiB of every weight-sized temporary of its
binarizer. With both thresholds above a step's largest temporary, the freed blocks stay in
malloc's heap and are reused. On a 2-core AMD Zen 4 (torch 2.14, glibc 2.36), in processes
timing one step alone, that took the 32 px IR-Net and AdaBin steps from about 130 and 145 ms
to 105 and 115 ms (the float step unchanged), and the 224 px float step from 1.14 to 1.01 s,
for about 10% more peak memory (docs/binarizers.md has the interleaved benchmark).

This is what PyTorch's CPU tuning guide reaches with jemalloc or tcmalloc preloaded
(``torch.backends.xeon.run_cpu`` configures jemalloc never to return memory), done with glibc's
own ``mallopt`` so that nothing has to be installed or preloaded. The setting is the process's,
and forked children (DataLoader workers) inherit it. Other C libraries are left as they are, and
so is a process whose environment sets ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_`` or ``GLIBC_TUNABLES`` with ``glibc.malloc``, or preloads an allocator
(an ``LD_PRELOAD`` naming ``malloc``: jemalloc, tcmalloc, mimalloc): those settings then
decide (glibc fixes both thresholds once any of the three variables is set).
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# bytes: above ResNet-18's largest step temporary at 224 px, batch 16. glibc before 2.35 refuses
# an mmap threshold above 32 MiB on 64-bit; that one still covers the weights' temporaries.
MMAP_THRESHOLDS = (256 << 20, 32 << 20)
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept

# The user's own allocator settings, which win over ours.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_settings: tuple[int, int] | None = None  # (mmap, trim) thresholds set in this process


def _user_tunes_malloc() -> bool:
    if any(name in os.environ for name in USER_SETTINGS):
        return True
    preloaded = os.environ.get("LD_PRELOAD", "")
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or "malloc" in preloaded


def retain_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (see the module doc).

    Returns True if they were set; False where the C library is not glibc, the environment
    already configures the allocator, or glibc refused a value.
    """
    global _settings
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _user_tunes_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to reach: leave malloc alone
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # mallopt returns 1 on success. The mmap threshold first: only it has a cap, and setting
    # the trim threshold alone would switch off glibc's rising mmap threshold.
    mmap = next((size for size in MMAP_THRESHOLDS if mallopt(_M_MMAP_THRESHOLD, size) == 1), None)
    if mmap is None or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    _settings = (mmap, TRIM_THRESHOLD)
    return True


def allocator_note() -> str:
    """One line for a benchmark's header: how this process's malloc treats freed memory."""
    if _settings is None:
        return "malloc: the C library's defaults or the environment's settings"
    mmap, trim = _settings
    return (
        f"malloc: freed memory kept (glibc, mmap threshold {mmap >> 20} MiB, "
        f"trim threshold {trim >> 20} MiB)"
    )
