"""Real faults and bad input against the tools: nothing lost, nothing silent.

Faults are real where the operating system can make them: a file size limit
(``RLIMIT_FSIZE``, the kernel refuses the write as on a full disk), SIGKILL and SIGSTOP of
real processes, concurrent launches. Runs are tiny: a width-8 binary ResNet-18 on 10 CIFAR-10
images, batch 4, 1 epoch = 3 iterations, without validation.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _data_writers import write_cifar10

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOOLS = REPO / "tools"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tool_main(name: str):
    """``main(argv)`` of ``tools/<name>.py``."""
    return runpy.run_path(str(TOOLS / f"{name}.py"), run_name=f"tools_{name}")["main"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root / "cifar-10-batches-py", per_batch=2, num_test=4)
    return root


def _config(folder: Path, name: str, cifar: Path, epochs: int = 3, body: str = "") -> Path:
    """A tiny CIFAR-10 pretraining config at ``<folder>/<name>.py``; one checkpoint per epoch,
    only the newest kept (the case where mmengine deleted before saving)."""
    loader = dict(batch_size=4, num_workers=0, persistent_workers=False)
    path = folder / f"{name}.py"
    path.write_text(
        f"""_base_ = [{str(CONFIGS / "pretrain" / "cifar10_bin_r18_irnet_cmim.py")!r}]
model = dict(backbone=dict(base_channels=8), cmim_lambda=0.0, cmim=None)
train_dataloader = dict({loader!r}, dataset=dict(data_root={str(cifar)!r}))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = dict({loader!r}, dataset=dict(data_root={str(cifar)!r}, split="test"))
train_cfg = dict(max_epochs={epochs}, val_interval=1000)
param_scheduler = []
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=1, max_keep_ckpts=1, save_best=None),
)
log_processor = dict(window_size=1)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
visualizer = dict(name={name!r})
{body}"""
    )
    return path


def _one_error_line(stderr: str, *needles: str) -> str:
    """The last stderr line is ``error: ...`` holding ``needles``, with no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


# A driver that runs ``tools/train.py`` with a file size limit, set from the start or after a
# given epoch's checkpoint: writes past the limit then fail with EFBIG, as on a full disk.
_LIMITED_TRAIN = """
import resource, runpy, signal, sys
from mmengine.hooks import Hook
from cmim_dense.registry import HOOKS

limit, after_epoch = int(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill


@HOOKS.register_module()
class FileSizeLimitHook(Hook):
    priority = "LOWEST"  # after the checkpoint hook

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == after_epoch:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


if after_epoch == 0:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
main = runpy.run_path(sys.argv[3], run_name="train")["main"]
sys.exit(main(sys.argv[4:]))
"""


def _run_limited(tmp_path: Path, config: Path, work_dir: Path, after_epoch: int):
    driver = tmp_path / "limited_train.py"
    driver.write_text(_LIMITED_TRAIN)
    cmd = [sys.executable, str(driver), str(64 * 1024), str(after_epoch), str(TOOLS / "train.py")]
    cmd += [str(config), "--work-dir", str(work_dir)]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("after_epoch", [0, 1], ids=["first_save", "later_save"])
def test_full_disk_at_checkpoint_keeps_every_checkpoint(tmp_path, cifar, after_epoch):
    hooks = "custom_hooks = [dict(type='FileSizeLimitHook')]\n"
    config = _config(tmp_path, f"fsize{after_epoch}", cifar, body=hooks)
    work_dir = tmp_path / "work"
    proc = _run_limited(tmp_path, config, work_dir, after_epoch)
    assert proc.returncode == 2, proc.stderr[-3000:]
    failed = work_dir / f"epoch_{after_epoch + 1}.pth"
    _one_error_line(proc.stderr, "could not write checkpoint", str(failed), "File too large")
    kept = sorted(p.name for p in work_dir.glob("*.pth"))
    assert kept == ([f"epoch_{after_epoch}.pth"] if after_epoch else [])
    assert not list(work_dir.glob(".*.tmp"))  # no half-written file left behind
    if not after_epoch:
        return
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "epoch_1.pth")
    # Resume from the kept checkpoint, without the limit: trains epochs 2 and 3.
    resumed = _config(tmp_path, "fsize_resumed", cifar)
    assert _tool_main("train")([str(resumed), "--work-dir", str(work_dir), "--resume"]) == 0
    ckpt = torch.load(work_dir / "epoch_3.pth", map_location="cpu", weights_only=True)
    assert ckpt["meta"]["epoch"] == 3
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["epoch_3.pth"]  # pruned after


def test_save_prunes_only_after_the_new_checkpoint_is_complete(tmp_path, cifar):
    """In process: the oldest checkpoint still exists while the new one is written."""
    from mmengine.hooks import Hook

    from cmim_dense.registry import HOOKS

    seen: list[list[str]] = []
    work_dir = tmp_path / "work"

    @HOOKS.register_module(force=True)
    class WatchSaveHook(Hook):
        def before_save_checkpoint(self, runner, checkpoint) -> None:
            seen.append(sorted(p.name for p in work_dir.glob("*.pth")))

    config = _config(tmp_path, "watch", cifar, body="custom_hooks=[dict(type='WatchSaveHook')]")
    assert _tool_main("train")([str(config), "--work-dir", str(work_dir)]) == 0
    assert seen == [[], ["epoch_1.pth"], ["epoch_2.pth"]]
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["epoch_3.pth"]


# -- 2. finite or refused ----------------------------------------------------------------------


def test_check_finite_names_the_first_bad_tensor_and_counts():
    from cmim_dense.utils.checkpoint import NonFiniteWeightError, check_finite

    bad = torch.tensor([1.0, float("nan"), float("inf"), float("-inf"), float("nan"), 2.0])
    state = {"a": torch.ones(3), "steps": torch.tensor([7]), "b.weight": bad, "c": bad}
    with pytest.raises(NonFiniteWeightError, match=r"^src: b.weight holds 2 NaN and 2 inf of 6"):
        check_finite(state, "src")
    check_finite(state, "src", allowed={"b.weight", "c"})  # markers, e.g. CMIMLoss.log_z


def test_nonfinite_markers_are_declared_by_their_module():
    from cmim_dense.losses.cmim import CMIMLoss
    from cmim_dense.utils.checkpoint import nonfinite_ok_keys

    model = torch.nn.Module()
    model.cmim = CMIMLoss([8, 16], z_norm=True)
    assert nonfinite_ok_keys(model) == {"cmim.log_z"}
    assert torch.isnan(model.state_dict()["cmim.log_z"]).all()  # unmeasured: allowed


REACT = (
    "model = dict(backbone=dict(base_channels=8, binarizer='react'), cmim_lambda=0.0, cmim=None)"
)


@pytest.fixture(scope="module")
def react_checkpoint(tmp_path_factory, cifar) -> tuple[Path, dict]:
    """A tiny ReAct classifier config and the state dict of its (untrained) model."""
    from cmim_dense.engine.config import build_model

    root = tmp_path_factory.mktemp("react")
    config = _config(root, "react", cifar, body=REACT)
    state = build_model(str(config)).state_dict()
    return config, state


def _poisoned(folder: Path, state: dict, key: str, value: float) -> Path:
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[0] = value
    path = folder / "poisoned.pth"
    torch.save(dict(state_dict=state), path)
    return path


def test_test_refuses_a_nan_binarizer_threshold(react_checkpoint, tmp_path, capsys):
    config, state = react_checkpoint
    (key,) = [k for k in state if k.endswith("threshold")][:1]
    ckpt = _poisoned(tmp_path, state, key, float("nan"))
    argv = [str(config), str(ckpt), "--work-dir", str(tmp_path / "eval")]
    assert _tool_main("test")(argv) == 2
    _one_error_line(capsys.readouterr().err, str(ckpt), key, "1 NaN and 0 inf")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_resume_refuses_an_infinite_weight(react_checkpoint, tmp_path, capsys):
    config, state = react_checkpoint
    key = next(k for k in state if k.endswith("conv.weight") or k.endswith("conv1.weight"))
    ckpt = _poisoned(tmp_path, state, key, float("-inf"))
    argv = [str(config), "--work-dir", str(tmp_path / "w"), "--resume", str(ckpt)]
    assert _tool_main("train")(argv) == 2
    _one_error_line(capsys.readouterr().err, key, "0 NaN and 1 inf")


def test_transfer_refuses_a_nan_pretrained_backbone(react_checkpoint, tmp_path):
    from cmim_dense.models.backbones.bin_resnet import BinaryResNet
    from cmim_dense.utils.checkpoint import NonFiniteWeightError

    _, state = react_checkpoint
    key = next(k for k in state if k.startswith("backbone.") and "bn" in k and "running_var" in k)
    ckpt = _poisoned(tmp_path, state, key, float("nan"))
    arch = dict(depth=18, base_channels=8, stem="cifar", binarizer="react")
    backbone = BinaryResNet(**arch, pretrained=str(ckpt))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(NonFiniteWeightError, match=key.removeprefix("backbone.") + " holds 1 NaN"):
        backbone.init_weights()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())


# -- 3. a test's outputs move as a unit -------------------------------------------------------


@pytest.fixture(scope="module")
def dense(tmp_path_factory, synth_nyud_tree) -> dict:
    """A tiny dense config (width-8 backbone, 16-channel heads, 60x80) and a checkpoint of its
    untrained model."""
    from cmim_dense.engine.config import build_model

    root = tmp_path_factory.mktemp("dense")
    head = dict(in_channels=64, channels=16, dilations=(1, 2), c1_in_channels=8, c1_channels=8)
    loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
    config = root / "dense.py"
    config.write_text(
        f"""_base_ = [{str(CONFIGS / "demo" / "nyud_synth.py")!r}]
model = dict(
    data_preprocessor=dict(size=(60, 80)),
    backbone=dict(base_channels=8, pretrained=None),
    backbone_backend="torch",
    seg_head={head!r},
    depth_head={head!r},
)
train_dataloader = dict({loader!r}, dataset=dict(data_root={str(synth_nyud_tree)!r}))
test_dataloader = dict({loader!r}, dataset=dict(data_root={str(synth_nyud_tree)!r}))
"""
    )
    ckpt = root / "model.pth"
    torch.save(dict(state_dict=build_model(str(config)).state_dict()), ckpt)
    return dict(config=config, ckpt=ckpt, root=root)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The test's outputs in ``folder`` (not mmengine's per-run log folders)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".py", ".log")]
    files = [p for p in files if not p.relative_to(folder).parts[0][:1].isdigit()]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _partials(*folders: Path) -> list[str]:
    return [p.name for f in folders if f.is_dir() for p in f.iterdir() if ".partial-" in p.name]


def test_outputs_replace_the_old_ones_only_on_success(dense, tmp_path, capsys):
    from cmim_dense.evaluation.report import read_run_metrics

    test = _tool_main("test")
    run_dir, show = tmp_path / "run", tmp_path / "pictures" / "show"
    argv = [str(dense["config"]), str(dense["ckpt"]), "--work-dir", str(run_dir)]
    argv += ["--show-dir", str(show)]
    assert test(argv) == 0
    record = read_run_metrics(run_dir)
    assert record["test_set"]["split"] == "test" and record["test_set"]["frames"] == 7
    assert len(record["test_set"]["sha256"]) == 64
    assert record["run"]["backend"] == "torch" and "ir_sha256" in record["run"]
    test_id = record["run"]["test_id"]
    assert (run_dir / "predictions" / "TEST_ID").read_text().strip() == test_id
    assert len(list(show.glob("*.png"))) == 7
    # A stale file in the old predictions and pictures is gone after a re-test.
    (run_dir / "predictions" / "stale.npz").write_bytes(b"old")
    (show / "stale.png").write_bytes(b"old")
    assert test(argv) == 0
    assert (
        not (run_dir / "predictions" / "stale.npz").exists() and not (show / "stale.png").exists()
    )
    assert read_run_metrics(run_dir)["run"]["test_id"] != test_id
    capsys.readouterr()

    # A refused test (NaN weights) and a test that fails half-way leave everything as it was.
    before = _snapshot(run_dir), _snapshot(show)
    state = torch.load(dense["ckpt"], weights_only=True)["state_dict"]
    key = next(k for k in state if k.startswith("seg_head.") and k.endswith("weight"))
    poisoned = _poisoned(tmp_path, state, key, float("nan"))
    assert test([str(dense["config"]), str(poisoned), *argv[2:]]) == 2
    _one_error_line(capsys.readouterr().err, key, "1 NaN")
    failing = dense["root"] / "failing.py"
    failing.write_text(
        f"_base_ = [{str(dense['config'])!r}]\n"
        "custom_hooks = [dict(type='FailAfterTestIterHook')]\n"
    )
    with pytest.raises(RuntimeError, match="test failed half-way"):
        test([str(failing), *argv[1:]])
    assert (_snapshot(run_dir), _snapshot(show)) == before
    assert not _partials(run_dir, show.parent)


def _register_failing_hook() -> None:
    from mmengine.hooks import Hook

    from cmim_dense.registry import HOOKS

    @HOOKS.register_module(force=True)
    class FailAfterTestIterHook(Hook):
        priority = "LOWEST"  # after the predictions of the batch were written

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if batch_idx == 1:
                raise RuntimeError("test failed half-way")


_register_failing_hook()


def test_show_dir_that_is_a_file_or_holds_other_files_exits_2(dense, tmp_path, capsys):
    test = _tool_main("test")
    base = [str(dense["config"]), str(dense["ckpt"]), "--work-dir", str(tmp_path / "run")]
    (tmp_path / "file").write_text("x")
    assert test([*base, "--show-dir", str(tmp_path / "file")]) == 2
    _one_error_line(capsys.readouterr().err, str(tmp_path / "file"), "is a file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert test([*base, "--show-dir", str(tmp_path / "mine")]) == 2
    _one_error_line(capsys.readouterr().err, "notes.txt")
    assert not (tmp_path / "run").exists()


def test_report_refuses_different_test_sets_unless_allowed(tmp_path, capsys):
    from cmim_dense.evaluation.report import write_run_metrics

    report = _tool_main("report")
    metrics = {"mIoU": 30.0, "rmse": 0.7}
    for name, frames in (("a", 654), ("b", 600)):
        test_set = dict(split="test", frames=frames, sha256=f"{frames:064x}")
        write_run_metrics(tmp_path / name, name, "c.py", "k.pth", {}, metrics, test_set=test_set)
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert report([*runs, "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys.readouterr().err, "different test sets", "test/654/", "test/600/")
    assert not (tmp_path / "out").exists()
    assert report([*runs, "--out", str(tmp_path / "out"), "--allow-mixed"]) == 0
    table = (tmp_path / "out" / "report.md").read_text()
    assert "Mixed test sets" in table and "a [test set test/654/" in table


# -- 4. no shared output folders ---------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_make_synth_nyud_writes_only_into_empty_or_its_own_folder(tmp_path, capsys):
    tool = _tool_main("make_synth_nyud")
    args = ["--frames", "2", "--size", "16", "16", "--crop-size", "4", "--quiet"]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert tool(["--out", str(user), *args]) == 2
    _one_error_line(capsys.readouterr().err, str(user), "not empty")
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    out = tmp_path / "synth"
    dead = tmp_path / f".synth.partial-{_dead_pid()}-abc123"
    dead.mkdir()
    assert tool(["--out", str(out), *args]) == 0
    assert not dead.exists()
    (out / "crops" / "train" / "extra.png").write_bytes(b"old")
    assert tool(["--out", str(out), *args]) == 0  # its own stamped output is replaced
    assert not (out / "crops" / "train" / "extra.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth", "user"]
    (tmp_path / "file").write_text("x")
    assert tool(["--out", str(tmp_path / "file"), *args]) == 2
    _one_error_line(capsys.readouterr().err, "is a file")


_HOLD_WORK_DIR = """
import sys, time
from cmim_dense.engine.work_dir import prepare_work_dir
from cmim_dense.utils.io import StagedDir

prepare_work_dir(sys.argv[1])
StagedDir(sys.argv[1] + "/test")  # a staged output that its killer leaves behind
print("locked", flush=True)
time.sleep(600)
"""


def test_second_launch_in_a_work_dir_is_refused_until_the_holder_dies(tmp_path, cifar, capsys):
    work_dir = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WORK_DIR, str(work_dir)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = _config(tmp_path, "second", cifar, epochs=1)
        argv = [str(config), "--work-dir", str(work_dir)]
        assert _tool_main("train")(argv) == 2
        _one_error_line(capsys.readouterr().err, str(work_dir), f"pid {holder.pid}")
        assert not list(work_dir.glob("*.pth"))
        (staged,) = work_dir.glob(f".test.partial-{holder.pid}-*")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _tool_main("train")(argv) == 0  # the kernel released the dead holder's lock
    assert not staged.exists()  # its staged output was removed at this start, and logged
    assert f"removed {staged}: staged output of a run that ended" in capsys.readouterr().err
    assert (work_dir / "epoch_1.pth").is_file()


def test_the_lock_is_reentrant_in_a_process(tmp_path):
    from cmim_dense.engine.work_dir import prepare_work_dir

    assert prepare_work_dir(tmp_path / "w") == prepare_work_dir(tmp_path / "w")


def test_work_dir_that_is_a_file_exits_2(tmp_path, cifar, capsys):
    (tmp_path / "w").write_text("x")
    config = _config(tmp_path, "file_work_dir", cifar, epochs=1)
    assert _tool_main("train")([str(config), "--work-dir", str(tmp_path / "w")]) == 2
    _one_error_line(capsys.readouterr().err, str(tmp_path / "w"), "is a file")


# -- 5. no no-op runs --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3", "1.5"])
def test_a_schedule_of_no_epochs_is_refused(tmp_path, cifar, capsys, value):
    config = _config(tmp_path, f"epochs{value}", cifar)
    argv = [str(config), "--work-dir", str(tmp_path / "w")]
    assert _tool_main("train")([*argv, "--cfg-options", f"train_cfg.max_epochs={value}"]) == 2
    _one_error_line(capsys.readouterr().err, "train_cfg.max_epochs", value)
    assert not (tmp_path / "w").exists()


def test_resume_past_the_end_says_so_and_the_chain_still_tests(tmp_path, cifar, capsys):
    from cmim_dense.evaluation.report import read_run_metrics
    from cmim_dense.pipelines.chain import StageTimer, train_and_test

    config = _config(tmp_path, "finished", cifar, epochs=1)
    work_dir = tmp_path / "work"
    assert _tool_main("train")([str(config), "--work-dir", str(work_dir)]) == 0
    ckpt = work_dir / "epoch_1.pth"
    stamp = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert _tool_main("train")([str(config), "--work-dir", str(work_dir), "--resume"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"nothing to train: {ckpt} already finished the schedule (epoch 1 of 1)"
    assert ckpt.stat().st_mtime_ns == stamp
    # A chain killed between training and testing: it trains nothing, then tests.
    record = train_and_test(config, work_dir, {}, "finished", StageTimer())
    assert record == read_run_metrics(work_dir) and record["checkpoint"] == str(ckpt)


# -- 6. distributed faults ---------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_stopped_rank_stops_the_others_within_the_timeout(tmp_path, cifar):
    """Two gloo ranks of tools/train.py; rank 1 gets SIGSTOP while training. Rank 0 must exit
    non-zero within the collective timeout (10 s here: the ranks' set-up must not drift
    further apart on a loaded machine), naming rank 1 as stopped."""
    import time

    config = _config(tmp_path, "ddp", cifar, epochs=1000)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
        )  # fmt: skip
        cmd = [sys.executable, str(TOOLS / "train.py"), str(config), "--launcher", "pytorch"]
        cmd += ["--work-dir", str(tmp_path / "work"), "--cfg-options"]
        cmd += ["env_cfg.dist_cfg.backend=gloo", "env_cfg.dist_cfg.timeout=10"]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, **pipes))
    rank0, rank1 = procs
    try:
        for line in rank0.stdout:  # rank 0 logs every iteration (interval 1)
            if "Epoch(train)" in line and "[2]" in line:
                break
        rank1.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = rank0.communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert rank0.returncode == 2, err[-3000:]
    _one_error_line(err, "rank 0:", "10 s", f"rank 1 (pid {rank1.pid}) is stopped")
    assert waited < 10 + 30  # the timeout, plus the time to log and exit on a loaded machine


# -- 7. one line and exit 2 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("train_dataloader.batch_size=abc", "give a number"),
        ("train_dataloader.batch_size=two", "give a number"),
        ("train_dataloader.batch_size=0", "integer >= 1"),
        ("optim_wrapper.optimizer.lr=nan", "finite number"),
        ("train_dataloader.num_workers=-1", "integer >= 0"),
    ],
)
def test_malformed_cfg_options_exit_2(tmp_path, cifar, capsys, option, needle):
    config = _config(tmp_path, "opts", cifar, epochs=1)
    argv = [str(config), "--work-dir", str(tmp_path / "w"), "--cfg-options", option]
    assert _tool_main("train")(argv) == 2
    _one_error_line(capsys.readouterr().err, option.split("=")[0], needle)
    assert not (tmp_path / "w").exists()


def test_persistent_workers_without_workers_is_fixed_up():
    from cmim_dense.engine.config import load_config

    options = {"train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": True}
    cfg = load_config("pretrain/cifar10_bin_r18_irnet_cmim", options)
    assert cfg.train_dataloader.persistent_workers is False
    assert cfg.val_dataloader.persistent_workers is True  # it has workers


def test_resume_with_another_optimizer_exits_2(tmp_path, cifar, capsys):
    """Trained with Adam, resumed with the config's SGD: mmengine's KeyError 'momentum'."""
    adam = "optim_wrapper = dict(optimizer=dict(_delete_=True, type='Adam', lr=1e-3))"
    work_dir = tmp_path / "work"
    first = _config(tmp_path, "adam", cifar, epochs=1, body=adam)
    assert _tool_main("train")([str(first), "--work-dir", str(work_dir)]) == 0
    config = _config(tmp_path, "sgd", cifar, epochs=2)
    argv = [str(config), "--work-dir", str(work_dir), "--resume"]
    capsys.readouterr()
    code = _tool_main("train")(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    _one_error_line(err, "epoch_1.pth", "not of the config's SGD", "momentum")


def test_full_output_folder_exits_2_naming_the_file(tmp_path, capsys):
    """A read-only or full output folder: the OSError is one line naming the file."""
    from cmim_dense.cli.common import run_tool

    def job() -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "x.png"))

    assert run_tool(job) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'x.png'}: No space left on device\n"


@pytest.mark.parametrize(("change", "needle"), [
    ("rm annotations/test/*first*", "is missing"),
    ("rm depth/train/*first*", "is missing"),
    ("touch annotations/train/readme.txt", "is not a *.png file"),
])  # fmt: skip
def test_missing_or_foreign_data_files_exit_2(
    dense, synth_nyud_tree, tmp_path, capsys, change, needle
):
    import shutil

    root = tmp_path / "nyud"
    shutil.copytree(synth_nyud_tree, root)
    verb, target = change.split(" ")
    if "*first*" in target:
        folder = root / target.removesuffix("/*first*")
        target = str(sorted(folder.iterdir())[0].relative_to(root))
    if verb == "rm":
        (root / target).unlink()
    else:
        (root / target).write_text("x")
    argv = [str(dense["config"]), str(dense["ckpt"]), "--work-dir", str(tmp_path / "w")]
    argv += ["--cfg-options", f"test_dataloader.dataset.data_root={root}"]
    if "train" in target:
        argv = [str(dense["config"]), "--work-dir", str(tmp_path / "w"), "--cfg-options"]
        argv += [f"train_dataloader.dataset.data_root={root}", "train_cfg.max_iters=1"]
        assert _tool_main("train")(argv) == 2
    else:
        assert _tool_main("test")(argv) == 2
    _one_error_line(capsys.readouterr().err, "NYUDv2Dataset", needle)


def test_corrupt_crop_exits_2_naming_it(tmp_path, capsys):
    from _data_writers import write_pattern_folder

    write_pattern_folder(tmp_path / "crops", num_classes=2, per_class=dict(train=2, val=2))
    bad = tmp_path / "crops" / "train" / "class_0" / "0.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    from cmim_dense.datasets.classification import ImageFolderClassification
    from cmim_dense.utils.errors import InputError

    data = ImageFolderClassification(tmp_path / "crops", "train", img_size=16)
    with pytest.raises(InputError, match=f"{bad}: not a readable image"):
        [data[i] for i in range(len(data))]


def test_bad_grid_values_are_refused_before_anything_trains(tmp_path, cifar):
    from cmim_dense.pipelines.sweep import SweepSpec, parse_grid, run_sweep
    from cmim_dense.utils.errors import InputError

    with pytest.raises(InputError, match="an empty value"):
        parse_grid(["model.cmim_lambda=0,,0.5"])
    config = _config(tmp_path, "grid", cifar, epochs=1)
    grid = parse_grid(["train_dataloader.batch_size=4,abc"])
    spec = SweepSpec(config=config, grid=grid, seeds=[0], work_dir=tmp_path / "sweep")
    with pytest.raises(InputError, match=r"batch_size='abc'.*give a number"):
        run_sweep(spec)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("nproc", ["two", "0", "-1", ""])
def test_dist_train_refuses_a_non_numeric_nproc(tmp_path, nproc):
    proc = subprocess.run(
        ["bash", str(TOOLS / "dist_train.sh"), "cfg.py", nproc],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"error: NPROC must be an integer >= 1, got '{nproc}'\n"
