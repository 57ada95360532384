"""Seed sweeps: a grid of ``--cfg-options`` values x seeds, run one after another, aggregated.

Two kinds of run:
    pretraining: one config trained and tested per (setting, seed); metric ``top1`` (%).
    demo chain: the demo's pretrain -> transfer chain per (setting, seed) on the demo's data;
        metrics ``top1`` (pretraining, %), ``mIoU`` (%), ``rmse`` (m), ``neg_log_rmse``.
The grid's keys go to the pretraining config; in a chain, ``transfer_grid`` keys go to the
transfer config (pretraining runs are shared by the transfer settings that reuse them), and
``shared_grid`` keys go to both: a key both configs must agree on, such as
``model.backbone.binarizer`` (the transfer loads the pretrained backbone strictly, so a
backbone of another binarizer is refused). The seed is ``randomness.seed`` of every run.
Seeds are the outermost loop, so a cut sweep holds every setting at its first seeds, and
``sweep.json`` is rewritten after every run (``complete`` false until the last). A run already
evaluated is skipped and a cut one resumes, so a cut sweep continues where it stopped. Each
chain run runs in a fresh process, started once more when it dies of a signal: processes that
ran torch training and OpenVINO have died of SIGSEGV (README, Tests). Each run folder is
stamped with the full settings of its run, and a folder stamped otherwise is refused rather
than reused.

Aggregates, per setting and metric: mean, sample standard deviation and the per-seed values.
Against a reference (the first setting of the grid unless given), every other setting gets
the paired per-seed differences (same seed), their mean and standard deviation, and the count
of seeds on which it is better. A reference that names only some keys (``cmim_lambda=0``) is
taken per group: each setting is compared with the one that has the reference's values and its
own values of the other keys. A setting is called better *beyond the seed spread* when it is
better on every seed and the mean difference exceeds the differences' standard deviation.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cmim_dense.engine.config import load_config, parse_cfg_options
from cmim_dense.pipelines.chain import StageTimer, run_chain, train_and_test
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import (
    save_figure_atomic,
    to_jsonable,
    write_json_atomic,
    write_text_atomic,
)
from cmim_dense.utils.processes import in_fresh_process

# Metrics per kind of run, and whether higher is better.
HIGHER_IS_BETTER = {"top1": True, "mIoU": True, "rmse": False, "neg_log_rmse": True}
PRETRAIN_METRICS = ("top1",)
CHAIN_METRICS = ("top1", "mIoU", "rmse", "neg_log_rmse")


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["KEY=V1,V2", ...]`` -> {KEY: [V1, V2]}, values parsed as mmengine's --cfg-options."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise InputError(f"--grid wants KEY=V1,V2,..., got {item!r}")
        if key in grid:
            raise InputError(f"--grid key {key} given twice")
        parsed = parse_cfg_options([f"{key}={values}"])[key]
        grid[key] = parsed if isinstance(parsed, list) else [parsed]
        if any(v in ("", None) for v in grid[key]):
            raise InputError(f"--grid {item!r}: an empty value; give KEY=V1,V2,...")
    return grid


def settings_of(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in grid order ([{}] for an empty grid)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def setting_name(setting: dict) -> str:
    """A folder-safe name: ``cmim_lambda=0.05,tau=0.1`` (the last part of each key)."""
    if not setting:
        return "default"
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in setting.items()]
    return ",".join(parts).replace("/", "_")


@dataclass
class SweepSpec:
    """What to sweep.

    Attributes:
        grid: pretraining ``--cfg-options`` key -> values.
        seeds: seeds of every setting.
        work_dir: where runs and the aggregate files go.
        config: the pretraining config (pretraining sweeps and chains).
        transfer_config: set for a chain sweep: the transfer config.
        transfer_grid: transfer ``--cfg-options`` key -> values (chains).
        shared_grid: key -> values set in both the pretraining and the transfer config (chains).
        cfg_options, transfer_options: fixed options of every pretraining / transfer run.
        roots: (NYUD tree, crops ImageFolder) of a chain sweep.
        reference: the setting the others are compared with (default: the first).
        fresh_process_per_run: run each chain run in a freshly spawned process
            (:func:`~cmim_dense.utils.processes.in_fresh_process`); False runs it in this
            process, e.g. under a debugger.
    """

    grid: dict[str, list]
    seeds: list[int]
    work_dir: Path
    config: Path
    transfer_config: Path | None = None
    transfer_grid: dict[str, list] = field(default_factory=dict)
    shared_grid: dict[str, list] = field(default_factory=dict)
    cfg_options: dict = field(default_factory=dict)
    transfer_options: dict = field(default_factory=dict)
    roots: tuple[Path, Path] | None = None
    reference: dict | None = None
    fresh_process_per_run: bool = True

    @property
    def chain(self) -> bool:
        return self.transfer_config is not None

    def runs(self) -> list[tuple[dict, dict, dict, int]]:
        """(shared setting, pretraining setting, transfer setting, seed) of every run, seeds
        outermost."""
        return [
            (shared, pre, tr, seed)
            for seed in self.seeds
            for shared in settings_of(self.shared_grid)
            for pre in settings_of(self.grid)
            for tr in settings_of(self.transfer_grid)
        ]


def run_sweep(spec: SweepSpec, timer: StageTimer | None = None) -> dict:
    """Run (or reuse) every run of ``spec`` and write ``sweep.json``, ``sweep.md`` and
    ``sweep.png`` into ``spec.work_dir``; returns the ``sweep.json`` record."""
    if not spec.seeds:
        raise InputError("a sweep needs at least one seed")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise InputError(f"seeds repeat: {spec.seeds}")
    if spec.chain and spec.roots is None:
        raise InputError("a chain sweep needs the data roots")
    if spec.shared_grid and not spec.chain:
        raise InputError("a grid of both stages needs a chain sweep (--demo)")
    overlap = set(spec.shared_grid) & (set(spec.grid) | set(spec.transfer_grid))
    if overlap:
        raise InputError(f"keys in the grid of both stages and of one: {', '.join(overlap)}")
    timer = timer or StageTimer()
    _check_settings(spec)
    metrics = CHAIN_METRICS if spec.chain else PRETRAIN_METRICS
    runs = spec.runs()
    if spec.reference is not None:
        check_reference([_setting(*run[:3]) for run in runs], spec.reference)
    records = []
    for i, run in enumerate(runs):
        if spec.chain and spec.fresh_process_per_run:
            record, stages = _run_isolated(spec, run, timer)
            timer.stages.extend(stages)
        else:
            record = _run_one(spec, *run, timer)
        records.append(record)
        result = aggregate(records, metrics, spec.reference)
        result.update(stages=timer.stages, complete=i == len(runs) - 1)
        write_outputs(result, spec.work_dir)
    return result


def _check_settings(spec: SweepSpec) -> None:
    """Load the config of every run before the first one trains, so that a bad value of the
    grid (``abc`` for a number, an unknown key) stops the sweep at once, not hours later."""
    for shared, pre, tr, seed in spec.runs():
        load_config(spec.config, {**spec.cfg_options, **shared, **pre, "randomness.seed": seed})
        if spec.chain:
            load_config(spec.transfer_config, {**spec.transfer_options, **shared, **tr})


RUN_STAMP = "sweep_run.json"


def _claim(run_dir: Path, settings: dict) -> None:
    """Stamp ``run_dir`` with the full settings of its run; refuse a folder made otherwise.

    Run folders are named by the grid values alone, so the stamp is what tells a finished run
    of these settings from one with other fixed options (or a colliding short name).
    """
    stamp = run_dir / RUN_STAMP
    wanted = to_jsonable(settings)
    if stamp.is_file():
        previous = json.loads(stamp.read_text())
        if previous != wanted:
            raise InputError(
                f"{run_dir} holds a run with other settings ({previous}); use another --work-dir"
            )
        return
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise InputError(f"{run_dir} holds a run the sweep did not stamp; use another --work-dir")
    write_json_atomic(stamp, wanted)


def _setting(shared: dict, pre: dict, tr: dict) -> dict:
    """The run's setting as recorded: shared and pretraining keys, then ``transfer:`` keys."""
    return {**shared, **pre, **{f"transfer:{k}": v for k, v in tr.items()}}


def _run_isolated(spec: SweepSpec, run: tuple, timer: StageTimer) -> tuple[dict, list[dict]]:
    """:func:`_timed_run` in a fresh process, started once more (resuming from the run's last
    checkpoint) when that process died of a signal; a second death stops the sweep."""
    try:
        return in_fresh_process(_timed_run, spec, *run)
    except BrokenProcessPool:
        timer.log(f"the process of run {_setting(*run[:3])}, seed {run[3]} died; starting it again")
        return in_fresh_process(_timed_run, spec, *run)


def _timed_run(spec: SweepSpec, *run) -> tuple[dict, list[dict]]:
    """:func:`_run_one` with a timer of its own: (record, stage times)."""
    timer = StageTimer()
    return _run_one(spec, *run, timer), timer.stages


def _run_one(
    spec: SweepSpec, shared: dict, pre: dict, tr: dict, seed: int, timer: StageTimer
) -> dict:
    seed_option = {"randomness.seed": seed}
    pre = {**shared, **pre}
    pre_name = f"{setting_name(pre)}_s{seed}"
    pre_dir = spec.work_dir / "pretrain" / pre_name
    pre_options = {**spec.cfg_options, **pre, **seed_option}
    _claim(pre_dir, dict(config=str(spec.config), options=pre_options))
    setting = _setting({}, pre, tr)
    if not spec.chain:
        record = train_and_test(spec.config, pre_dir, pre_options, pre_name, timer)
        metrics = {"top1": record["metrics"]["top1"]}
        return dict(setting=setting, seed=seed, metrics=metrics, run_dirs=[str(pre_dir)])
    tr_name = f"{setting_name(pre)}__{setting_name(tr)}_s{seed}"
    tr_dir = spec.work_dir / "transfer" / tr_name
    tr_options = {**spec.transfer_options, **shared, **tr, **seed_option}
    _claim(tr_dir, dict(config=str(spec.transfer_config), options=tr_options, pretrain=pre_name))
    chain = run_chain(
        spec.config,
        spec.transfer_config,
        pre_dir,
        tr_dir,
        spec.roots,
        tr_name,
        timer,
        pretrain_options=pre_options,
        transfer_options=tr_options,
    )
    transfer = chain["transfer"]["metrics"]
    metrics = dict(
        top1=chain["pretrain"]["metrics"]["top1"],
        mIoU=transfer["mIoU"],
        rmse=transfer["rmse"],
        neg_log_rmse=transfer["neg_log_rmse"],
    )
    return dict(setting=setting, seed=seed, metrics=metrics, run_dirs=[str(pre_dir), str(tr_dir)])


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def check_reference(settings: list[dict], reference: dict) -> None:
    """Refuse a ``reference`` whose keys are not all in the grid, or that is none of
    ``settings`` (once its values replace theirs)."""
    unknown = set(reference) - set(settings[0])
    if unknown:
        raise InputError(f"reference keys {', '.join(sorted(unknown))} are not in the grid")
    names = {setting_name(s) for s in settings}
    if not any(setting_name({**s, **reference}) in names for s in settings):
        raise InputError(f"reference {setting_name(reference)} matches no setting of the grid")


def aggregate(records: list[dict], metrics: Sequence[str], reference: dict | None = None) -> dict:
    """Means, spreads and paired differences of ``records`` (see the module docstring)."""
    names = list(dict.fromkeys(setting_name(r["setting"]) for r in records))
    by_setting = {n: [r for r in records if setting_name(r["setting"]) == n] for n in names}
    reference = records[0]["setting"] if reference is None else reference
    # each setting's reference: the reference's values, the setting's own for the other keys;
    # a reference not run yet (a sweep in progress) gives no pair
    ref_of = {
        n: setting_name({**runs[0]["setting"], **reference}) for n, runs in by_setting.items()
    }
    settings = []
    for name, runs in by_setting.items():
        entry = dict(name=name, setting=runs[0]["setting"], seeds=[r["seed"] for r in runs])
        for metric in metrics:
            values = [r["metrics"][metric] for r in runs]
            entry[metric] = dict(mean=statistics.fmean(values), std=_std(values), values=values)
        settings.append(entry)
    paired = []
    for name, runs in by_setting.items():
        ref_name = ref_of[name]
        if name == ref_name:
            continue
        reference_runs = {r["seed"]: r for r in by_setting.get(ref_name, [])}
        matched = [(r, reference_runs[r["seed"]]) for r in runs if r["seed"] in reference_runs]
        if not matched:
            continue
        entry = dict(name=name, reference=ref_name, seeds=[r["seed"] for r, _ in matched])
        for metric in metrics:
            diffs = [r["metrics"][metric] - ref["metrics"][metric] for r, ref in matched]
            sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
            better = sum(sign * d > 0 for d in diffs)
            mean, std = statistics.fmean(diffs), _std(diffs)
            entry[metric] = dict(
                mean=mean,
                std=std,
                values=diffs,
                better=better,
                n=len(diffs),
                beyond_spread=bool(better == len(diffs) and len(diffs) > 1 and sign * mean > std),
            )
        paired.append(entry)
    return dict(
        metrics=list(metrics),
        reference=setting_name(reference),
        runs=records,
        settings=settings,
        paired=paired,
    )


def _fmt(stat: dict, digits: int) -> str:
    values = ", ".join(f"{v:.{digits}f}" for v in stat["values"])
    std = "" if math.isnan(stat["std"]) else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std} ({values})"


DIGITS = {"top1": 1, "mIoU": 1, "rmse": 3, "neg_log_rmse": 3}


def markdown(result: dict) -> str:
    """``sweep.md``: mean ± std (per-seed values) per setting, then the paired differences."""
    metrics = result["metrics"]
    lines = ["# Sweep", "", "mean ± std (per-seed values)", ""]
    lines.append("| setting | seeds | " + " | ".join(metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for entry in result["settings"]:
        cells = [_fmt(entry[m], DIGITS[m]) for m in metrics]
        seeds = ", ".join(map(str, entry["seeds"]))
        lines.append(f"| {entry['name']} | {seeds} | " + " | ".join(cells) + " |")
    if result["paired"]:
        lines += [
            "",
            f"paired differences against `{result['reference']}` (same seed): "
            "mean ± std (per-seed values), better on k of n seeds",
            "",
        ]
        lines.append("| setting | against | " + " | ".join(metrics) + " |")
        lines.append("|---|---|" + "---|" * len(metrics))
        for entry in result["paired"]:
            cells = []
            for m in metrics:
                stat = entry[m]
                mark = " **beyond spread**" if stat["beyond_spread"] else ""
                cells.append(f"{_fmt(stat, DIGITS[m])}, {stat['better']}/{stat['n']}{mark}")
            lines.append(f"| {entry['name']} | {entry['reference']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Better beyond the seed spread: better on every seed and the mean "
            "difference larger than the differences' standard deviation.",
        ]
    return "\n".join(lines) + "\n"


def figure(result: dict) -> Figure:
    """``sweep.png``: one panel per metric; per-seed dots and mean ± std per setting."""
    metrics = result["metrics"]
    fig = Figure(figsize=(4.2 * len(metrics), 4.0))
    FigureCanvasAgg(fig)
    names = [e["name"] for e in result["settings"]]
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for x, entry in enumerate(result["settings"]):
            stat = entry[metric]
            ax.scatter([x] * len(stat["values"]), stat["values"], s=18, alpha=0.6, color="grey")
            err = 0.0 if math.isnan(stat["std"]) else stat["std"]
            ax.errorbar(x, stat["mean"], yerr=err, fmt="o", color="C0", capsize=5)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        ax.set_title(f"{metric} ({better} is better)")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def write_outputs(result: dict, work_dir: Path) -> None:
    """Write ``sweep.json``, ``sweep.md`` and ``sweep.png`` atomically."""
    write_json_atomic(work_dir / "sweep.json", result)
    write_text_atomic(work_dir / "sweep.md", markdown(result))
    save_figure_atomic(figure(result), work_dir / "sweep.png", dpi=110)
