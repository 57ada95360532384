"""The one-command demo on the embedded synthetic NYUD-format data.

Stages (each skipped when its output is already there, so a rerun after a crash or
Ctrl-C continues where it stopped; a stage cut mid-training resumes from its checkpoint):

1. generate the synthetic labelled ``.mat`` + object crops, and convert it to an NYUD tree
   (regenerated when the data folder was made with other settings);
2. for CMIM on and off, the pretrain -> transfer chain (:func:`run_chain`): pretrain the binary
   ResNet-18 on the crops, evaluate top-1, train the frozen-backbone DeepLab heads, evaluate;
3. write the report (table, Fig. 5, qualitative grid) and the paper's analysis figures of the
   two pretrained backbones (t-SNE, similarity matrices, per-layer MI bound);
4. deploy the CMIM transfer model (:func:`deploy_cmim`): export it whole to OpenVINO, evaluate
   that IR on the test split with the same metrics, and run ``cmim-dense infer`` with it on
   the first test frames; then compare the runs with trivial baselines.

Every stage's wall time is kept; the summary prints them as a table and stores them.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mmengine.config import Config

from cmim_dense.apis import infer_to_folder
from cmim_dense.bench.machine import machine, machine_line
from cmim_dense.deploy.runtime import identity, ir_sha256, read_stamp
from cmim_dense.engine.analysis import analyze
from cmim_dense.engine.config import load_config, resolve_config
from cmim_dense.engine.export import export_config
from cmim_dense.engine.runs import test
from cmim_dense.evaluation.baselines import majority_class_baseline, mean_depth_baseline
from cmim_dense.evaluation.report import METRICS_FILE, build_report, read_run_metrics
from cmim_dense.nyud_io.convert import prepare_nyud
from cmim_dense.nyud_io.synth import generate_synth_nyud
from cmim_dense.pipelines.chain import (
    StageTimer,
    data_options,
    last_checkpoint,
    run_chain,
    transfer_cfg_options,
)
from cmim_dense.utils.allocator import retain_freed_memory
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import write_json_atomic
from cmim_dense.utils.processes import in_fresh_process

MIOU_TARGET = 50.0
RMSE_FRACTION_TARGET = 0.6
DATA_STAMP = "synth_settings.json"
RUN_STAMP = "demo_settings.json"
PRETRAIN_CONFIG = "demo/pretrain_crops.py"  # configs of the package (resolve_config)
TRANSFER_CONFIG = "demo/nyud_synth.py"
INFER_FRAMES = 4  # test frames the demo runs `cmim-dense infer` on, with the exported model


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults are the README's demo, on the package's demo configs."""

    work_dir: Path
    pretrain_config: Path = field(default_factory=lambda: Path(resolve_config(PRETRAIN_CONFIG)))
    transfer_config: Path = field(default_factory=lambda: Path(resolve_config(TRANSFER_CONFIG)))
    data_dir: Path = Path("data/synth_nyud")
    # Frames at the transfer resolution (the frozen-head results grow with the number of
    # training frames more than with their size); the object crops come from the same frames.
    frames: int = 2400
    size: tuple[int, int] = (120, 160)
    crop_size: int = 32
    seed: int = 0
    cmim_lambda: float = 1e-4
    workers: int = 2
    # Run the CMIM and baseline chains side by side, one process and one thread each: on two
    # cores that finishes sooner than one two-thread process after the other.
    parallel: bool = True

    def data_settings(self) -> dict:
        """What the generated data depends on."""
        return dict(
            frames=self.frames, size=list(self.size), crop_size=self.crop_size, seed=self.seed
        )

    def run_settings(self) -> dict:
        """What the demo's results depend on."""
        return dict(self.data_settings(), cmim_lambda=self.cmim_lambda)


def _read_stamp(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_data(settings: DemoSettings, timer: StageTimer) -> tuple[Path, Path]:
    """Generate and convert the synthetic set unless it is there with the same settings;
    returns (nyud_root, crops_root).

    A settings stamp marked incomplete is written before generating and marked complete at the
    end, so a generation cut by a crash is redone. Only folders the demo stamped are deleted:
    a data folder that holds data without a stamp is refused.
    """
    raw, nyud = settings.data_dir / "raw", settings.data_dir / "nyud"
    stamp = settings.data_dir / DATA_STAMP
    previous = _read_stamp(stamp)
    wanted = dict(settings.data_settings(), complete=True)
    if previous is None and (raw.exists() or nyud.exists()):
        raise InputError(
            f"{settings.data_dir} holds data the demo did not make (no {DATA_STAMP}); "
            "delete it or choose another --data-dir"
        )
    if previous != wanted:
        for folder in (raw, nyud):
            shutil.rmtree(folder, ignore_errors=True)
        write_json_atomic(stamp, dict(wanted, complete=False))
        size = "x".join(map(str, settings.size))
        timer.run(
            f"generate {settings.frames} frames at {size}",
            generate_synth_nyud,
            raw,
            settings.frames,
            settings.seed,
            settings.size,
            settings.crop_size,
            workers=settings.workers,
        )
    labeled = raw / "nyu_depth_v2_labeled.mat"
    timer.run(
        "convert to an NYUD tree",
        prepare_nyud,
        labeled,
        raw / "splits.mat",
        raw / "classMapping40.mat",
        nyud,
        progress=False,
    )
    if previous != wanted:
        write_json_atomic(stamp, wanted)
    return nyud, raw / "crops"


def check_work_dir(settings: DemoSettings) -> None:
    """Claim ``settings.work_dir`` for these settings; refuse one that holds another run's.

    Finished stages are reused on a rerun, so a work dir must not mix settings: a folder with
    content but no settings stamp is refused too.
    """
    work_dir = settings.work_dir
    stamp = work_dir / RUN_STAMP
    previous = _read_stamp(stamp)
    if previous is None and work_dir.is_dir() and any(work_dir.iterdir()):
        previous = "unknown settings"
    if previous is not None and previous != settings.run_settings():
        raise InputError(
            f"{work_dir} holds a demo run with other settings ({previous}); "
            "choose another --work-dir or delete it"
        )
    write_json_atomic(stamp, settings.run_settings())


def _chain_worker() -> None:
    """Worker set-up of a side-by-side chain: the tools' allocator settings (a spawned process
    starts with malloc's defaults) and one intra-op thread (torch and OpenVINO)."""
    import torch

    retain_freed_memory()
    torch.set_num_threads(1)


def _chain_stages(
    settings: DemoSettings, roots: tuple[Path, Path], name: str, cmim_lambda: float
) -> list[dict]:
    """One variant's chain; returns its stage times (it may run in a worker process)."""
    timer = StageTimer()
    run_chain(
        settings.pretrain_config,
        settings.transfer_config,
        settings.work_dir / f"pretrain_{name}",
        settings.work_dir / f"transfer_{name}",
        roots,
        name,
        timer,
        pretrain_options={"model.cmim_lambda": cmim_lambda},
    )
    return timer.stages


def deploy_cmim(settings: DemoSettings, roots: tuple[Path, Path], timer: StageTimer) -> dict:
    """Export the CMIM transfer model whole (fp32, the config's static input size), evaluate the
    IR on the test split (``transfer_cmim_ir/metrics.json``) and write ``cmim-dense infer``
    outputs of the first :data:`INFER_FRAMES` test frames with it (``infer_cmim/``). An export
    of this checkpoint and config, and an evaluation of that export, are reused. Returns the
    IR's test metrics record.

    Raises:
        InputError: no test frame, or one that ``infer`` could not read.
    """
    config = str(settings.transfer_config)
    checkpoint = str(last_checkpoint(settings.work_dir / "transfer_cmim"))
    options = transfer_cfg_options(roots[0], settings.work_dir / "pretrain_cmim")
    export_dir = settings.work_dir / "export_cmim"
    expected = identity(load_config(config, options), checkpoint)
    if _export_identity(export_dir) != expected:
        timer.run(
            "cmim: export whole to OpenVINO",
            export_config,
            config,
            checkpoint,
            export_dir,
            cfg_options=options,
        )
    ir_dir = settings.work_dir / "transfer_cmim_ir"
    tested = read_run_metrics(ir_dir) if (ir_dir / METRICS_FILE).is_file() else {}
    if tested.get("run", {}).get("ir_sha256") != ir_sha256(export_dir, read_stamp(export_dir)):
        timer.run(
            "cmim: test the exported model",
            test,
            config,
            checkpoint,
            str(ir_dir),
            options,
            name="cmim_ir",
            ir=str(export_dir),
        )
    frames = sorted((roots[0] / "images" / "test").glob("*.png"))[:INFER_FRAMES]
    unread = timer.run(
        f"cmim: infer {len(frames)} test frames",
        infer_to_folder,
        config,
        checkpoint,
        [str(f) for f in frames],
        settings.work_dir / "infer_cmim",
        ir=str(export_dir),
        cfg_options=options,
    )
    if not frames or unread:
        raise InputError(f"infer could not read the test frames of {roots[0]} (see above)")
    return read_run_metrics(ir_dir)


def _export_identity(folder: Path) -> dict | None:
    """The identity recorded in an export folder, or None without a readable one."""
    try:
        return read_stamp(folder).get("identity")
    except InputError:
        return None


def run_demo(settings: DemoSettings) -> dict:
    """Run every stage; returns a summary with the targets' outcome and the stage times."""
    timer = StageTimer()
    check_work_dir(settings)
    roots = ensure_data(settings, timer)
    variants = {"cmim": settings.cmim_lambda, "baseline": 0.0}
    run_dirs = {name: settings.work_dir / f"transfer_{name}" for name in variants}
    jobs = [(settings, roots, name, cmim_lambda) for name, cmim_lambda in variants.items()]
    if settings.parallel:
        timer.log(f"running the {', '.join(variants)} chains side by side")
        # spawn: a forked child would inherit the parent's OpenMP state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(jobs), context, initializer=_chain_worker) as pool:
            stages = timer.run("chains", lambda: list(pool.map(_chain_stages, *zip(*jobs))))
    else:
        stages = [in_fresh_process(_chain_stages, *job) for job in jobs]
    timer.stages.extend(stage for chain in stages for stage in chain)
    report_dir = settings.work_dir / "report"
    timer.run("report", build_report, list(run_dirs.values()), report_dir)
    timer.run(
        "analysis (t-SNE, similarity, per-layer MI bound)",
        analyze,
        str(settings.pretrain_config),
        [str(last_checkpoint(settings.work_dir / f"pretrain_{name}")) for name in variants],
        report_dir / "analysis",
        names=list(variants),
        cfg_options=data_options(roots[1], ("test",)),
    )
    # Last in this process: processes that ran torch training and OpenVINO have died of SIGSEGV
    # (README, Tests); the chains run in processes of their own.
    deployed = deploy_cmim(settings, roots, timer)
    num_classes = Config.fromfile(settings.transfer_config).model.seg_head.num_classes
    depth_ref = mean_depth_baseline(roots[0])
    seg_ref = majority_class_baseline(roots[0], num_classes)
    summary = dict(
        seconds=time.perf_counter() - timer.start,
        machine=machine(probe_here=True),  # the demo's end: this process trains no more
        report=str(report_dir),
        baselines=dict(mean_depth_rmse=depth_ref["rmse"], majority_class_mIoU=seg_ref["mIoU"]),
        stages=timer.stages,
        runs={name: _run_summary(settings, name, depth_ref["rmse"]) for name in variants},
    )
    summary["runs"]["cmim"]["deployed"] = dict(
        mIoU=deployed["metrics"]["mIoU"],
        rmse=deployed["metrics"]["rmse"],
        precision=deployed["run"]["precision"],
        export=str(settings.work_dir / "export_cmim"),
        reference_backend=read_run_metrics(run_dirs["cmim"]).get("run", {}).get("backend", "?"),
    )
    return summary


def _run_summary(settings: DemoSettings, name: str, mean_depth_rmse: float) -> dict:
    """One chain's figures (top-1 %, mIoU %, RMSE m, -log RMSE) and whether they meet the
    targets, ``mean_depth_rmse`` (m) being the mean-depth baseline's RMSE."""
    metrics = read_run_metrics(settings.work_dir / f"transfer_{name}")["metrics"]
    top1 = read_run_metrics(settings.work_dir / f"pretrain_{name}")["metrics"]["top1"]
    return dict(
        top1=top1,
        mIoU=metrics["mIoU"],
        rmse=metrics["rmse"],
        neg_log_rmse=metrics["neg_log_rmse"],
        meets_targets=bool(
            metrics["mIoU"] >= MIOU_TARGET
            and metrics["rmse"] <= RMSE_FRACTION_TARGET * mean_depth_rmse
        ),
    )


def format_summary(summary: dict) -> str:
    """The demo's closing table: stage times, then the runs against the targets."""
    ref = summary["baselines"]
    lines = [f"machine: {machine_line(summary['machine'])}", "stage times (s):"]
    lines += [f"  {s['stage']:42s} {s['seconds']:7.0f}" for s in summary["stages"]]
    lines += [
        f"demo finished in {summary['seconds']:.0f} s; report: {summary['report']}",
        f"baselines: majority class mIoU {ref['majority_class_mIoU']:.1f} %, "
        f"mean training depth RMSE {ref['mean_depth_rmse']:.3f} m",
        f"targets: mIoU >= {MIOU_TARGET:.0f} %, RMSE <= "
        f"{RMSE_FRACTION_TARGET * ref['mean_depth_rmse']:.3f} m "
        f"({RMSE_FRACTION_TARGET:g} x the mean-depth RMSE)",
    ]
    for name, run in summary["runs"].items():
        verdict = "meets the targets" if run["meets_targets"] else "MISSES the targets"
        lines.append(
            f"  {name:9s} top-1 {run['top1']:5.1f} %  mIoU {run['mIoU']:5.1f} %  "
            f"RMSE {run['rmse']:.3f} m  -log RMSE {run['neg_log_rmse']:.3f}  {verdict}"
        )
        if "deployed" in run:
            lines.append(_deployed_line(run))
    return "\n".join(lines)


def _deployed_line(run: dict) -> str:
    """The exported model's figures beside the PyTorch-head run's, as differences."""
    ir = run["deployed"]
    return (
        f"    exported ({ir['precision']}, whole model in OpenVINO): mIoU {ir['mIoU']:5.1f} %  "
        f"RMSE {ir['rmse']:.3f} m; minus PyTorch heads on the {ir['reference_backend']} "
        f"backbone: mIoU {ir['mIoU'] - run['mIoU']:+.2f} points, "
        f"RMSE {100 * (ir['rmse'] / run['rmse'] - 1):+.2f} %"
    )
