"""Speed and peak memory of the NYUD-v2 conversion, on a generated file of the official format.

:func:`run_benchmark` generates a synthetic ``nyu_depth_v2_labeled.mat``, then converts it with
``prepare_nyud`` in a fresh child process (``cmim-dense benchmark_nyud --measure``) that reports
its peak RSS growth from /proc (VmHWM after the conversion minus VmRSS before it, with the
high-water mark reset through /proc/self/clear_refs where allowed).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

CLI_MODULE = "cmim_dense.cli.benchmark_nyud"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_child(labeled: str, splits: str, mapping: str, out: str) -> None:
    """Child process: convert once and print timing and memory as JSON."""
    from cmim_dense.nyud_io.convert import prepare_nyud

    # "5" resets VmHWM to the current RSS (Linux >= 4.0), so the imports do not count
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    rss_start = _status_kb("VmRSS")
    start = time.perf_counter()
    result = prepare_nyud(labeled, splits, mapping, out, progress=False)
    seconds = time.perf_counter() - start
    frames = sum(result.counts.values())
    peak_growth_mb = max(_status_kb("VmHWM") - rss_start, 0) / 1024
    print(json.dumps({"frames": frames, "seconds": seconds, "peak_rss_growth_mb": peak_growth_mb}))


def run_benchmark(frames: int, size: tuple[int, int], workdir: Path, seed: int = 0) -> dict:
    """Generate, then convert in a child process; returns the measurements."""
    from cmim_dense.nyud_io.synth import generate_synth_nyud

    start = time.perf_counter()
    paths = generate_synth_nyud(workdir / "raw", frames, seed, size, progress=False)
    generate_s = time.perf_counter() - start
    cmd = [sys.executable, "-m", CLI_MODULE, "--measure", str(paths.labeled), str(paths.splits)]
    cmd += [str(paths.mapping), str(workdir / "nyud")]
    child = subprocess.run(cmd, capture_output=True, text=True, check=True)
    stats = json.loads(child.stdout.strip().splitlines()[-1])
    stats.update(
        height=size[0],
        width=size[1],
        generate_seconds=generate_s,
        frames_per_second=stats["frames"] / stats["seconds"],
        labeled_mb=paths.labeled.stat().st_size / 2**20,
    )
    return stats
