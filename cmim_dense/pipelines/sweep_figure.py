"""The paper's Fig. 5 across binarizers from demo-chain sweeps, and its table of paired
differences.

Input: one or more sweep folders of ``tools/sweep.py --demo`` (their ``sweep.json``), whose runs
vary ``model.cmim_lambda`` (0 = no CMIM) and other keys, such as ``model.backbone.binarizer``.
Their runs are pooled (a setting and seed found in two folders is refused) and aggregated
again with :func:`~cmim_dense.pipelines.sweep.aggregate`, each setting paired with the lambda = 0
setting of the same other values (its *group*, e.g. one binarizer) on the same seeds.

Figure: x = -log RMSE (RMSE in metres), y = mIoU (%), one colour per group, a hollow dot for
lambda = 0 and a filled one per CMIM lambda, at the mean over seeds with error bars of one
sample standard deviation (none from one seed), dot area linear in the mean pretraining
top-1 (%) over the range shown, an arrow from lambda = 0 to each CMIM setting of the group,
and each seed's pair as small dots joined by a dotted line.

Table, per group, CMIM setting and metric: the lambda = 0 and CMIM means, the paired
difference CMIM - (lambda = 0) as mean ± standard deviation over seeds, and on how many seeds
CMIM is better; a verdict says where CMIM helps beyond the seed spread, where its mean is
better but not beyond the spread, and where it is worse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cmim_dense.evaluation.report import add_size_legend, dot_sizes
from cmim_dense.pipelines.sweep import CHAIN_METRICS, DIGITS, HIGHER_IS_BETTER, aggregate
from cmim_dense.pipelines.sweep import setting_name as _name
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import save_figure_atomic, write_json_atomic, write_text_atomic

LAMBDA_KEY = "model.cmim_lambda"
STEM = "fig5_binarizers"
TABLE_METRICS = ("mIoU", "rmse", "top1")  # -log RMSE: the same verdicts as RMSE
LABELS = {"top1": "top-1 (%)", "mIoU": "mIoU (%)", "rmse": "RMSE (m)", "neg_log_rmse": "-log RMSE"}


def load_sweeps(dirs: Sequence[str | Path]) -> tuple[list[dict], bool]:
    """The runs of every ``DIR/sweep.json`` and whether all those sweeps are complete.

    Raises :class:`InputError` for a missing or unreadable ``sweep.json``, a sweep that is not
    a demo chain (no mIoU), runs without ``model.cmim_lambda``, or a setting and seed that
    two folders both hold.
    """
    runs, complete, seen = [], True, {}
    for folder in dirs:
        path = Path(folder) / "sweep.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{folder}: no sweep.json (run tools/sweep.py --demo first)") from None
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable sweep record ({e})") from e
        if not isinstance(record, dict) or "mIoU" not in record.get("metrics", []):
            raise InputError(f"{path}: not a demo-chain sweep (no mIoU); use tools/sweep.py --demo")
        complete = complete and record.get("complete", True)
        for run in record["runs"]:
            if LAMBDA_KEY not in run["setting"]:
                raise InputError(
                    f"{path}: its runs do not set {LAMBDA_KEY} (--grid {LAMBDA_KEY}=...)"
                )
            key = (_name(run["setting"]), run["seed"])
            if key in seen:
                raise InputError(f"{key[0]} seed {key[1]} is in both {seen[key]} and {folder}")
            seen[key] = folder
            runs.append(run)
    if not runs:
        raise InputError("the sweeps hold no finished run yet")
    return runs, complete


def group_name(setting: dict) -> str:
    """A setting's group, from its keys other than lambda: the first one's value, then
    ``key=value`` for the others (``"irnet"``, ``"react, block=react"``; ``"default"``)."""
    items = [(k, v) for k, v in setting.items() if k != LAMBDA_KEY]
    parts = [str(v) if i == 0 else f"{k.rsplit('.', 1)[-1]}={v}" for i, (k, v) in enumerate(items)]
    return ", ".join(parts) or "default"


def paired_runs(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, left out): a run is kept when its group has a run of every lambda of the sweeps
    at its seed, so that every mean of the figure is over the same seeds as its pair."""
    lambdas = {r["setting"][LAMBDA_KEY] for r in runs}
    present: dict[tuple[str, int], set] = {}
    for r in runs:
        present.setdefault((group_name(r["setting"]), r["seed"]), set()).add(
            r["setting"][LAMBDA_KEY]
        )
    whole = {key for key, lams in present.items() if lams == lambdas}
    kept = [r for r in runs if (group_name(r["setting"]), r["seed"]) in whole]
    return kept, [r for r in runs if (group_name(r["setting"]), r["seed"]) not in whole]


def sweep_fig5(runs: list[dict]) -> dict:
    """Aggregate the :func:`paired_runs` of ``runs`` (records of ``sweep.json``) with lambda = 0
    as each group's reference.

    Returns the :func:`aggregate` record plus ``groups``: per group (in first-seen order) its
    ``name``, ``reference`` (the lambda = 0 setting's entry) and ``cmim`` (entries of its other
    lambdas), and ``left_out``: the runs that wait for their pair.
    """
    if 0 not in {r["setting"][LAMBDA_KEY] for r in runs}:
        raise InputError(f"no run has {LAMBDA_KEY}=0, the reference of Fig. 5")
    kept, left_out = paired_runs(runs)
    if not kept:
        raise InputError("no seed has both lambda = 0 and CMIM finished yet")
    kept = sorted(kept, key=lambda r: (r["setting"][LAMBDA_KEY] != 0, r["seed"]))
    result = aggregate(kept, CHAIN_METRICS, {LAMBDA_KEY: 0})
    result["left_out"] = left_out
    groups: dict[str, dict] = {}
    for entry in result["settings"]:
        name = group_name(entry["setting"])
        group = groups.setdefault(name, dict(name=name, reference=None, cmim=[]))
        if entry["setting"][LAMBDA_KEY] == 0:
            group["reference"] = entry
        else:
            group["cmim"].append(entry)
    result["groups"] = list(groups.values())
    return result


def _err(stat: dict) -> float:
    return 0.0 if math.isnan(stat["std"]) else stat["std"]


def _plot_setting(ax, entry: dict, colour, area: float, baseline: bool) -> None:
    """One setting's dot (``area`` in points^2; hollow for lambda = 0) at its mean
    (-log RMSE, mIoU %) with error bars of one standard deviation over seeds."""
    x, y = entry["neg_log_rmse"], entry["mIoU"]
    ax.errorbar(x["mean"], y["mean"], xerr=_err(x), yerr=_err(y), color=colour, lw=1, capsize=3)
    ax.scatter(
        x["mean"],
        y["mean"],
        s=area,
        facecolors="white" if baseline else colour,
        edgecolors=colour,
        linewidths=1.8,
        zorder=3,
    )


def _plot_pairs(ax, ref: dict, entry: dict, colour, area: dict) -> None:
    """Each seed's (lambda = 0, CMIM) pair as small dots joined by a dotted line, and an arrow
    between the means that stops at the dots' edges (``area``: dot area by ``id`` of entry)."""
    x, y = entry["neg_log_rmse"], entry["mIoU"]
    # each seed's pair, faint: the paired differences the table counts
    for x0, y0, x1, y1 in zip(
        ref["neg_log_rmse"]["values"], ref["mIoU"]["values"], x["values"], y["values"]
    ):
        ax.plot([x0, x1], [y0, y1], color=colour, lw=0.8, ls=":", alpha=0.6)
        ax.scatter([x0], [y0], s=12, facecolors="white", edgecolors=colour, alpha=0.6)
        ax.scatter([x1], [y1], s=12, color=colour, alpha=0.6)
    radius = {key: math.sqrt(area[key]) / 2 for key in (id(ref), id(entry))}
    ax.annotate(
        "",
        (x["mean"], y["mean"]),
        (ref["neg_log_rmse"]["mean"], ref["mIoU"]["mean"]),
        arrowprops=dict(
            arrowstyle="-|>",
            color=colour,
            lw=1.8,
            shrinkA=radius[id(ref)],
            shrinkB=radius[id(entry)],
        ),
        zorder=4,
    )


def _legends(ax, result: dict, group_handles: list, legend_sizes) -> None:
    """The legend of groups (``group_handles``, one per group) and markers, and the legend of
    dot sizes for pretraining top-1 (%) where there is one."""
    lams = sorted({e["setting"][LAMBDA_KEY] for g in result["groups"] for e in g["cmim"]})
    cmim = ", ".join(f"{v:g}" for v in lams)
    handles = [
        *group_handles,
        Line2D([], [], ls="", marker="o", mfc="white", mec="grey", label="lambda = 0"),
        Line2D([], [], ls="", marker="o", color="grey", label=f"CMIM, lambda = {cmim}"),
        Line2D([], [], ls=":", color="grey", label="one seed: lambda = 0 to CMIM"),
    ]
    first = ax.legend(handles=handles, loc="upper left", fontsize=8, title="binarizer")
    ax.add_artist(first)
    add_size_legend(ax, legend_sizes, loc="lower right", fontsize=8)


def figure(result: dict, title_note: str = "") -> Figure:
    """Fig. 5 of :func:`sweep_fig5`'s record (module docstring)."""
    fig = Figure(figsize=(8.0, 6.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    entries = [e for g in result["groups"] for e in ([g["reference"]] if g["reference"] else [])]
    entries += [e for g in result["groups"] for e in g["cmim"]]
    sizes, legend_sizes = dot_sizes([e["top1"]["mean"] for e in entries])
    area = {id(e): s for e, s in zip(entries, sizes)}
    colours = matplotlib.colormaps["tab10"].colors
    handles = []
    for i, group in enumerate(result["groups"]):
        colour = colours[i % len(colours)]
        ref = group["reference"]
        for entry in ([ref] if ref else []) + group["cmim"]:
            baseline = entry is ref
            _plot_setting(ax, entry, colour, area[id(entry)], baseline)
            if ref and not baseline:
                _plot_pairs(ax, ref, entry, colour, area)
        handles.append(Line2D([], [], ls="", marker="o", color=colour, label=group["name"]))
    _legends(ax, result, handles, legend_sizes)
    ax.margins(0.15)
    ax.set_xlabel("-log RMSE  (RMSE in metres; higher is better)")
    ax.set_ylabel("mIoU (%)  (higher is better)")
    seeds = sorted({r["seed"] for r in result["runs"]})
    ax.set_title(
        "Fig. 5 on the synthetic NYUD: mean over seeds "
        f"{', '.join(map(str, seeds))}, bars = ±1 std{title_note}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _mean_std(stat: dict, digits: int) -> str:
    std = "" if math.isnan(stat["std"]) else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std}"


def verdict(stat: dict, metric: str) -> str:
    """``helps`` (better on every seed, mean beyond the spread), ``mean better``, ``worse``
    (mean worse or equal) for a paired-difference statistic of :func:`aggregate`."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    if stat["beyond_spread"]:
        return "helps"
    return "mean better" if sign * stat["mean"] > 0 else "worse"


def markdown(result: dict, partial_note: str = "") -> str:
    """The table of paired differences (module docstring) and the list of where CMIM does
    not help beyond the seed spread."""
    paired = {p["name"]: p for p in result["paired"]}
    lines = [
        "| binarizer | metric | lambda = 0 | CMIM (lambda) | CMIM - (lambda = 0), paired "
        "| seeds better | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    not_helping = []
    for group in result["groups"]:
        for entry in group["cmim"]:
            pair = paired[entry["name"]]
            lam = entry["setting"][LAMBDA_KEY]
            for metric in TABLE_METRICS:
                d = DIGITS[metric]
                stat = pair[metric]
                diffs = ", ".join(f"{v:+.{d}f}" for v in stat["values"])
                std = "" if math.isnan(stat["std"]) else f" ± {stat['std']:.{d}f}"
                word = verdict(stat, metric)
                if word != "helps":
                    not_helping.append(f"{group['name']} {LABELS[metric]}: {word}")
                lines.append(
                    f"| {group['name']} | {LABELS[metric]} "
                    f"| {_mean_std(group['reference'][metric], d)} "
                    f"| {_mean_std(entry[metric], d)} ({lam:g}) "
                    f"| {stat['mean']:+.{d}f}{std} ({diffs}) "
                    f"| {stat['better']}/{stat['n']} | {word} |"
                )
    lines += [
        "",
        "Paired: the same seed with and without CMIM; mean ± sample std of the per-seed "
        "differences (values in brackets). Verdict: *helps* when CMIM is better on every seed "
        "and the mean difference exceeds its std; *mean better* when only the mean is better; "
        "*worse* when the mean is worse. RMSE: lower is better.",
        "",
        "Where CMIM does not help beyond the seed spread: "
        + ("; ".join(not_helping) if not_helping else "nowhere")
        + ".",
    ]
    if partial_note:
        lines = [partial_note, "", *lines]
    return "\n".join(lines) + "\n"


def write_fig5(dirs: Sequence[str | Path], out: str | Path) -> dict[str, Path]:
    """``fig5_binarizers.png``, ``.md`` and ``.json`` in ``out`` from the sweeps in ``dirs``;
    returns {file name: path}. A sweep still running (or cut) is marked *partial*."""
    runs, complete = load_sweeps(dirs)
    result = sweep_fig5(runs)
    result["complete"] = complete = complete and not result["left_out"]
    used = len(result["runs"])
    note = "" if complete else f"\npartial: {used} paired runs"
    partial = ""
    if not complete:
        waiting = len(result["left_out"])
        pairs = {(group_name(r["setting"]), r["seed"]) for r in result["runs"]}
        partial = (
            f"**Partial**: {used} runs, lambda = 0 and CMIM at {len(pairs)} (group, seed) "
            f"pairs; {waiting} finished run(s) wait for their pair; the sweep is not finished."
        )
    fig = figure(result, note)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot use {out} as the output folder ({e.strerror or e})") from e
    return {
        f"{STEM}.png": save_figure_atomic(fig, out / f"{STEM}.png", dpi=120),
        f"{STEM}.md": write_text_atomic(out / f"{STEM}.md", markdown(result, partial)),
        f"{STEM}.json": write_json_atomic(out / f"{STEM}.json", result),
    }
