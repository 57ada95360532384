"""Converting a large labelled file streams frames: peak RSS growth stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmim_dense.nyud_io.synth import generate_synth_nyud

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark_nyud.py"
FRAMES, SIZE = 40, (480, 640)


@pytest.mark.slow
@pytest.mark.benchmark
def test_conversion_peak_rss_growth_is_bounded(tmp_path: Path) -> None:
    raw = generate_synth_nyud(tmp_path / "raw", FRAMES, 0, SIZE, progress=False)
    cmd = [sys.executable, str(TOOL), "--measure", str(raw.labeled), str(raw.splits)]
    cmd += [str(raw.mapping), str(tmp_path / "nyud")]
    child = subprocess.run(cmd, capture_output=True, text=True, check=True)
    stats = json.loads(child.stdout.strip().splitlines()[-1])
    assert stats["frames"] == FRAMES
    # Loading the arrays whole would need ~110 MB here (and 2.8 GB+ for the real file).
    whole_mb = FRAMES * SIZE[0] * SIZE[1] * (3 + 4 + 2) / 2**20
    assert stats["peak_rss_growth_mb"] < min(500, 0.6 * whole_mb), stats
    assert len(list((tmp_path / "nyud" / "depth").glob("*/*.png"))) == FRAMES
