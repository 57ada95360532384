"""The compat shims: mmseg imports on mmcv-lite, safe mmengine resume on weights_only loads."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
from torch import nn
from torch.utils.data import Dataset

from cmim_dense import compat

_FRESH_INTERPRETER_CHECK = r"""
import importlib.util, json, sys
full_mmcv = importlib.util.find_spec("mmcv._ext") is not None
import cmim_dense
import mmseg.models
from mmseg.models.decode_heads import ASPPHead
from mmengine.utils.dl_utils import mmcv_full_available
import mmcv.ops, torch
result = dict(full_mmcv=full_mmcv, aspp=ASPPHead.__name__, full_available=mmcv_full_available())
try:
    mmcv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    result["nms"] = "ran"
except Exception as exc:
    result["nms"] = [type(exc).__name__, str(exc)]
print(json.dumps(result))
"""


def test_mmseg_imports_and_stub_ops_raise_in_fresh_interpreter():
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_INTERPRETER_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["aspp"] == "ASPPHead"
    if result["full_mmcv"]:
        pytest.skip("a full mmcv with compiled mmcv._ext is installed: no stub to check")
    # The stub must not make mmengine believe compiled ops exist.
    assert result["full_available"] is False
    name, message = result["nms"]
    assert name == "MissingCompiledOpError"
    assert "'nms'" in message and "mmcv-lite" in message


def test_stub_op_raises_clear_error_in_process():
    ext = sys.modules.get("mmcv._ext")
    if ext is None or getattr(ext, "__file__", None) is not None:
        pytest.skip("a full mmcv with compiled mmcv._ext is installed: no stub to check")
    from mmcv._ext import roi_align_forward

    with pytest.raises(compat.MissingCompiledOpError, match=r"roi_align_forward.*mmcv-lite"):
        roi_align_forward(torch.zeros(1))
    with pytest.raises(AttributeError):
        ext.__wrapped__  # noqa: B018  (dunder lookups must not resolve to stub ops)


def test_apply_is_idempotent(monkeypatch):
    ext = sys.modules.get("mmcv._ext")
    safe = set(map(str, torch.serialization.get_safe_globals()))
    compat.apply()
    monkeypatch.setattr(compat, "_applied", False)  # force the shims to run a second time
    compat.apply()
    assert compat._applied is True
    assert sys.modules.get("mmcv._ext") is ext
    assert compat.install_mmcv_ext_stub() is False
    assert set(map(str, torch.serialization.get_safe_globals())) == safe


# ---------------------------------------------------------------- resume


class _ToyRegressor(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, inputs, target=None, mode="tensor"):
        out = self.linear(inputs)
        if mode == "loss":
            return dict(loss=(out - target).pow(2).mean())
        return out


class _ToyPairs(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(8, 3, generator=g)
        self.y = torch.randn(8, 2, generator=g)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=self.x[i], target=self.y[i])


@pytest.fixture
def restore_determinism():
    """``randomness.deterministic=True`` flips process-wide torch flags; put them back."""
    algorithms = torch.are_deterministic_algorithms_enabled()
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(algorithms)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic


def _train(work_dir, name: str, max_iters: int, resume: bool = False) -> dict:
    torch.manual_seed(0)  # the model is built before the Runner seeds: same init for every run
    runner = Runner(
        model=_ToyRegressor(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_ToyPairs(),
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_size=2,
            collate_fn=dict(type="default_collate"),
        ),
        # Momentum and a decaying LR: a resume that lost optimizer or scheduler state diverges.
        # ``end`` is saved with the scheduler state, so it is the full run's length in both runs.
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9)),
        param_scheduler=dict(type="MultiStepLR", by_epoch=False, milestones=[3], gamma=0.1, end=4),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1, by_epoch=False)),
        randomness=dict(seed=0, deterministic=True),
        resume=resume,
        default_scope=None,  # a DefaultScope would outlive the test and redirect later builds
    )
    model = runner.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_reproduces_uninterrupted_run(tmp_path, restore_determinism):
    init = _ToyRegressor().state_dict()  # only for the "training moved" check below
    full = _train(tmp_path / "full", "full", max_iters=4)
    _train(tmp_path / "split", "split_a", max_iters=2)
    # Everything in it is allow-listed: no getattr, no code.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "split/iter_2.pth") == []
    # New Runner, load_from unset: mmengine resumes from the work_dir's last checkpoint,
    # which holds HistoryBuffer and numpy state and is read with torch.load's weights_only=True.
    resumed = _train(tmp_path / "split", "split_b", max_iters=4, resume=True)
    assert (tmp_path / "split" / "iter_4.pth").exists()
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert not torch.equal(full["linear.weight"], init["linear.weight"])
    ckpt = torch.load(tmp_path / "split" / "iter_4.pth")  # default weights_only
    assert ckpt["meta"]["iter"] == 4
    assert torch.equal(ckpt["state_dict"]["linear.weight"], full["linear.weight"])


# ---------------------------------------------------------------- malicious checkpoint


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("loader", ["load_checkpoint", "_load_checkpoint", "torch.load"])
def test_checkpoint_with_code_is_refused(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(
        dict(state_dict=_ToyRegressor().state_dict(), meta=dict(x=_Exploit(str(marker)))), path
    )
    assert "posix.system" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system"):
        if loader == "load_checkpoint":
            load_checkpoint(_ToyRegressor(), str(path), map_location="cpu")
        elif loader == "_load_checkpoint":
            _load_checkpoint(str(path), map_location="cpu")
        else:
            torch.load(path)
    assert not marker.exists()


def test_checkpoint_cut_mid_save_leaves_no_final_file(tmp_path, monkeypatch):
    """mmengine saves through its local backend, which now writes a temporary file and renames
    it: a save killed before the rename leaves neither a partial iter_N.pth nor the temp file."""
    from mmengine.runner.checkpoint import save_checkpoint

    compat.apply()
    target = tmp_path / "iter_8.pth"
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, str(tmp_path / "iter_4.pth"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_4.pth"]
    assert torch.equal(
        _load_checkpoint(str(tmp_path / "iter_4.pth"))["state_dict"]["w"], torch.ones(3)
    )
