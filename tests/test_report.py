"""tools/report.py on fake run dirs, metrics.json I/O and the atomic writers."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.legend import Legend
from PIL import Image

from cmim_dense.evaluation.report import (
    DEFAULT_SIZE,
    SIZE_RANGE,
    RunDirError,
    dot_sizes,
    fig5_figure,
    read_run_metrics,
    run_labels,
    write_run_metrics,
)
from cmim_dense.evaluation.visualize import save_predictions_npz
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import write_bytes_atomic, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "report.py"

RUNS = {
    "cmim_react": (
        {"binarizer": "react", "cmim_lambda": 0.2, "pretrain_top1": 65.5, "pretrain_top5": 86.1},
        {"mIoU": 31.25, "aAcc": 60.5, "IoU.wall": 62.0, "rmse": 0.75, "abs_rel": 0.21,
         "delta1": 64.0, "neg_log_rmse": -math.log(0.75)},
    ),
    "react": (
        {"binarizer": "react", "cmim_lambda": 0.0, "pretrain_top1": None},
        {"mIoU": 28.5, "aAcc": 58.0, "rmse": 0.8, "abs_rel": 0.24, "delta1": 60.0},
    ),
}  # fmt: skip


def _load_tool():
    spec = importlib.util.spec_from_file_location("report_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    dirs = []
    for name, (meta, metrics) in RUNS.items():
        run_dir = tmp_path / "work_dirs" / name
        write_run_metrics(run_dir, name, f"configs/{name}.py", "iter_100.pth", meta, metrics)
        dirs.append(run_dir)
    # Predictions only in the second run: the qualitative grid must come from it.
    rng = np.random.default_rng(0)
    for i in range(3):
        depth = rng.uniform(0.5, 9, (8, 12)).astype(np.float32)
        save_predictions_npz(
            dirs[1] / "predictions" / f"img_{i}.npz",
            rng.integers(0, 256, (8, 12, 3), dtype=np.uint8),
            rng.integers(0, 40, (8, 12)),
            rng.integers(0, 40, (8, 12)),
            depth,
            depth + 0.1,
            f"img_{i}",
        )
    return dirs


def _markdown_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    return {r[0]: dict(zip(header, r)) for r in rows}


def test_report_tool_writes_all_files(run_dirs, tmp_path):
    out = tmp_path / "report"
    assert _load_tool().main([*map(str, run_dirs), "--out", str(out), "--num-images", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "fig5.png",
        "qualitative.png",
        "report.json",
        "report.md",
    ]

    table = _markdown_rows((out / "report.md").read_text())
    assert set(table) == set(RUNS)
    cmim = table["cmim_react"]
    assert cmim["mIoU (%)"] == "31.25"
    assert cmim["RMSE (m)"] == "0.7500"
    assert cmim["-log RMSE"] == f"{-math.log(0.75):.4f}" == "0.2877"
    assert cmim["pretrain top-1 (%)"] == "65.50"
    assert cmim["CMIM lambda"] == "0.2"
    assert table["react"]["pretrain top-1 (%)"] == "-"
    assert table["react"]["delta1 (%)"] == "60.00"

    rows = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in rows] == list(RUNS)
    assert rows[0]["mIoU"] == 31.25 and rows[1]["rmse"] == 0.8
    assert rows[0]["neg_log_rmse"] == pytest.approx(-math.log(0.75))
    assert rows[1]["pretrain_top1"] is None
    assert rows[1]["neg_log_rmse"] == pytest.approx(-math.log(0.8))  # derived from rmse

    with Image.open(out / "fig5.png") as im:
        assert im.format == "PNG" and im.size == (900, 660)  # 7.5 x 5.5 in at 120 dpi
    with Image.open(out / "qualitative.png") as im:
        # 0.4 in margin and row labels + 5 tiles of 2.4 in + 4 gaps of 0.05 in + 0.1 in margin
        assert im.size[0] == pytest.approx(100 * 12.7, abs=1)
        # title and column titles 0.7 in, 2 rows of 2.4 * 8/12 in, gap, key band 0.8 in, legend
        assert im.size[1] > 100 * (0.7 + 2 * 1.6 + 0.05 + 0.8)


def test_report_tool_missing_metrics_exits_2(run_dirs, tmp_path):
    empty = tmp_path / "work_dirs" / "not_evaluated"
    empty.mkdir()
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(TOOL), str(run_dirs[0]), str(empty), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1 and "not_evaluated" in err_lines[0]
    assert "metrics.json" in err_lines[0]
    assert not out.exists()  # nothing written when a run dir is bad


def test_metrics_json_roundtrip_and_errors(tmp_path):
    meta = {"binarizer": "xnor", "cmim_lambda": 0.5}
    path = write_run_metrics(tmp_path, "r", "c.py", "k.pth", meta, {"mIoU": 1.0, "IoU.x": math.nan})
    record = read_run_metrics(tmp_path)
    assert record["name"] == "r" and record["config"] == "c.py"
    assert record["meta"] == {**meta, "pretrain_top1": None, "pretrain_top5": None}
    assert record["metrics"] == {"mIoU": 1.0, "IoU.x": None}
    assert issubclass(RunDirError, InputError)
    path.write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        read_run_metrics(tmp_path)
    with pytest.raises(RunDirError, match=r"no metrics\.json"):
        read_run_metrics(tmp_path / "missing")


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")
    write_json_atomic(path, {"a": np.float32(0.5), "b": np.arange(2), "c": float("inf")})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1], "c": None}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(TypeError):  # fails inside the temp file: it must be removed
        write_bytes_atomic(path, "not bytes")
    assert json.loads(path.read_text())["a"] == 0.5  # the failed write kept the old file
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_fig5_dot_sizes_follow_top1():
    sizes, legend = dot_sizes([50.0, None, 70.0, 60.0])
    small, big = SIZE_RANGE
    assert sizes == [small, DEFAULT_SIZE, big, (small + big) / 2]
    assert legend == [(50.0, small), (60.0, (small + big) / 2), (70.0, big)]
    assert dot_sizes([None, None]) == ([DEFAULT_SIZE] * 2, [])


def test_fig5_size_legend_gives_the_top1_of_each_dot_size():
    rows = [
        dict(label=name, mIoU=m, neg_log_rmse=x, pretrain_top1=t)
        for name, m, x, t in [("a", 40.0, 0.5, 50.0), ("b", 45.0, 0.6, 70.0)]
    ]
    (legend,) = [c for c in fig5_figure(rows).axes[0].get_children() if isinstance(c, Legend)]
    assert legend.get_title().get_text() == "pretraining top-1 (%)"
    assert [t.get_text() for t in legend.get_texts()] == ["50.0", "60.0", "70.0"]
    marker_sizes = [h.get_markersize() ** 2 for h in legend.legend_handles]
    assert marker_sizes == pytest.approx([area for _, area in dot_sizes([50.0, 70.0])[1]])


def _edit_metrics(run_dir: Path, edit) -> None:
    path = run_dir / "metrics.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(meta="oops"), "'meta' must be an object or null, got \"oops\""),
        (lambda r: r.update(meta=[1]), "'meta' must be an object"),
        (lambda r: r["metrics"].update(rmse=-0.5), "metrics['rmse'] must be > 0 metres"),
        (lambda r: r["metrics"].update(rmse=0), "metrics['rmse'] must be > 0 metres"),
        (lambda r: r["metrics"].update(rmse="0.7"), "metrics['rmse'] must be a finite number"),
        (lambda r: r["metrics"].update(mIoU=[1]), "metrics['mIoU'] must be a finite number"),
        (lambda r: r["metrics"].update(mIoU=True), "metrics['mIoU'] must be a finite number"),
        (lambda r: r["meta"].update(pretrain_top1="65"), "meta['pretrain_top1'] must be"),
        (lambda r: r["meta"].update(binarizer=3), "meta['binarizer'] must be a string"),
        (lambda r: r.update(name=""), "'name' must be a non-empty string"),
    ],
)
def test_report_tool_bad_metrics_exits_2(run_dirs, tmp_path, capsys, edit, message):
    _edit_metrics(run_dirs[1], edit)
    out = tmp_path / "report"
    assert _load_tool().main([*map(str, run_dirs), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ")
    assert str(run_dirs[1] / "metrics.json") in err_lines[0] and message in err_lines[0]
    assert captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_report_tool_non_finite_rmse_exits_2(run_dirs, tmp_path, capsys, literal):
    path = run_dirs[0] / "metrics.json"
    text = path.read_text()
    path.write_text(text.replace('"rmse": 0.75', f'"rmse": {literal}'))
    assert f'"rmse": {literal}' in path.read_text()
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old")
    assert _load_tool().main([*map(str, run_dirs), "--out", str(out)]) == 2
    (err_line,) = capsys.readouterr().err.strip().splitlines()
    assert err_line.startswith(f"error: {path}: ")
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]  # output folder untouched
    assert (out / "report.md").read_text() == "old"


def test_nan_rmse_stays_missing(tmp_path):
    run_dir = tmp_path / "nan_depth"
    metrics = {"mIoU": 30.0, "rmse": math.nan, "neg_log_rmse": math.nan, "delta1": math.nan}
    write_run_metrics(run_dir, "nan_depth", "c.py", "k.pth", {}, metrics)
    assert '"rmse": null' in (run_dir / "metrics.json").read_text()
    out = tmp_path / "report"
    assert _load_tool().main([str(run_dir), "--out", str(out)]) == 0
    (row,) = json.loads((out / "report.json").read_text())
    assert row["mIoU"] == 30.0
    assert row["rmse"] is None and row["neg_log_rmse"] is None and row["delta1"] is None
    cells = _markdown_rows((out / "report.md").read_text())["nan_depth"]
    assert cells["RMSE (m)"] == cells["-log RMSE"] == cells["delta1 (%)"] == "-"


def test_duplicate_names_get_distinct_labels(tmp_path):
    meta, metrics = RUNS["cmim_react"]
    dirs = [tmp_path / "a" / "seed0", tmp_path / "a" / "seed1", tmp_path / "b" / "seed0"]
    for i, run_dir in enumerate(dirs):
        write_run_metrics(run_dir, "same", "c.py", "k.pth", meta, {**metrics, "mIoU": 30.0 + i})
    out = tmp_path / "report"
    assert _load_tool().main([*map(str, dirs), "--out", str(out)]) == 0
    labels = ["same [seed0] #1", "same [seed1]", "same [seed0] #2"]
    rows = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in rows] == labels
    assert [r["name"] for r in rows] == ["same"] * 3  # as in metrics.json
    assert [r["mIoU"] for r in rows] == [30.0, 31.0, 32.0]
    table = _markdown_rows((out / "report.md").read_text())
    assert {k: v["mIoU (%)"] for k, v in table.items()} == dict(
        zip(labels, ["30.00", "31.00", "32.00"])
    )
    annotations = [t.get_text() for t in fig5_figure(rows).axes[0].texts]
    assert annotations == labels


def test_run_labels_rules():
    assert run_labels(["a", "b"], ["x/1", "x/2"]) == ["a", "b"]  # unique names are kept
    assert run_labels(["a", "a", "b"], ["x/r1", "y/r2", "z/r3"]) == ["a [r1]", "a [r2]", "b"]
    # A generated label that collides with another run's own name is numbered too.
    got = run_labels(["a", "a", "a [r]"], ["x/r", "y/r", "z/q"])
    assert got == ["a [r] #1", "a [r] #2", "a [r] #3"]
    assert len(set(got)) == 3


def test_report_tool_bad_prediction_file_exits_2(run_dirs, tmp_path, capsys):
    bad = run_dirs[1] / "predictions" / "img_0.npz"
    bad.write_bytes(b"not an npz")
    out = tmp_path / "report"
    assert _load_tool().main([*map(str, run_dirs), "--out", str(out)]) == 2
    (err_line,) = capsys.readouterr().err.strip().splitlines()
    assert err_line.startswith(f"error: {bad}: not a readable prediction file")
    assert not out.exists()


def test_report_tool_out_is_a_file_exits_2(run_dirs, tmp_path, capsys):
    out = tmp_path / "report"
    out.write_text("a file")
    assert _load_tool().main([*map(str, run_dirs), "--out", str(out), "--num-images", "0"]) == 2
    (err_line,) = capsys.readouterr().err.strip().splitlines()
    assert err_line.startswith(f"error: cannot use {out} as the output folder")
    assert out.read_text() == "a file"


def test_qualitative_shows_every_run_in_rows(run_dirs, tmp_path):
    """Each image in a row per run that saved it, image by image; runs without predictions
    are named in the title; one depth colour bar and the class legend for all rows."""
    from cmim_dense.evaluation.report import qualitative_rows
    from cmim_dense.evaluation.visualize import DEPTH_BAR_LABEL, qualitative_figure

    rng = np.random.default_rng(1)
    for i in (0, 2):  # the first run saved two of the second run's three images
        depth = rng.uniform(0.5, 9, (8, 12)).astype(np.float32)
        seg = rng.integers(0, 40, (8, 12))
        rgb = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        save_predictions_npz(
            run_dirs[0] / "predictions" / f"img_{i}.npz", rgb, seg, seg, depth, depth, f"img_{i}"
        )
    third = tmp_path / "work_dirs" / "no_preds"
    write_run_metrics(third, "no_preds", "c.py", "x.pth", {}, {"mIoU": 1.0})
    labels = ["cmim_react", "react", "no_preds"]
    samples, row_labels, title = qualitative_rows([*run_dirs, third], labels, 2)
    assert row_labels == [
        "cmim_react\nimg_0",
        "react\nimg_0",
        "react\nimg_1",
    ]
    assert [s["name"] for s in samples] == ["img_0", "img_0", "img_1"]
    assert "no predictions saved: no_preds" in title
    fig = qualitative_figure(samples, row_labels, title)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == 3 * 5
    assert [ax.get_ylabel() for ax in tiles[::5]] == row_labels
    assert sum(ax.get_label() == DEPTH_BAR_LABEL for ax in fig.axes) == 1
    assert fig.legends and fig.legends[0].get_title().get_text().startswith("NYU40 classes")
    assert qualitative_rows(run_dirs, labels[:2], 0) is None
    assert qualitative_rows([third], labels[2:], 4) is None

    out = tmp_path / "report"
    assert _load_tool().main([*map(str, run_dirs), "--out", str(out), "--num-images", "3"]) == 0
    with Image.open(out / "qualitative.png") as im:  # 5 rows: img_0 x 2, img_1, img_2 x 2
        assert im.size[1] > 100 * (0.7 + 5 * 1.6 + 0.8)
