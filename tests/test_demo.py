"""The demo's data and work-dir bookkeeping: reuse only what was made with the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmim_dense.pipelines.chain import StageTimer
from cmim_dense.pipelines.demo import (
    DATA_STAMP,
    RUN_STAMP,
    DemoSettings,
    check_work_dir,
    ensure_data,
    format_summary,
    run_demo,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"


def _settings(tmp_path, **overrides) -> DemoSettings:
    values = dict(
        work_dir=tmp_path / "work",
        data_dir=tmp_path / "data",
        frames=4,
        size=(24, 32),
        crop_size=8,
        pretrain_config=CONFIGS / "pretrain_crops.py",
        transfer_config=CONFIGS / "nyud_synth.py",
        workers=1,
    )
    return DemoSettings(**(values | overrides))


def _frames(nyud_root) -> int:
    return sum(len(list((nyud_root / "images" / split).iterdir())) for split in ("train", "test"))


def test_ensure_data_generates_once_and_regenerates_on_new_settings(tmp_path):
    settings = _settings(tmp_path)
    nyud, crops = ensure_data(settings, StageTimer())
    assert _frames(nyud) == 4
    assert (crops / "train").is_dir() and (crops / "val").is_dir()
    stamp = settings.data_dir / DATA_STAMP
    assert json.loads(stamp.read_text()) == dict(settings.data_settings(), complete=True)

    labeled = settings.data_dir / "raw" / "nyu_depth_v2_labeled.mat"
    before = labeled.stat().st_mtime_ns
    ensure_data(settings, StageTimer())
    assert labeled.stat().st_mtime_ns == before  # same settings: reused

    more = _settings(tmp_path, frames=6)
    nyud, _ = ensure_data(more, StageTimer())
    assert _frames(nyud) == 6
    assert json.loads(stamp.read_text())["frames"] == 6


def test_ensure_data_redoes_a_cut_generation(tmp_path):
    settings = _settings(tmp_path)
    ensure_data(settings, StageTimer())
    stamp = settings.data_dir / DATA_STAMP
    # as if the run died while generating: the stamp is still marked incomplete
    stamp.write_text(json.dumps(dict(settings.data_settings(), complete=False)))
    labeled = settings.data_dir / "raw" / "nyu_depth_v2_labeled.mat"
    labeled.write_bytes(b"truncated")
    nyud, _ = ensure_data(settings, StageTimer())
    assert labeled.stat().st_size > len(b"truncated")
    assert _frames(nyud) == 4
    assert json.loads(stamp.read_text())["complete"] is True


def test_ensure_data_leaves_unstamped_data_alone(tmp_path):
    settings = _settings(tmp_path)
    own = settings.data_dir / "nyud" / "images" / "train" / "0001.png"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="did not make"):
        ensure_data(settings, StageTimer())
    assert own.read_bytes() == b"a user's file"


def test_work_dir_refuses_other_settings(tmp_path):
    settings = _settings(tmp_path)
    check_work_dir(settings)
    check_work_dir(settings)  # a rerun with the same settings continues
    assert json.loads((settings.work_dir / RUN_STAMP).read_text())["cmim_lambda"] == 1e-4
    with pytest.raises(ValueError, match="other settings"):
        check_work_dir(_settings(tmp_path, cmim_lambda=0.5))


def test_work_dir_refuses_a_run_without_stamp(tmp_path):
    settings = _settings(tmp_path)
    (settings.work_dir / "pretrain_cmim").mkdir(parents=True)  # e.g. from an older version
    with pytest.raises(ValueError, match="unknown settings"):
        check_work_dir(settings)


def test_format_summary_states_stage_times_targets_and_verdicts():
    summary = dict(
        seconds=12.0,
        machine=dict(
            cpu="AMD EPYC 7B13",
            cores=2,
            torch_cpu_capability="AVX2",
            onednn_max_cpu_isa=None,
            openvino_binary_convolution="jit_avx2_u1",
        ),
        report="work/report",
        baselines=dict(mean_depth_rmse=0.9, majority_class_mIoU=5.0),
        stages=[dict(stage="generate 4 frames at 24x32", seconds=3.2)],
        runs=dict(
            cmim=dict(
                top1=60.0,
                mIoU=51.0,
                rmse=0.44,
                neg_log_rmse=0.82,
                meets_targets=True,
                deployed=dict(mIoU=51.02, rmse=0.4411, precision="fp32", reference_backend="torch"),
            ),
            baseline=dict(top1=55.0, mIoU=49.0, rmse=0.5, neg_log_rmse=0.69, meets_targets=False),
        ),
    )
    text = format_summary(summary)
    assert text.splitlines()[0] == (
        "machine: AMD EPYC 7B13, 2 cores; torch kernels AVX2; "
        "OpenVINO BinaryConvolution jit_avx2_u1"
    )
    assert "generate 4 frames at 24x32" in text and text.splitlines()[2].endswith("      3")
    assert "RMSE <= 0.540 m" in text  # 0.6 x the mean-depth RMSE
    assert "cmim      top-1  60.0 %  mIoU  51.0 %" in text and "meets the targets" in text
    assert "baseline  top-1  55.0 %  mIoU  49.0 %" in text and "MISSES the targets" in text
    assert "exported (fp32, whole model in OpenVINO): mIoU  51.0 %  RMSE 0.441 m" in text
    assert "torch backbone: mIoU +0.02 points, RMSE +0.25 %" in text


def test_stage_timer_records_each_stage():
    timer = StageTimer()
    assert timer.run("double", lambda x: 2 * x, 21) == 42
    assert [s["stage"] for s in timer.stages] == ["double"] and timer.stages[0]["seconds"] >= 0


def test_whole_demo_runs_side_by_side_and_summarises(tmp_path):
    """The demo end to end on a tiny set: both chains (in two worker processes), the report,
    the analysis figures and a summary with every stage's time; a rerun reuses every run."""
    pretrain = tmp_path / "pretrain.py"
    pretrain.write_text(
        f"""_base_ = [{str(CONFIGS / "pretrain_crops.py")!r}]
model = dict(backbone=dict(base_channels=8))
loader = dict(batch_size=8, num_workers=0, persistent_workers=False)
train_dataloader = dict(loader, sampler=dict(type="DefaultSampler", shuffle=True), drop_last=True)
test_dataloader = loader
max_epochs = 1
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=max_epochs))
"""
    )
    transfer = tmp_path / "transfer.py"
    transfer.write_text(
        f"""_base_ = [{str(CONFIGS / "nyud_synth.py")!r}]
crop_size = (48, 64)
head = dict(in_channels=64, channels=8, c1_in_channels=8, c1_channels=8)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(base_channels=8),
    seg_head=head,
    depth_head=head,
)
loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
train_dataloader = loader
test_dataloader = loader
max_iters = 3
param_scheduler = []
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
"""
    )
    settings = _settings(
        tmp_path,
        frames=80,
        size=(48, 64),
        crop_size=32,
        pretrain_config=pretrain,
        transfer_config=transfer,
        workers=2,
    )
    summary = run_demo(settings)
    assert set(summary["runs"]) == {"cmim", "baseline"}
    # the machine it ran on, with the kernels' instruction sets (these tests run on x86-64)
    assert summary["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert summary["machine"]["openvino_binary_convolution"].startswith("jit_")
    for run in summary["runs"].values():
        assert 0 <= run["mIoU"] <= 100 and run["rmse"] > 0 and 0 <= run["top1"] <= 100
    stages = [s["stage"] for s in summary["stages"]]
    assert stages[0].startswith("generate 80 frames") and "chains" in stages
    assert {"pretrain_cmim: train", "baseline: test", "report"} <= set(stages)
    deployed = summary["runs"]["cmim"]["deployed"]
    assert deployed["precision"] == "fp32" and 0 <= deployed["mIoU"] <= 100 and deployed["rmse"] > 0
    assert {"cmim: export whole to OpenVINO", "cmim: test the exported model"} <= set(stages)
    record = json.loads((settings.work_dir / "transfer_cmim_ir" / "metrics.json").read_text())
    assert record["run"]["ir"] == str(settings.work_dir / "export_cmim")
    assert len(list((settings.work_dir / "infer_cmim").glob("*_seg.png"))) == 4
    report = settings.work_dir / "report"
    for name in ("report.md", "fig5.png", "analysis/tsne.png", "analysis/analysis.json"):
        assert (report / name).is_file(), name
    again = run_demo(settings)  # everything evaluated: data checks, report, analysis, infer
    assert not any(s["stage"].endswith(": train") for s in again["stages"])
    assert not any("export" in s["stage"] for s in again["stages"])
    assert "cmim: test the exported model" not in [s["stage"] for s in again["stages"]]
    assert again["runs"] == summary["runs"]
