"""The one-command demo on the embedded synthetic NYUD-format data.

Stages (each skipped when its output is already there, so a rerun after a crash or
Ctrl-C continues where it stopped; a stage cut mid-training resumes from its checkpoint):

1. generate the synthetic labelled ``.mat`` + object crops, and convert it to an NYUD tree;
2. for CMIM on and off: pretrain the binary ResNet-18 on the crops, evaluate top-1;
3. train the frozen-backbone DeepLab heads on the synthetic NYUD tree, evaluate;
4. write the report (table, Fig. 5, qualitative grid) and compare with trivial baselines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mmengine.config import Config

from cmim_dense.datasets.prepare import prepare_nyud
from cmim_dense.datasets.synth_nyud import generate_synth_nyud
from cmim_dense.engine.launch import test, train
from cmim_dense.evaluation.baselines import majority_class_baseline, mean_depth_baseline
from cmim_dense.evaluation.report import METRICS_FILE, build_report, read_run_metrics

PRETRAIN_CONFIG = "configs/demo/pretrain_crops.py"
TRANSFER_CONFIG = "configs/demo/nyud_synth.py"
MIOU_TARGET = 50.0
RMSE_FRACTION_TARGET = 0.5


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults are the README's demo."""

    work_dir: Path
    data_dir: Path = Path("data/synth_nyud")
    frames: int = 400
    # Rendered at 240x320 so the object crops keep their texture; the transfer config
    # resizes frames to 120x160.
    size: tuple[int, int] = (240, 320)
    crop_size: int = 48
    seed: int = 0
    cmim_lambda: float = 0.4
    config_root: Path = Path(".")


def _log(start: float, message: str) -> None:
    print(f"[demo {time.perf_counter() - start:6.0f} s] {message}", flush=True)


def ensure_data(settings: DemoSettings, start: float) -> tuple[Path, Path]:
    """Generate and convert the synthetic set unless present; returns (nyud_root, crops_root)."""
    raw = settings.data_dir / "raw"
    labeled = raw / "nyu_depth_v2_labeled.mat"
    if not (labeled.is_file() and (raw / "crops" / "val").is_dir()):
        _log(start, f"generating {settings.frames} synthetic frames into {raw}")
        generate_synth_nyud(raw, settings.frames, settings.seed, settings.size, settings.crop_size)
    nyud = settings.data_dir / "nyud"
    _log(start, f"converting to an NYUD tree in {nyud}")
    prepare_nyud(labeled, raw / "splits.mat", raw / "classMapping40.mat", nyud, progress=False)
    return nyud, raw / "crops"


def _data_options(root: Path) -> dict:
    return {
        f"{split}_dataloader.dataset.data_root": str(root) for split in ("train", "val", "test")
    }


def _last_checkpoint(work_dir: Path) -> Path:
    pointer = work_dir / "last_checkpoint"
    if not pointer.is_file():
        raise FileNotFoundError(f"{work_dir} has no checkpoint after training")
    return Path(pointer.read_text().strip())


def _train_and_test(config: Path, work_dir: Path, options: dict, name: str) -> dict:
    """Train (resuming a cut run) and evaluate, unless ``work_dir`` is already evaluated."""
    if (work_dir / METRICS_FILE).is_file():
        return read_run_metrics(work_dir)
    train(str(config), str(work_dir), resume="auto", cfg_options=options)
    test(str(config), str(_last_checkpoint(work_dir)), str(work_dir), options, name=name)
    return read_run_metrics(work_dir)


def run_variant(settings: DemoSettings, name: str, cmim_lambda: float, roots, start) -> Path:
    """Pretrain + transfer one variant; returns its transfer run directory."""
    nyud_root, crops_root = roots
    pre_dir = settings.work_dir / f"pretrain_{name}"
    _log(start, f"[{name}] pretraining on the object crops (CMIM lambda = {cmim_lambda})")
    options = {**_data_options(crops_root), "model.cmim_lambda": cmim_lambda}
    record = _train_and_test(
        settings.config_root / PRETRAIN_CONFIG, pre_dir, options, f"pretrain_{name}"
    )
    _log(start, f"[{name}] pretraining top-1 {record['metrics']['top1']:.1f} %")
    transfer_dir = settings.work_dir / f"transfer_{name}"
    _log(start, f"[{name}] training the DeepLab heads on the frozen backbone")
    options = {
        **_data_options(nyud_root),
        "model.backbone.pretrained": str(_last_checkpoint(pre_dir)),
    }
    record = _train_and_test(settings.config_root / TRANSFER_CONFIG, transfer_dir, options, name)
    metrics = record["metrics"]
    _log(start, f"[{name}] mIoU {metrics['mIoU']:.1f} %, RMSE {metrics['rmse']:.3f} m")
    return transfer_dir


def run_demo(settings: DemoSettings) -> dict:
    """Run every stage; returns a summary with the targets' outcome."""
    start = time.perf_counter()
    roots = ensure_data(settings, start)
    variants = {"cmim": settings.cmim_lambda, "baseline": 0.0}
    run_dirs = {
        name: run_variant(settings, name, lam, roots, start) for name, lam in variants.items()
    }
    _log(start, "writing the report")
    report_dir = settings.work_dir / "report"
    build_report(list(run_dirs.values()), report_dir)
    num_classes = Config.fromfile(settings.config_root / TRANSFER_CONFIG).model.seg_head.num_classes
    depth_ref = mean_depth_baseline(roots[0])
    seg_ref = majority_class_baseline(roots[0], num_classes)
    summary = dict(
        seconds=time.perf_counter() - start,
        report=str(report_dir),
        baselines=dict(mean_depth_rmse=depth_ref["rmse"], majority_class_mIoU=seg_ref["mIoU"]),
        runs={},
    )
    for name, run_dir in run_dirs.items():
        metrics = read_run_metrics(run_dir)["metrics"]
        summary["runs"][name] = dict(
            mIoU=metrics["mIoU"],
            rmse=metrics["rmse"],
            neg_log_rmse=metrics["neg_log_rmse"],
            meets_targets=bool(
                metrics["mIoU"] >= MIOU_TARGET
                and metrics["rmse"] <= RMSE_FRACTION_TARGET * depth_ref["rmse"]
            ),
        )
    return summary


def format_summary(summary: dict) -> str:
    """The demo's closing table."""
    ref = summary["baselines"]
    lines = [
        f"demo finished in {summary['seconds']:.0f} s; report: {summary['report']}",
        f"baselines: majority class mIoU {ref['majority_class_mIoU']:.1f} %, "
        f"mean training depth RMSE {ref['mean_depth_rmse']:.3f} m",
        f"targets: mIoU >= {MIOU_TARGET:.0f} %, RMSE <= "
        f"{RMSE_FRACTION_TARGET * ref['mean_depth_rmse']:.3f} m (half the mean-depth RMSE)",
    ]
    for name, run in summary["runs"].items():
        verdict = "meets the targets" if run["meets_targets"] else "MISSES the targets"
        lines.append(
            f"  {name:9s} mIoU {run['mIoU']:5.1f} %  RMSE {run['rmse']:.3f} m  "
            f"-log RMSE {run['neg_log_rmse']:.3f}  {verdict}"
        )
    return "\n".join(lines)
