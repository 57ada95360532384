"""tools/gpu_check.py on CPU: argument parsing, the report on given figures, the no-CUDA exit,
and every config the check uses building (and running) at the sizes the check gives it.

The GPU stages themselves need CUDA; here their plumbing runs on the CPU at tiny sizes.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.optim import OptimWrapper
from torch import nn

from cmim_dense.bench import gpu_check
from cmim_dense.bench.gpu_check import pretrain as pretrain_module
from cmim_dense.bench.gpu_check import transfer as transfer_module
from cmim_dense.binary import BinaryConv2d
from cmim_dense.cli import gpu_check as gpu_check_cli
from cmim_dense.engine.config import load_config
from cmim_dense.registry import DATASETS
from cmim_dense.utils.io import to_jsonable

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "gpu_check.py"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tool() -> dict:
    """The globals of ``tools/gpu_check.py`` (``main``, ``parse_args``)."""
    return runpy.run_path(str(TOOL), run_name="tools_gpu_check")


# -- arguments and the no-CUDA exit -----------------------------------------------------------


def test_parse_args_defaults():
    args = _tool()["parse_args"]([])
    assert args.out == "work_dirs/gpu_check"
    assert args.stages == ["pretrain", "transfer", "nccl", "agreement"]
    assert (args.pretrain_batch, args.transfer_batch, args.iters) == (256, 8, 30)


def test_parse_args_options():
    argv = ["--out", "x/y", "--stages", "nccl", "agreement", "--pretrain-batch", "64"]
    args = _tool()["parse_args"]([*argv, "--transfer-batch", "4", "--iters", "12"])
    assert args.out == "x/y"
    assert args.stages == ["nccl", "agreement"]
    assert (args.pretrain_batch, args.transfer_batch, args.iters) == (64, 4, 12)


@pytest.mark.parametrize("argv", [["--stages", "speed"], ["--iters", "0"], ["--out"]])
def test_parse_args_rejects(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool()["parse_args"](argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_tool_stages_are_the_modules():
    assert tuple(gpu_check_cli.STAGES) == gpu_check.STAGES


def test_no_cuda_returns_2_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _tool()["main"](["--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"error: {gpu_check.NO_CUDA}"]
    assert not (tmp_path / "out").exists()


def test_no_cuda_command_line_prints_one_line(tmp_path):
    """The real command, CUDA hidden: exit 2, exactly one stderr line, nothing written."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: {gpu_check.NO_CUDA}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("agreement", [True, False])
def test_tool_runs_the_check_and_returns_its_verdict(monkeypatch, capsys, tmp_path, agreement):
    calls = []

    def fake_run(out_dir, **kwargs):
        calls.append((out_dir, kwargs))
        return dict(checks=dict(nccl=True, agreement=agreement))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "run_gpu_check", fake_run)
    argv = ["--out", str(tmp_path), "--stages", "nccl", "agreement", "--iters", "12"]
    assert _tool()["main"](argv) == (0 if agreement else 1)
    assert calls == [
        (
            str(tmp_path),
            dict(stages=["nccl", "agreement"], pretrain_batch=256, transfer_batch=8, iters=12),
        )
    ]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"report: {tmp_path}/gpu_check.md, {tmp_path}/gpu_check.json"
    assert out[1] == ("all checks passed" if agreement else "FAILED: agreement")


def test_run_gpu_check_needs_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpu_check.run_gpu_check(tmp_path, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


# -- the report ---------------------------------------------------------------------------------


def _figures() -> dict:
    """Figures of a whole run as the stages return them: the bf16 pretraining batch halved
    once, the NCCL run failed, one NaN (becomes null in JSON)."""
    run = dict(
        nonfinite_losses=0, last_loss=7.1, requested_batch=256, halved=False, batch=256, step_ms=1
    )
    runs = [
        dict(run, dtype="bfloat16", memory_format="contiguous", images_per_s=2000.0,
             peak_memory_mib=30000.0, batch=128, halved=True),
        dict(run, dtype="bfloat16", memory_format="channels_last", images_per_s=2400.0,
             peak_memory_mib=29000.0, batch=128, halved=True),
        dict(run, dtype="float16", memory_format="contiguous", images_per_s=2300.0,
             peak_memory_mib=28000.0),
        dict(run, dtype="float16", memory_format="channels_last", images_per_s=2200.0,
             peak_memory_mib=27500.0, nonfinite_losses=2, last_loss=float("nan")),
    ]  # fmt: skip
    ratio = dict(ratio_batch=128, plain_step_ms=100.0, cmim_step_ms=112.0, cmim_step_ratio=1.12)
    return dict(
        environment=dict(
            gpu="NVIDIA H100 80GB HBM3",
            gpu_memory_mib=81559.0,
            torch="2.4.0+cu124",
            cuda="12.4",
            cudnn=90100,
            nccl="2.20.5",
            started="2025-01-01T00:00:00+00:00",
        ),
        pretrain=dict(
            config=gpu_check.PRETRAIN_CONFIG,
            size=224,
            iters=30,
            requested_batch=256,
            runs=runs,
            amp=dict(bfloat16=dict(runs[1], **ratio), float16=dict(runs[2], **ratio)),
            skipped={},
            nonfinite_losses=2,
            seconds=95.0,
        ),
        transfer=dict(
            config=gpu_check.TRANSFER_CONFIG,
            dtype="bfloat16",
            height=480,
            width=640,
            output_stride=8,
            freeze_backbone=True,
            iters=30,
            images_per_s=133.3,
            peak_memory_mib=12000.0,
            step_ms=60.0,
            nonfinite_losses=0,
            last_loss=4.2,
            batch=8,
            requested_batch=8,
            halved=False,
            ratio_batch=8,
            frozen_step_ms=60.0,
            finetune_step_ms=150.0,
            frozen_finetune_ratio=0.4,
            max_iters=30000,
            full_run_h=0.5,
            seconds=20.0,
        ),
        nccl=dict(
            passed=False,
            backend="nccl",
            returncode=1,
            timed_out=False,
            seconds=31.0,
            iterations=0,
            expected_iterations=10,
            batch=8,
            losses=[],
            work_dir="/w/nccl_run",
            command="bash tools/dist_train.sh ...",
            output_tail="NCCL error: unhandled system error",
        ),
        agreement=dict(
            passed=True,
            config=gpu_check.PRETRAIN_CONFIG,
            device="cuda",
            batch=8,
            size=224,
            layers=16,
            same_input_equal=16,
            same_input_max_abs_diff=0.0,
            full_forward_equal=15,
            full_forward_max_abs_diff=4.0,
            sign_flips=1,
            binary_inputs=12845056,
            loss_cmim_cpu=2.533566,
            loss_cmim_device=2.533570,
            loss_cmim_rel_diff=1.6e-6,
            loss_cls_rel_diff=2e-7,
            rtol=1e-4,
            seconds=6.0,
        ),
        seconds=152.0,
    )


def test_checks_of_the_figures():
    figures = _figures()
    assert gpu_check.checks(figures) == dict(finite_losses=False, nccl=False, agreement=True)
    figures["pretrain"]["nonfinite_losses"] = 0
    figures["nccl"]["passed"] = True
    assert all(gpu_check.checks(figures).values())
    assert gpu_check.checks(dict(agreement=dict(error="RuntimeError: x"))) == dict(agreement=False)


def test_write_report_writes_every_figure(tmp_path):
    figures = _figures()
    figures["checks"] = gpu_check.checks(figures)
    figures["passed"] = False
    json_path, md_path = gpu_check.write_report(figures, tmp_path / "report")
    assert json_path == tmp_path / "report" / "gpu_check.json"
    assert md_path == tmp_path / "report" / "gpu_check.md"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "gpu_check.json",
        "gpu_check.md",
    ]  # no temporary files left

    saved = json.loads(json_path.read_text())
    assert saved == to_jsonable(figures)
    assert saved["environment"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert saved["pretrain"]["runs"][3]["last_loss"] is None  # NaN -> null
    assert saved["pretrain"]["amp"]["bfloat16"]["cmim_step_ratio"] == 1.12
    assert saved["transfer"]["full_run_h"] == 0.5
    assert saved["checks"] == dict(finite_losses=False, nccl=False, agreement=True)

    md = md_path.read_text()
    lines = md.splitlines()
    assert "- GPU: NVIDIA H100 80GB HBM3 (81,559 MiB)" in lines
    assert "- torch 2.4.0+cu124, CUDA 12.4, cuDNN 90100, NCCL 2.20.5" in lines
    assert "- result: FAILED; finite_losses FAILED; nccl FAILED; agreement ok" in lines
    assert lines.index("| stage | setting | figure |") + 1 == lines.index("| --- | --- | --- |")
    expected_rows = [
        "| pretrain | bfloat16, contiguous, batch 128 (halved from 256 to fit), 224x224 "
        "| 2,000 img/s, peak 30,000 MiB |",
        "| pretrain | bfloat16, channels_last (kept), batch 128 (halved from 256 to fit), 224x224 "
        "| 2,400 img/s, peak 29,000 MiB |",
        "| pretrain | float16, contiguous (kept), batch 256, 224x224 "
        "| 2,300 img/s, peak 28,000 MiB |",
        "| pretrain | bfloat16, CMIM step / plain step, batch 128 | 1.120 (112.0 / 100.0 ms) |",
        "| pretrain | non-finite losses | 2 |",
        "| pretrain | stage time | 95 s |",
        "| transfer | bfloat16, batch 8, 480x640, output stride 8, frozen backbone "
        "| 133.3 img/s, peak 12,000 MiB |",
        "| transfer | frozen step / fine-tune step, batch 8 | 0.400 (60.0 / 150.0 ms) |",
        "| transfer | full 30,000-iteration run at batch 8 | 0.50 h |",
        "| nccl | tools/dist_train.sh, 1 process, nccl, batch 8 (world size 1: SyncBN and the "
        "CMIM all_gather run no collective) | FAILED: exit code 1, 0/10 iterations in 31 s |",
        "| agreement | binary conv outputs, same input (fp32, batch 8 at 224x224, CPU vs cuda) "
        "| 16/16 exactly equal |",
        "| agreement | binary conv outputs, full forward "
        "| 15/16 exactly equal, 1 sign flips in 12,845,056 binary inputs |",
        "| agreement | CMIM loss (within 0.0001 relative) "
        "| CPU 2.533566, cuda 2.533570, rel diff 1.60e-06: passed |",
    ]
    for row in expected_rows:
        assert row in lines, row
    table = [line for line in lines if line.startswith("| ")]
    # header and rule, then pretrain, transfer, nccl, agreement rows (each with its stage time)
    assert len(table) == 2 + 8 + 5 + 2 + 4
    # the failed run's output follows the table
    assert lines.index("## nccl: end of the output") > lines.index(expected_rows[-1])
    assert "NCCL error: unhandled system error" in lines


def test_write_report_shows_a_stage_error_and_passes(tmp_path):
    figures = dict(
        environment=dict(gpu="GPU X", torch="2.4", cuda="12.4"),
        pretrain=dict(error="RuntimeError: out of GPU memory even at batch 1 (requested 256)"),
        agreement=dict(_figures()["agreement"]),
    )
    figures["checks"] = gpu_check.checks(figures)
    figures["passed"] = all(figures["checks"].values())
    _, md_path = gpu_check.write_report(figures, tmp_path)
    lines = md_path.read_text().splitlines()
    assert (
        "| pretrain | error | RuntimeError: out of GPU memory even at batch 1 (requested 256) |"
        in (lines)
    )
    assert "- result: FAILED; pretrain FAILED; agreement ok" in lines
    assert not any(line.startswith("| transfer") or line.startswith("| nccl") for line in lines)
    figures["pretrain"] = _figures()["pretrain"]
    figures["pretrain"]["nonfinite_losses"] = 0
    figures["checks"] = gpu_check.checks(figures)
    figures["passed"] = all(figures["checks"].values())
    _, md_path = gpu_check.write_report(figures, tmp_path)
    assert "- result: all checks passed; finite_losses ok; agreement ok" in (
        md_path.read_text().splitlines()
    )
    assert json.loads((tmp_path / "gpu_check.json").read_text())["passed"] is True


# -- pieces of the stages ---------------------------------------------------------------------


def test_fit_batch_halves_until_it_fits():
    tried, said = [], []

    def run(batch: int) -> dict:
        tried.append(batch)
        if batch > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return dict(images_per_s=float(batch))

    result = gpu_check.fit_batch(run, 256, said.append)
    assert tried == [256, 128, 64]
    assert result == dict(images_per_s=64.0, batch=64, requested_batch=256, halved=True)
    assert said == [
        "  batch 256 does not fit in GPU memory; halving to 128",
        "  batch 128 does not fit in GPU memory; halving to 64",
    ]
    assert gpu_check.fit_batch(run, 8)["halved"] is False

    def never(batch: int) -> dict:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="even at batch 1 "):
        gpu_check.fit_batch(never, 4)
    with pytest.raises(RuntimeError, match="even at batch 2 "):
        gpu_check.fit_batch(never, 4, min_batch=2)


def test_time_steps_counts_non_finite_losses():
    values = iter([1.0, float("nan"), 2.0, float("inf"), 3.0])
    result = gpu_check.time_steps(lambda: torch.tensor(next(values)), 4, warmup=1, device="cpu")
    assert result["nonfinite_losses"] == 2
    assert result["last_loss"] == 3.0
    assert result["step_ms"] >= 0


def test_optim_wrapper_cfg_switches_to_amp():
    cfg = gpu_check.load_cfg(gpu_check.PRETRAIN_CONFIG)
    for dtype in gpu_check.AMP_DTYPES:
        wrapper = gpu_check.optim_wrapper_cfg(cfg, dtype)
        assert wrapper["type"] == "AmpOptimWrapper"
        assert wrapper["dtype"] == dtype
        assert wrapper["loss_scale"] == "dynamic"
        assert wrapper["optimizer"] == dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert gpu_check.optim_wrapper_cfg(cfg, None)["type"] == "OptimWrapper"
    assert cfg.optim_wrapper.type == "OptimWrapper"  # the config itself is left alone


def test_binary_batches_have_the_real_shapes():
    batch = gpu_check.classification_batch(4, 32, 1000, "cpu", channels_last=True)
    first, second = batch(), batch()
    assert first["inputs"].shape == (4, 3, 32, 32)
    assert first["inputs"].is_contiguous(memory_format=torch.channels_last)
    assert first["label"].shape == (4,) and int(first["label"].max()) < 1000
    assert first["index"].tolist() == [0, 1, 2, 3] and second["index"].tolist() == [4, 5, 6, 7]
    dense = gpu_check.dense_batch(2, 48, 64, 40, "cpu")()
    assert dense["inputs"].shape == (2, 3, 48, 64)
    sample = dense["data_samples"][0]
    assert sample.gt_sem_seg.data.shape == (1, 48, 64) and int(sample.gt_sem_seg.data.max()) < 40
    assert sample.gt_depth_map.data.shape == (1, 48, 64)
    assert float(sample.gt_depth_map.data.min()) >= 0.5


def test_pretrain_stage_halves_keeps_the_faster_format_and_times_cmim(monkeypatch):
    """Stage 1's bookkeeping with the GPU work faked: batch 256 does not fit, 64 does; bf16
    is faster in channels_last, fp16 contiguous; the ratio runs in the kept format."""
    speed = {
        ("bfloat16", "contiguous"): 2000.0,
        ("bfloat16", "channels_last"): 2400.0,
        ("float16", "contiguous"): 2300.0,
        ("float16", "channels_last"): 2200.0,
    }
    ratios = []

    def fake_step(cfg, dtype, batch, size, fmt, device):
        assert (size, device) == (224, "cpu")
        return (dtype, fmt)

    def fake_measure(step, batch, iters, warmup, device):
        if batch > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return dict(images_per_s=speed[step], peak_memory_mib=100.0, nonfinite_losses=0)

    def fake_ratio(cfg, dtype, batch, size, fmt, iters, warmup, device):
        ratios.append((dtype, batch, fmt, iters))
        return dict(plain_step_ms=100.0, cmim_step_ms=110.0, cmim_step_ratio=1.1)

    monkeypatch.setattr(pretrain_module, "pretrain_step", fake_step)
    monkeypatch.setattr(pretrain_module, "measure_throughput", fake_measure)
    monkeypatch.setattr(pretrain_module, "cmim_ratio", fake_ratio)
    lines = []
    figures = gpu_check.pretrain_stage(device="cpu", log=lines.append)
    assert [(r["dtype"], r["memory_format"], r["batch"]) for r in figures["runs"]] == [
        ("bfloat16", "contiguous", 64),
        ("bfloat16", "channels_last", 64),
        ("float16", "contiguous", 64),
        ("float16", "channels_last", 64),
    ]
    assert all(r["halved"] and r["requested_batch"] == 256 for r in figures["runs"])
    assert figures["amp"]["bfloat16"]["memory_format"] == "channels_last"
    assert figures["amp"]["float16"]["memory_format"] == "contiguous"
    assert figures["amp"]["bfloat16"]["images_per_s"] == 2400.0
    assert figures["amp"]["float16"]["cmim_step_ratio"] == 1.1
    assert ratios == [("bfloat16", 64, "channels_last", 15), ("float16", 64, "contiguous", 15)]
    assert figures["nonfinite_losses"] == 0 and figures["requested_batch"] == 256
    assert lines[:2] == [
        "  batch 256 does not fit in GPU memory; halving to 128",
        "  batch 128 does not fit in GPU memory; halving to 64",
    ]
    assert "keeps channels_last" in lines[4]


def test_transfer_stage_reports_the_full_schedule(monkeypatch):
    """Stage 2's bookkeeping with the GPU work faked: AMP dtype chosen, config figures read,
    30k iterations at 250 ms a step take 2.08 h."""

    def fake_step(cfg, dtype, batch, height, width, device):
        assert (dtype, batch, height, width) == ("bfloat16", 8, 480, 640)

    def fake_measure(step, batch, iters, warmup, device):
        return dict(images_per_s=32.0, peak_memory_mib=9000.0, step_ms=250.0, nonfinite_losses=0)

    def fake_ratio(cfg, dtype, batch, height, width, iters, warmup, device):
        return dict(frozen_step_ms=250.0, finetune_step_ms=500.0, frozen_finetune_ratio=0.5)

    monkeypatch.setattr(transfer_module, "transfer_step", fake_step)
    monkeypatch.setattr(transfer_module, "measure_throughput", fake_measure)
    monkeypatch.setattr(transfer_module, "transfer_ratio", fake_ratio)
    monkeypatch.setattr(
        pretrain_module, "supported_dtypes", lambda *a: (["bfloat16", "float16"], {})
    )
    figures = gpu_check.transfer_stage(device="cpu", log=lambda line: None)
    assert figures["dtype"] == "bfloat16" and figures["output_stride"] == 8
    assert figures["freeze_backbone"] is True and figures["batch"] == 8
    assert figures["max_iters"] == 30000
    assert figures["full_run_h"] == pytest.approx(30000 * 0.25 / 3600)
    assert figures["frozen_finetune_ratio"] == 0.5 and figures["halved"] is False


# -- the configs the check uses, at the sizes it uses ------------------------------------------


def test_pretrain_config_builds_and_runs_at_224():
    """The ImageNet IR-Net + CMIM classifier (stages 1 and 4) and its lambda = 0 twin take a
    224x224 batch; one fp32 training step of it through an mmengine wrapper is finite."""
    cfg = gpu_check.load_cfg(gpu_check.PRETRAIN_CONFIG)
    torch.manual_seed(0)
    model = gpu_check.build_pretrain_model(cfg)
    plain = gpu_check.build_pretrain_model(cfg, cmim=False)
    assert model.num_classes == cfg.model.num_classes == 1000
    assert model.cmim_lambda == cfg.model.cmim_lambda > 0
    assert model.cmim.critic == cfg.model.cmim.critic
    assert plain.cmim is None and plain.cmim_lambda == 0.0
    assert sum(isinstance(m, BinaryConv2d) for m in model.modules()) == 16
    batch = gpu_check.classification_batch(2, 224, cfg.model.num_classes, "cpu")()
    model.train()
    with torch.no_grad():
        losses = model(**batch, mode="loss")
    assert set(losses) == {"loss_cls", "loss_cmim"}
    assert all(math.isfinite(float(v)) for v in losses.values())

    # the step the stage times (fp32 here; the stage's AMP wrapper needs CUDA), at 64x64
    step = gpu_check.pretrain_step(cfg, None, 2, 64, "channels_last", "cpu")
    figures = gpu_check.measure_throughput(step, 2, iters=1, warmup=1, device="cpu")
    assert figures["nonfinite_losses"] == 0 and math.isfinite(figures["last_loss"])
    assert figures["images_per_s"] > 0 and figures["peak_memory_mib"] is None


def test_training_step_updates_the_weights():
    cfg = gpu_check.load_cfg(gpu_check.PRETRAIN_CONFIG)
    model = gpu_check.build_pretrain_model(cfg)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    batch = gpu_check.classification_batch(2, 32, cfg.model.num_classes, "cpu")
    step = gpu_check.training_step(model.eval(), wrapper, batch)
    assert model.training  # a training step trains
    before = [p.detach().clone() for p in model.parameters()]
    loss = step()
    assert loss.dim() == 0 and not loss.requires_grad and math.isfinite(float(loss))
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_ratios_time_the_two_variants(monkeypatch):
    """cmim_ratio and transfer_ratio hand a step of each variant to median_step_times."""
    seen = {}

    def fake_median(steps, iters, warmup):
        for name, step in steps.items():
            step()
            seen[name] = (iters, warmup)
        return dict(zip(steps, (0.1, 0.125)))

    monkeypatch.setattr(pretrain_module, "median_step_times", fake_median)
    monkeypatch.setattr(transfer_module, "median_step_times", fake_median)
    pretrain = gpu_check.load_cfg(gpu_check.PRETRAIN_CONFIG)
    ratio = gpu_check.cmim_ratio(pretrain, None, 2, 32, iters=15, device="cpu")
    assert seen == dict(plain=(15, 3), cmim=(15, 3))
    assert ratio == pytest.approx(dict(plain_step_ms=100, cmim_step_ms=125, cmim_step_ratio=1.25))
    seen.clear()
    transfer = gpu_check.load_cfg(gpu_check.TRANSFER_CONFIG)
    ratio = gpu_check.transfer_ratio(transfer, None, 2, 32, 48, iters=10, device="cpu")
    assert seen == dict(frozen=(10, 3), finetune=(10, 3))
    expected = dict(frozen_step_ms=100, finetune_step_ms=125, frozen_finetune_ratio=0.8)
    assert ratio == pytest.approx(expected)


def test_transfer_config_builds_at_output_stride_8():
    """The NYUD DeepLab model (stage 2): output stride 8, frozen and fine-tuned variants,
    SyncBN reverted; a training step at a reduced size gives both tasks' losses."""
    cfg = gpu_check.load_cfg(gpu_check.TRANSFER_CONFIG)
    assert cfg.model.backbone.output_stride == 8
    assert cfg.train_cfg.max_iters == 30000
    frozen = gpu_check.build_transfer_model(cfg)
    finetune = gpu_check.build_transfer_model(cfg, freeze=False)
    assert frozen.freeze_backbone and not finetune.freeze_backbone
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in finetune.backbone.parameters())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in frozen.modules())
    assert frozen.seg_head.num_classes == 40

    feats = frozen.extract_feat(torch.randn(1, 3, 48, 64))
    assert feats[-1].shape[-2:] == (6, 8)  # 48x64 / 8
    step = gpu_check.transfer_step(cfg, None, 2, 48, 64, "cpu")
    assert math.isfinite(float(step()))


def test_nccl_run_config_reads_the_generated_tree(tmp_path):
    """Stage 3's command: the ImageNet config with its ``--cfg-options``, parsed as
    tools/train.py parses them, loads (every key checked), and its dataset is the generated
    tree: 80 images of 4 classes, 10 iterations of 8, at 224x224, no validation."""
    root = gpu_check.write_image_folder(tmp_path / "data", 80, 4)
    options = gpu_check.nccl_cfg_options(root, 8, 4)
    cmd = gpu_check.dist_train_command(
        gpu_check.config_path(gpu_check.PRETRAIN_CONFIG), tmp_path / "w", options
    )
    start = cmd.index(gpu_check.TRAIN_MODULE) + 1
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
    train_args = runpy.run_path(str(REPO / "tools" / "train.py"), run_name="tools_train")
    args = train_args["parse_args"](cmd[start:])
    assert args.work_dir == str(tmp_path / "w")
    cfg = load_config(args.config, args.cfg_options, args.work_dir, "pytorch")
    assert cfg.env_cfg.dist_cfg.backend == "nccl"
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.val_evaluator is None
    assert cfg.default_hooks.checkpoint is None
    assert cfg.train_cfg.max_epochs == 1 and cfg.model.num_classes == 4
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset) == 80 and dataset.num_classes == 4
    assert len(dataset) // cfg.train_dataloader.batch_size == 10
    assert dataset[0]["inputs"].shape == (3, 224, 224)
    model = gpu_check.build_pretrain_model(cfg).eval()
    assert model(torch.randn(1, 3, 32, 32), mode="tensor").shape == (1, 4)


@pytest.mark.slow
def test_nccl_stage_runs_with_gloo_on_cpu(tmp_path):
    """The whole stage 3 on CPU: dist_train.sh with one gloo process, 3 iterations at 32x32."""
    lines = []
    figures = gpu_check.nccl_stage(
        tmp_path, iters=3, batch_size=4, backend="gloo", img_size=32, log=lines.append
    )
    assert figures["passed"], figures.get("output_tail")
    assert figures["iterations"] == 3 and len(figures["losses"]) == 3
    assert all(math.isfinite(v) for v in figures["losses"])
    assert lines and "passed" in lines[0]


def test_agreement_stage_on_cpu_against_cpu():
    """Stage 4's plumbing with the CPU on both sides: everything equal, and it passes."""
    lines = []
    figures = gpu_check.agreement_stage(batch_size=2, size=32, device="cpu", log=lines.append)
    assert figures["passed"]
    assert figures["layers"] == figures["same_input_equal"] == figures["full_forward_equal"] == 16
    assert figures["sign_flips"] == 0 and figures["binary_inputs"] > 0
    assert figures["loss_cmim_rel_diff"] == 0.0
    assert figures["loss_cmim_cpu"] == figures["loss_cmim_device"] > 0
    assert "passed" in lines[0]


def test_capture_binary_convs_records_every_layer():
    cfg = gpu_check.load_cfg(gpu_check.PRETRAIN_CONFIG)
    model = gpu_check.build_pretrain_model(cfg).train()
    inputs = torch.randn(2, 3, 32, 32)
    losses, convs = gpu_check.capture_binary_convs(
        model, inputs, torch.tensor([1, 2]), torch.arange(2)
    )
    layers = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == len(layers) == 16
    for layer, (x, y) in zip(layers, convs):
        assert x.shape[1] == layer.in_channels and y.shape[1] == layer.out_channels
    assert set(losses) == {"loss_cls", "loss_cmim"}
    assert all(layer._forward_hooks == {} for layer in layers)  # hooks removed


def test_run_gpu_check_records_a_failing_stage(tmp_path, monkeypatch):
    """A stage that raises is reported and the report is still written."""

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "agreement_stage", broken)
    monkeypatch.setattr(gpu_check, "environment", lambda device="cuda": dict(gpu="GPU X"))
    lines = []
    figures = gpu_check.run_gpu_check(
        tmp_path, stages=["agreement"], device="cpu", log=lines.append
    )
    assert figures["agreement"]["error"] == "RuntimeError: boom"
    assert figures["checks"] == dict(agreement=False) and figures["passed"] is False
    (logged,) = [line for line in lines if line.startswith("[agreement] error:")]
    assert logged.startswith("[agreement] error: RuntimeError: boom\nTraceback")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["agreement"]["error"] == "RuntimeError: boom"
    assert 'raise RuntimeError("boom")' in saved["agreement"]["traceback"]
    with pytest.raises(ValueError, match="unknown stages"):
        gpu_check.run_gpu_check(tmp_path, stages=["speed"])
