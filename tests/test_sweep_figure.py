"""tools/report.py --sweep: the paper's Fig. 5 across binarizers and the table of paired
differences, from fake demo-chain sweep.json files with hand-computed statistics."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.text import Annotation

from cmim_dense.pipelines.sweep_figure import (
    figure,
    group_name,
    load_sweeps,
    markdown,
    sweep_fig5,
)

REPO = Path(__file__).resolve().parents[1]
BIN, LAM = "model.backbone.binarizer", "model.cmim_lambda"
# (binarizer, lambda) -> per-seed (mIoU, rmse, top1), seeds 0, 1, 2
VALUES = {
    ("irnet", 0): [(40.0, 0.50, 60.0), (42.0, 0.50, 61.0), (44.0, 0.50, 62.0)],
    ("irnet", 1e-4): [(43.0, 0.49, 63.0), (44.0, 0.51, 63.0), (48.0, 0.49, 63.0)],
    ("react", 0): [(50.0, 0.40, 70.0), (50.0, 0.40, 70.0), (50.0, 0.40, 70.0)],
    ("react", 1e-4): [(49.0, 0.41, 71.0), (51.0, 0.42, 71.0), (48.0, 0.43, 71.0)],
}


def _run(binarizer, lam, seed, miou, rmse, top1):
    metrics = dict(top1=top1, mIoU=miou, rmse=rmse, neg_log_rmse=-math.log(rmse))
    return dict(setting={BIN: binarizer, LAM: lam}, seed=seed, metrics=metrics)


def _write_sweep(folder: Path, runs: list[dict], complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    record = dict(metrics=["top1", "mIoU", "rmse", "neg_log_rmse"], runs=runs, complete=complete)
    (folder / "sweep.json").write_text(json.dumps(record))
    return folder


def _runs(binarizers, seeds):
    return [
        _run(b, lam, s, *VALUES[(b, lam)][s])
        for s in seeds
        for b in binarizers
        for lam in (0, 1e-4)
    ]


def _tool():
    return runpy.run_path(str(REPO / "tools" / "report.py"), run_name="tools_report")["main"]


def test_paired_statistics_verdicts_and_arrows(tmp_path):
    # two sweeps side by side (as the two processes of docs/evidence.md), one still running
    a = _write_sweep(tmp_path / "a", _runs(["irnet", "react"], [0, 1]))
    extra = [_run("bireal", 0, 0, 30.0, 0.6, 50.0)]  # its CMIM run has not finished
    b = _write_sweep(tmp_path / "b", _runs(["irnet", "react"], [2]) + extra, complete=False)
    runs, complete = load_sweeps([a, b])
    assert len(runs) == 13 and not complete
    result = sweep_fig5(runs)
    assert [r["setting"][BIN] for r in result["left_out"]] == ["bireal"]
    assert [g["name"] for g in result["groups"]] == ["irnet", "react"]
    pairs = {p["reference"]: p for p in result["paired"]}
    irnet = pairs["binarizer=irnet,cmim_lambda=0"]
    assert irnet["seeds"] == [0, 1, 2]
    assert irnet["mIoU"]["values"] == pytest.approx([3.0, 2.0, 4.0])
    assert irnet["mIoU"]["mean"] == pytest.approx(3.0) and irnet["mIoU"]["std"] == pytest.approx(1)
    assert irnet["mIoU"]["better"] == 3 and irnet["mIoU"]["beyond_spread"]
    # RMSE -0.01, +0.01, -0.01: lower is better on 2 of 3, mean better, not beyond the spread
    assert irnet["rmse"]["better"] == 2 and irnet["rmse"]["mean"] == pytest.approx(-0.01 / 3)
    react = pairs["binarizer=react,cmim_lambda=0"]
    assert react["mIoU"]["values"] == pytest.approx([-1.0, 1.0, -2.0])
    assert react["mIoU"]["better"] == 1

    table = markdown(result, "**Partial**")
    assert table.startswith("**Partial**")
    assert (
        "| irnet | mIoU (%) | 42.0 ± 2.0 | 45.0 ± 2.6 (0.0001) | +3.0 ± 1.0 (+3.0, +2.0, +4.0)"
        in (table)
    )
    assert "| 3/3 | helps |" in table
    last = table.strip().splitlines()[-1]
    assert "irnet RMSE (m): mean better" in last and "react mIoU (%): worse" in last
    assert "irnet mIoU" not in last

    fig = figure(result)
    ax = fig.axes[0]
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(arrows) == 2  # one per binarizer, from lambda = 0 to CMIM
    ref, cmim = result["groups"][0]["reference"], result["groups"][0]["cmim"][0]
    assert arrows[0].xyann == pytest.approx((ref["neg_log_rmse"]["mean"], ref["mIoU"]["mean"]))
    assert arrows[0].xy == pytest.approx((cmim["neg_log_rmse"]["mean"], cmim["mIoU"]["mean"]))
    # error bars: +-1 std of the seeds around the mean (irnet lambda = 0: mIoU 42 +- 2)
    segments = [s for c in ax.collections if hasattr(c, "get_segments") for s in c.get_segments()]
    spans = {
        (round(float(s[0][1]), 6), round(float(s[1][1]), 6)) for s in segments if s[0][0] == s[1][0]
    }
    assert (40.0, 44.0) in spans


def test_tool_writes_figure_and_table_and_refuses_bad_input(tmp_path, capsys):
    a = _write_sweep(tmp_path / "a", _runs(["irnet", "react"], [0, 1, 2]))
    out = tmp_path / "docs"
    assert _tool()(["--sweep", str(a), "--out", str(out)]) == 0
    image = matplotlib.image.imread(out / "fig5_binarizers.png")
    assert image.shape[0] > 400
    assert "Partial" not in (out / "fig5_binarizers.md").read_text()
    assert json.loads((out / "fig5_binarizers.json").read_text())["complete"] is True
    capsys.readouterr()

    dup = _write_sweep(tmp_path / "dup", _runs(["irnet"], [0]))
    no_lambda = _write_sweep(tmp_path / "nolam", [dict(setting={}, seed=0, metrics={})])
    only_cmim = _write_sweep(tmp_path / "cmim", [_run("irnet", 1e-4, 0, 1.0, 0.5, 1.0)])
    for argv, message in (
        (["--sweep", str(a), str(dup)], "is in both"),
        (["--sweep", str(tmp_path / "none")], "no sweep.json"),
        (["--sweep", str(no_lambda)], "model.cmim_lambda"),
        (["--sweep", str(only_cmim)], "model.cmim_lambda=0"),
        (["--sweep", str(a), "--num-images", "2", str(a)], "either"),
    ):
        assert _tool()([*argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()


def test_group_names():
    assert group_name({BIN: "irnet", LAM: 0}) == "irnet"
    both = {BIN: "react", "model.backbone.block": "react", LAM: 1e-4}
    assert group_name(both) == "react, block=react"
    assert group_name({LAM: 0}) == "default"
