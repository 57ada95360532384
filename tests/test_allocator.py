"""utils.allocator: freed blocks stay in glibc's heap instead of going back to the system."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from cmim_dense.utils.allocator import USER_SETTINGS


def _glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc":
        return ()
    return tuple(int(part) for part in version.split("."))


pytestmark = pytest.mark.skipif(
    _glibc_version() < (2, 35),
    reason="the thresholds are glibc's; the probe reads mallinfo2 (glibc >= 2.33), and glibc "
    "before 2.35 caps the mmap threshold at 32 MiB, under the probe's 64 MiB block",
)

# Allocates and frees a 64 MiB tensor through torch's CPU allocator (posix_memalign) and reads
# glibc's own accounting (mallinfo2): hblkhd = bytes in mmap'ed blocks, arena = bytes of the
# main heap, fordblks = free bytes inside malloc's heaps.
_PROBE = """
import ctypes, json, sys
import torch
from cmim_dense.cli.common import run_tool
from cmim_dense.utils.allocator import allocator_note

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
code = run_tool(lambda: 0) if sys.argv[1] == "tool" else None
before = libc.mallinfo2()
block = torch.ones(16 << 20)  # 64 MiB of float32, every page touched
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(json.dumps({
    "code": code,
    "mmapped": during.hblkhd - before.hblkhd,
    "freed_into_heap": after.fordblks - during.fordblks,
    "heap_trimmed": during.arena - after.arena,
    "note": allocator_note(),
}))
"""

MIB = 1 << 20


def _probe(mode: str, **env: str) -> dict:
    """Runs _PROBE in a fresh interpreter with no allocator settings but ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    clean.pop("LD_PRELOAD", None)
    clean.pop("GLIBC_TUNABLES", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_tool_keeps_a_freed_block_in_the_heap():
    result = _probe("tool")
    assert result["code"] == 0
    assert result["mmapped"] < MIB  # served from the heap, not by mmap
    assert result["freed_into_heap"] >= 63 * MIB  # and still there once freed
    assert result["heap_trimmed"] <= 0
    assert result["note"].startswith("malloc: freed memory kept (glibc, mmap threshold 256 MiB")


def test_without_it_glibc_maps_and_returns_the_block():
    # the control: what every training step's large temporaries pay by default
    result = _probe("plain")
    assert result["mmapped"] >= 64 * MIB
    assert result["freed_into_heap"] < MIB
    assert result["note"] == "malloc: the C library's defaults or the environment's settings"


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
    ],
)
def test_the_users_own_malloc_settings_win(env):
    result = _probe("tool", **env)
    assert result["code"] == 0
    assert result["mmapped"] >= 64 * MIB  # the user's 128 KiB threshold (or glibc's), not ours
    assert result["note"] == "malloc: the C library's defaults or the environment's settings"


@pytest.fixture
def plain_malloc_env(monkeypatch):
    """No allocator settings in the environment that spawned children inherit."""
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)


def test_a_chain_in_a_fresh_process_keeps_freed_memory_too(plain_malloc_env):
    # spawned processes start with malloc's defaults: the chains' set-up applies the settings
    from cmim_dense.utils.allocator import allocator_note
    from cmim_dense.utils.processes import in_fresh_process

    assert in_fresh_process(allocator_note).startswith("malloc: freed memory kept")


def test_the_demos_side_by_side_chains_keep_freed_memory(plain_malloc_env):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from cmim_dense.pipelines import demo
    from cmim_dense.utils.allocator import allocator_note

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, context, initializer=demo._chain_worker) as pool:
        assert pool.submit(allocator_note).result().startswith("malloc: freed memory kept")


@pytest.mark.parametrize(
    ("preload", "ours"),
    [("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", False), ("/opt/intel/lib/libiomp5.so", True)],
)
def test_only_a_preloaded_allocator_turns_the_setting_off(
    monkeypatch, plain_malloc_env, preload, ours
):
    from cmim_dense.utils import allocator

    monkeypatch.setenv("LD_PRELOAD", preload)
    assert allocator._user_tunes_malloc() is not ours


class _FakeMallopt:
    """glibc < 2.35's mallopt: refuses an mmap threshold above 32 MiB; records the calls."""

    argtypes = None

    def __init__(self, trim_ok: bool = True):
        self.calls, self.trim_ok = [], trim_ok

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        if param == -3:
            return int(value <= 32 << 20)
        return int(self.trim_ok)


def _with_fake_libc(monkeypatch, mallopt: _FakeMallopt):
    from types import SimpleNamespace

    from cmim_dense.utils import allocator

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(allocator, "_settings", None)
    return allocator


def test_an_older_glibc_gets_the_32_mib_mmap_threshold_first(monkeypatch, plain_malloc_env):
    mallopt = _FakeMallopt()
    allocator = _with_fake_libc(monkeypatch, mallopt)
    assert allocator.retain_freed_memory()
    # the mmap threshold before the trim one: the trim threshold alone freezes glibc's rising one
    assert mallopt.calls == [(-3, 256 << 20), (-3, 32 << 20), (-1, 1 << 30)]
    assert "mmap threshold 32 MiB, trim threshold 1024 MiB" in allocator.allocator_note()


def test_a_refused_value_is_reported_as_not_set(monkeypatch, plain_malloc_env):
    allocator = _with_fake_libc(monkeypatch, _FakeMallopt(trim_ok=False))
    assert not allocator.retain_freed_memory()
    assert allocator.allocator_note().startswith("malloc: the C library's defaults")
