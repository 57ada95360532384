"""Gather evaluated runs into a table, the paper's Fig. 5 and a qualitative grid.

Each run directory holds a ``metrics.json`` written by ``tools/test.py`` through
:func:`write_run_metrics`, and optionally ``predictions/*.npz`` written with
:func:`cmim_dense.evaluation.visualize.save_predictions_npz`.

``metrics.json`` format (strict JSON; NaN/inf written as ``null``)::

    {
      "name": "cmim_react_r18",            # run name: table row and Fig. 5 label
      "config": "configs/nyud_....py",     # test config path
      "checkpoint": "work_dirs/.../x.pth", # evaluated checkpoint
      "meta": {
        "binarizer": "react",              # cmim_dense binarizer name
        "cmim_lambda": 0.2,                # weight of the CMIM loss in pretraining (0 = none)
        "pretrain_top1": 65.1,             # pretraining top-1 in %, or null
        "pretrain_top5": 86.0              # pretraining top-5 in %, or null
      },
      "metrics": {                         # DenseMetric output; a single-task run has
        "mIoU": 30.2, "mAcc": 41.0, "aAcc": 61.5, "IoU.wall": 62.0, ...,   # only one part
        "rmse": 0.71, "neg_log_rmse": 0.342, "abs_rel": 0.21, "delta1": 66.0, ...
      },
      "test_set": {                        # what was tested (absent in older files)
        "split": "test", "frames": 654,    # split name, number of frames
        "sha256": "..."                    # hash of the ordered file list (relative paths)
      },
      "run": {                             # how it was tested (absent in older files)
        "backend": "torch",                # the backbone's backend: torch or openvino
        "precision": "fp32",               # fp32, or int8_heads for an IR with INT8 heads
        "ir_sha256": null,                 # hash of the IR files' hashes (test --ir), or null
        "ir": null,                        # the exported folder (test --ir), or null
        "test_id": "1234-9f3e..."          # also in predictions/TEST_ID: the same test wrote both
      }
    }

Segmentation values are in %, ``rmse`` in metres, ``neg_log_rmse = -ln(rmse)`` (see
:mod:`cmim_dense.evaluation.dense_metric`). Extra keys are kept and ignored by the report.

:func:`read_run_metrics` rejects (:class:`RunDirError`) a file that is not strict JSON (a
``NaN`` or ``Infinity`` literal included), a ``name`` that is not a non-empty string, a ``meta``
that is not an object (or null), a ``metrics`` value that is not a finite number or null, an
``rmse`` that is not > 0, a non-numeric ``cmim_lambda`` / ``pretrain_top1`` / ``pretrain_top5``
and a non-string ``binarizer``. A null value (NaN when written) is shown as missing (``-``,
``null``), never as a number.

Runs tested on different test sets (``test_set``) are refused unless ``allow_mixed``, which
marks each label with its test set; runs whose ``predictions/TEST_ID`` differs from their
``run.test_id`` are refused.

Run labels: a run is labelled by its ``name`` in the table, ``report.json`` (``label``; ``name``
stays as in metrics.json) and Fig. 5. Runs that share a name are labelled
``"name [dir]"`` with ``dir`` the run directory's own name, and labels that still collide get
``" #1"``, ``" #2"``, ... in the order the run directories were given (:func:`run_labels`).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cmim_dense.evaluation.visualize import load_predictions_npz, qualitative_figure
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import save_figure_atomic, write_json_atomic, write_text_atomic

METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
TEST_ID_FILE = "TEST_ID"  # in predictions/: the run.test_id of the test that wrote them
META_KEYS = ("binarizer", "cmim_lambda", "pretrain_top1", "pretrain_top5")
NUMERIC_META_KEYS = META_KEYS[1:]

# (row key, markdown header, format) of the report table, in column order.
COLUMNS = (
    ("label", "run", "{}"),
    ("binarizer", "binarizer", "{}"),
    ("cmim_lambda", "CMIM lambda", "{:g}"),
    ("pretrain_top1", "pretrain top-1 (%)", "{:.2f}"),
    ("mIoU", "mIoU (%)", "{:.2f}"),
    ("aAcc", "aAcc (%)", "{:.2f}"),
    ("rmse", "RMSE (m)", "{:.4f}"),
    ("neg_log_rmse", "-log RMSE", "{:.4f}"),
    ("abs_rel", "abs rel", "{:.4f}"),
    ("delta1", "delta1 (%)", "{:.2f}"),
)
MISSING = "-"

# Fig. 5 dot areas (points^2): data range of top-1 maps linearly onto this range.
SIZE_RANGE = (60.0, 600.0)
DEFAULT_SIZE = 150.0


class RunDirError(InputError):
    """A run directory cannot be reported (no or malformed ``metrics.json``, unreadable
    ``predictions/*.npz``)."""


def run_record(
    name: str,
    config: str,
    checkpoint: str,
    meta: dict[str, Any],
    metrics: dict[str, float],
    test_set: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json`` (format in the module docstring).

    Missing ``meta`` keys of :data:`META_KEYS` are written as null; extra keys are kept.
    """
    full_meta = {k: meta.get(k) for k in META_KEYS}
    full_meta.update(meta)
    record = {
        "name": name,
        "config": str(config),
        "checkpoint": str(checkpoint),
        "meta": full_meta,
        "metrics": dict(metrics),
    }
    if test_set is not None:
        record["test_set"] = dict(test_set)
    if run is not None:
        record["run"] = dict(run)
    return record


def write_run_metrics(run_dir: str | os.PathLike, *args, **kwargs) -> Path:
    """Write ``run_dir/metrics.json`` atomically; arguments as :func:`run_record`."""
    return write_json_atomic(Path(run_dir) / METRICS_FILE, run_record(*args, **kwargs))


def _reject_constant(literal: str) -> None:
    raise ValueError(f"{literal} is not strict JSON; write null for a missing value")


def _json_text(value: Any) -> str:
    """``value`` as a short JSON snippet for error messages."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def read_run_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``run_dir/metrics.json`` (rules in the module docstring).

    Returns the record with ``name`` defaulting to the run dir's name and every key of
    :data:`META_KEYS` in ``meta`` (null when absent). Raises :class:`RunDirError` (one line).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {METRICS_FILE} (evaluate the run with cmim-dense test)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror})") from e
    except ValueError as e:  # also JSONDecodeError, UnicodeDecodeError
        raise RunDirError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise RunDirError(f"{path}: no 'metrics' object")
    record.setdefault("name", Path(run_dir).resolve().name)
    if not isinstance(record["name"], str) or not record["name"]:
        raise RunDirError(
            f"{path}: 'name' must be a non-empty string, got {_json_text(record['name'])}"
        )
    for key, value in record["metrics"].items():
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            raise RunDirError(
                f"{path}: metrics[{key!r}] must be a finite number or null, got {_json_text(value)}"
            )
    rmse = record["metrics"].get("rmse")
    if rmse is not None and rmse <= 0:
        raise RunDirError(f"{path}: metrics['rmse'] must be > 0 metres or null, got {rmse!r}")
    meta = record.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}: 'meta' must be an object or null, got {_json_text(meta)}")
    record["meta"] = {**{k: None for k in META_KEYS}, **meta}
    for key in NUMERIC_META_KEYS:
        value = record["meta"][key]
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            raise RunDirError(
                f"{path}: meta[{key!r}] must be a finite number or null, got {_json_text(value)}"
            )
    binarizer = record["meta"]["binarizer"]
    if binarizer is not None and not isinstance(binarizer, str):
        raise RunDirError(
            f"{path}: meta['binarizer'] must be a string or null, got {_json_text(binarizer)}"
        )
    return record


def run_labels(names: list[str], run_dirs: list[str | os.PathLike]) -> list[str]:
    """Distinct labels for runs named ``names`` in ``run_dirs`` (rule in the module docstring)."""
    counts = Counter(names)
    labels = [
        f"{n} [{Path(d).resolve().name}]" if counts[n] > 1 else n for n, d in zip(names, run_dirs)
    ]
    counts, taken = Counter(labels), set(labels)
    out: list[str] = []
    for label in labels:
        if counts[label] > 1:
            k = 1
            while f"{label} #{k}" in taken:
                k += 1
            label = f"{label} #{k}"
            taken.add(label)
        out.append(label)
    return out


def report_row(
    record: dict[str, Any], run_dir: str | os.PathLike | None = None, label: str | None = None
) -> dict:
    """One table row (keys of :data:`COLUMNS`, plus ``name`` and ``run_dir``) from a
    metrics.json record; ``label`` defaults to the record's name."""
    meta, metrics = record["meta"], record["metrics"]
    row: dict[str, Any] = {
        "label": record["name"] if label is None else label,
        "name": record["name"],
        "binarizer": meta.get("binarizer"),
        "cmim_lambda": _number(meta.get("cmim_lambda")),
        "pretrain_top1": _number(meta.get("pretrain_top1")),
    }
    row.update({key: _number(metrics.get(key)) for key, _, _ in COLUMNS[4:]})
    if row["neg_log_rmse"] is None and row["rmse"] is not None and row["rmse"] > 0:
        row["neg_log_rmse"] = -math.log(row["rmse"])  # same definition as DenseMetric
    if run_dir is not None:
        row["run_dir"] = str(run_dir)
    return row


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (missing values as ``-``)."""

    def cell(row: dict, key: str, fmt: str) -> str:
        value = row.get(key)
        return MISSING if value is None else fmt.format(value).replace("|", r"\|")

    lines = [
        "| " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def dot_sizes(top1: list[float | None]) -> tuple[list[float], list[float]]:
    """Dot areas for each run and the top-1 values to show in the size legend."""
    known = [t for t in top1 if t is not None]
    if not known:
        return [DEFAULT_SIZE] * len(top1), []
    lo, hi = min(known), max(known)
    small, big = SIZE_RANGE

    def area(t: float) -> float:
        return (small + big) / 2 if hi == lo else small + (t - lo) / (hi - lo) * (big - small)

    legend = sorted({lo, (lo + hi) / 2, hi})
    return [DEFAULT_SIZE if t is None else area(t) for t in top1], [(t, area(t)) for t in legend]


def add_size_legend(ax, legend_sizes: list[tuple[float, float]], loc: str, fontsize=None) -> None:
    """The legend of dot areas (:func:`dot_sizes`' second value: (top-1 %, area in pt^2)) on
    ``ax``, titled "pretraining top-1 (%)"; nothing when no run has a top-1."""
    handles = [
        Line2D([], [], ls="", marker="o", color="grey", markersize=math.sqrt(s), label=f"{t:.1f}")
        for t, s in legend_sizes
    ]
    if handles:
        ax.legend(
            handles=handles,
            title="pretraining top-1 (%)",
            loc=loc,
            fontsize=fontsize,
            labelspacing=1.4,
            borderpad=1.0,
        )


def fig5_figure(rows: list[dict]) -> Figure:
    """The CMIM paper's Fig. 5: x = -log RMSE, y = mIoU, dot area = pretraining top-1."""
    fig = Figure(figsize=(7.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    on_plot = [r["mIoU"] is not None and r["neg_log_rmse"] is not None for r in rows]
    plotted = [r for r, ok in zip(rows, on_plot) if ok]
    skipped = [r["label"] for r, ok in zip(rows, on_plot) if not ok]
    sizes, legend_sizes = dot_sizes([r["pretrain_top1"] for r in plotted])
    colours = matplotlib.colormaps["tab10"].colors
    for i, (row, size) in enumerate(zip(plotted, sizes)):
        colour = colours[i % len(colours)]
        known = row["pretrain_top1"] is not None
        ax.scatter(
            row["neg_log_rmse"],
            row["mIoU"],
            s=size,
            facecolors=colour if known else "none",
            edgecolors=colour,
            linewidths=1.5,
            alpha=0.8,
        )
        ax.annotate(
            row["label"],
            (row["neg_log_rmse"], row["mIoU"]),
            xytext=(8, 6),
            textcoords="offset points",
            fontsize=9,
        )
    add_size_legend(ax, legend_sizes, loc="best")
    notes = []
    if any(r["pretrain_top1"] is None for r in plotted):
        notes.append(f"hollow dot: pretraining top-1 unknown (default size {DEFAULT_SIZE:g})")
    if skipped:
        notes.append("not plotted (no mIoU or no RMSE): " + ", ".join(skipped))
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=8, va="bottom")
    if plotted:
        ax.margins(0.2)
    ax.set_xlabel("-log RMSE  (-ln of RMSE in metres; higher is better)")
    ax.set_ylabel("mIoU (%)  (higher is better)")
    ax.set_title("NYUD-v2: segmentation vs depth (dot size = pretraining top-1)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.04 * len(notes), 1, 1))
    return fig


def find_predictions(run_dirs: list[str | os.PathLike]) -> list[tuple[int, dict[str, Path]]]:
    """(index, {image name: npz file}) of every run dir with ``predictions/*.npz``, in order."""
    found = []
    for i, run_dir in enumerate(run_dirs):
        files = sorted((Path(run_dir) / PREDICTIONS_DIR).glob("*.npz"))
        if files:
            found.append((i, {f.stem: f for f in files}))
    return found


def qualitative_rows(
    run_dirs: list[str | os.PathLike], labels: list[str], num_images: int
) -> tuple[list[dict[str, Any]], list[str], str] | None:
    """The rows of ``qualitative.png``: every run with predictions on each of the first
    ``num_images`` image names (sorted, over all runs), image by image, one row per run.

    Returns (samples, row labels: run label and image name on two lines, title), or None
    when no run saved predictions; the title names the runs that have none. Raises
    :class:`RunDirError` for an unreadable file.
    """
    found = find_predictions(run_dirs)
    if not found or num_images <= 0:
        return None
    names = sorted(set().union(*(files for _, files in found)))[:num_images]
    samples, row_labels = [], []
    for name in names:
        for index, files in found:
            if name in files:
                samples += load_samples([files[name]])
                row_labels.append(f"{labels[index]}\n{samples[-1]['name']}")
    title = f"test images x runs: {len(names)} images, each in a row per run"
    without = [labels[i] for i in range(len(run_dirs)) if i not in dict(found)]
    if without:
        title += f"\nno predictions saved: {', '.join(without)}"
    return samples, row_labels, title


def load_samples(files: list[Path]) -> list[dict[str, Any]]:
    """:func:`~cmim_dense.evaluation.visualize.load_predictions_npz` of each file; raises
    :class:`RunDirError` naming the file if one cannot be read."""
    samples = []
    for path in files:
        try:
            samples.append(load_predictions_npz(path))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            reason = " ".join(str(e).split())  # keep the error on one line
            raise RunDirError(f"{path}: not a readable prediction file ({reason})") from e
    return samples


def test_set_label(test_set: dict[str, Any] | None) -> str:
    """``split/frames/sha256[:8]`` of a ``metrics.json`` ``test_set``, ``unknown`` without one."""
    if not isinstance(test_set, dict):
        return "unknown"
    sha = test_set.get("sha256") or "?"
    return f"{test_set.get('split')}/{test_set.get('frames')}/{sha[:8]}"


def check_test_sets(
    records: list[dict], run_dirs: list[str | os.PathLike], allow_mixed: bool
) -> list[str] | None:
    """The test-set label of every run when the runs were tested on different test sets and
    ``allow_mixed`` is set, None when they agree (runs without a recorded set are not compared).

    Raises:
        RunDirError: different test sets without ``allow_mixed``.
    """
    labels = [test_set_label(rec.get("test_set")) for rec in records]
    known = dict.fromkeys(lab for lab in labels if lab != "unknown")
    if len(known) <= 1:
        return None
    if not allow_mixed:
        first = {lab: d for lab, d in zip(reversed(labels), reversed(run_dirs))}
        sets = "; ".join(f"{lab} ({first[lab]})" for lab in known)
        raise RunDirError(
            f"the runs were tested on different test sets (split/frames/hash): {sets}; "
            "pass --allow-mixed to report them together, marked"
        )
    return labels


def check_predictions(record: dict, run_dir: str | os.PathLike) -> None:
    """Raise :class:`RunDirError` if ``predictions/`` and ``metrics.json`` of a run dir come
    from different tests (their ``TEST_ID`` and ``run.test_id`` differ)."""
    stamp = Path(run_dir) / PREDICTIONS_DIR / TEST_ID_FILE
    test_id = (record.get("run") or {}).get("test_id")
    if not stamp.is_file() and test_id is None:
        return  # written before test ids existed
    found = stamp.read_text().strip() if stamp.is_file() else None
    if found != test_id:
        raise RunDirError(
            f"{run_dir}: {PREDICTIONS_DIR}/ ({found or 'no test id'}) and {METRICS_FILE} "
            f"({test_id or 'no test id'}) come from different tests; run the test again"
        )


def build_report(
    run_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    num_images: int = 4,
    allow_mixed: bool = False,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.json``, ``fig5.png`` and (if any run saved predictions)
    ``qualitative.png`` (every such run, :func:`qualitative_rows`) to ``out_dir``; returns
    {file name: path}.

    Runs tested on different test sets are refused unless ``allow_mixed``, which appends each
    run's test set to its label. Every input is read and every figure drawn before anything is
    written, so bad input (:class:`RunDirError`, or an ``out_dir`` that cannot be a folder:
    ``InputError``) leaves ``out_dir`` untouched.
    """
    records = [read_run_metrics(d) for d in run_dirs]
    sets = check_test_sets(records, run_dirs, allow_mixed)
    labels = run_labels([rec["name"] for rec in records], run_dirs)
    if sets is not None:
        labels = [f"{lab} [test set {s}]" for lab, s in zip(labels, sets)]
    rows = [report_row(rec, d, lab) for rec, d, lab in zip(records, run_dirs, labels)]
    for row, rec in zip(rows, records):
        row["test_set"] = rec.get("test_set")
    figures = {"fig5.png": (fig5_figure(rows), 120)}
    for index, _ in find_predictions(run_dirs):
        check_predictions(records[index], run_dirs[index])
    qualitative = qualitative_rows(run_dirs, labels, num_images)
    if qualitative is not None:
        samples, row_labels, title = qualitative
        figures["qualitative.png"] = (qualitative_figure(samples, row_labels, title), 100)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot use {out} as the output folder ({e.strerror or e})") from e
    written = {
        "report.md": write_text_atomic(
            out / "report.md",
            "# NYUD-v2 transfer report\n\n"
            + ("**Mixed test sets**: compare rows of the same test set only.\n\n" if sets else "")
            + markdown_table(rows),
        ),
        "report.json": write_json_atomic(out / "report.json", rows),
    }
    for file_name, (fig, dpi) in figures.items():
        written[file_name] = save_figure_atomic(fig, out / file_name, dpi=dpi)
    return written
