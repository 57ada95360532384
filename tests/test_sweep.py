"""tools/sweep.py: a 2 x 2 grid of a tiny pretraining config x 2 seeds, its aggregates, and a
rerun that skips finished runs; the statistics on hand-made records."""

from __future__ import annotations

import json
import math
import os
import pickle
import runpy
from pathlib import Path

import pytest
from _data_writers import write_pattern_folder

from cmim_dense.pipelines import chain
from cmim_dense.pipelines.sweep import aggregate, parse_grid, setting_name, settings_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tool():
    return runpy.run_path(str(REPO / "tools" / "sweep.py"), run_name="tools_sweep")["main"]


def test_grid_parsing_and_names():
    grid = parse_grid(["model.cmim_lambda=0,0.05", "model.tap_reduce=sample,avgpool"])
    assert grid == {"model.cmim_lambda": [0, 0.05], "model.tap_reduce": ["sample", "avgpool"]}
    settings = settings_of(grid)
    assert len(settings) == 4 and settings[1] == {
        "model.cmim_lambda": 0,
        "model.tap_reduce": "avgpool",
    }
    assert setting_name(settings[1]) == "cmim_lambda=0,tap_reduce=avgpool"
    with pytest.raises(ValueError, match="KEY=V1"):
        parse_grid(["model.cmim_lambda"])


def _record(setting, seed, **metrics):
    return dict(setting=setting, seed=seed, metrics=metrics)


def test_aggregate_means_spreads_and_paired_differences():
    records = [
        _record({"lam": 0}, 0, top1=50.0, rmse=0.60),
        _record({"lam": 0}, 1, top1=52.0, rmse=0.58),
        _record({"lam": 0}, 2, top1=54.0, rmse=0.62),
        _record({"lam": 1}, 0, top1=53.0, rmse=0.59),
        _record({"lam": 1}, 1, top1=54.0, rmse=0.59),
        _record({"lam": 1}, 2, top1=58.0, rmse=0.59),
    ]
    result = aggregate(records, ["top1", "rmse"])
    base, cmim = result["settings"]
    assert base["top1"]["mean"] == pytest.approx(52.0) and base["top1"]["std"] == pytest.approx(2.0)
    assert cmim["top1"]["values"] == [53.0, 54.0, 58.0]
    (pair,) = result["paired"]
    assert pair["reference"] == "lam=0"
    assert pair["top1"]["values"] == [3.0, 2.0, 4.0]
    assert pair["top1"]["mean"] == pytest.approx(3.0) and pair["top1"]["std"] == pytest.approx(1.0)
    assert pair["top1"]["better"] == 3 and pair["top1"]["beyond_spread"]
    # RMSE: lower is better; -0.01, +0.01, -0.03 -> better on 2 of 3, not beyond the spread
    assert pair["rmse"]["better"] == 2 and not pair["rmse"]["beyond_spread"]
    single = aggregate(records[:1], ["top1"])
    assert math.isnan(single["settings"][0]["top1"]["std"]) and single["paired"] == []


def test_pretraining_sweep_writes_files_and_skips_finished_runs(tmp_path, monkeypatch):
    write_pattern_folder(tmp_path / "data", num_classes=3, per_class=dict(train=4, val=3))
    config = tmp_path / "tiny.py"
    config.write_text(
        f"""_base_ = [{str(REPO / "configs" / "demo" / "pretrain_crops.py")!r}]
model = dict(backbone=dict(base_channels=8), num_classes=3)
dataset = dict(data_root={str(tmp_path / "data")!r})
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dataset)
test_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dataset)
max_epochs = 1
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=max_epochs), logger=dict(interval=1))
"""
    )
    work = tmp_path / "sweep"
    argv = [str(config), "--grid", "model.cmim_lambda=0,0.05", "--grid"]
    argv += ["model.tap_reduce=sample,avgpool", "--seeds", "0", "1", "--work-dir", str(work)]
    assert _tool()(argv) == 0
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert (work / name).stat().st_size > 0
    result = json.loads((work / "sweep.json").read_text())
    assert len(result["runs"]) == 8 and len(result["settings"]) == 4
    for entry in result["settings"]:
        runs = [r for r in result["runs"] if setting_name(r["setting"]) == entry["name"]]
        top1 = [r["metrics"]["top1"] for r in runs]
        assert entry["top1"]["values"] == top1
        assert entry["top1"]["mean"] == pytest.approx(sum(top1) / 2)
        for run in runs:
            saved = json.loads((Path(run["run_dirs"][0]) / "metrics.json").read_text())
            assert saved["metrics"]["top1"] == run["metrics"]["top1"]
    assert len(result["paired"]) == 3 and "paired differences" in (work / "sweep.md").read_text()

    trained = []
    monkeypatch.setattr(chain, "train", lambda *a, **k: trained.append(a))
    assert _tool()(argv) == 0  # every run is evaluated already: nothing trains again
    assert trained == []
    assert json.loads((work / "sweep.json").read_text())["settings"] == result["settings"]
    # Other fixed options in the same folder: refused, not silently reused.
    assert _tool()([*argv, "--cfg-options", "model.tap_size=1"]) == 2
    assert trained == []


def test_sweep_bad_input_is_one_line(tmp_path, capsys):
    argv = ["--grid", "model.cmim_lambda", "--seeds", "0", "--work-dir", str(tmp_path / "w")]
    assert _tool()(["--demo", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KEY=V1" in err[0]
    assert _tool()(["--seeds", "0", "--work-dir", str(tmp_path / "w")]) == 2


def test_chain_sweep_sets_both_grid_in_both_stages_and_pairs_per_group(tmp_path, monkeypatch):
    """A binarizer grid must reach the pretraining and the transfer config alike (the transfer
    loads the backbone strictly); lambda = 0 is the reference within each binarizer."""
    from cmim_dense.pipelines import sweep

    calls = []

    def fake_chain(pre_cfg, tr_cfg, pre_dir, tr_dir, roots, name, timer, **options):
        calls.append(options)
        timer.run(f"{name}: chain", lambda: None)
        binarizer = options["pretrain_options"]["model.backbone.binarizer"]
        lam = options["pretrain_options"]["model.cmim_lambda"]
        seed = options["pretrain_options"]["randomness.seed"]
        miou = {"irnet": 40.0, "react": 50.0}[binarizer] + 1000 * lam + seed
        # the sweep is rewritten after every run: the runs so far are in it
        sweep_json = Path(pre_dir).parents[1] / "sweep.json"
        if sweep_json.parent == tmp_path / "w" and len(calls) > 1:
            assert len(json.loads(sweep_json.read_text())["runs"]) == len(calls) - 1
        metrics = dict(mIoU=miou, rmse=0.5 - lam, neg_log_rmse=-math.log(0.5 - lam))
        return dict(pretrain=dict(metrics=dict(top1=60.0)), transfer=dict(metrics=metrics))

    monkeypatch.setattr(sweep, "run_chain", fake_chain)
    # real configs: the sweep loads every run's config, with its grid values, before any run
    for name, base in (("pre.py", "pretrain_crops.py"), ("tr.py", "nyud_synth.py")):
        (tmp_path / name).write_text(f"_base_ = [{str(REPO / 'configs' / 'demo' / base)!r}]\n")
    spec = sweep.SweepSpec(
        grid={"model.cmim_lambda": [0, 0.001]},
        shared_grid={"model.backbone.binarizer": ["irnet", "react"]},
        seeds=[0, 1],
        work_dir=tmp_path / "w",
        config=tmp_path / "pre.py",
        transfer_config=tmp_path / "tr.py",
        roots=(tmp_path, tmp_path),
        reference={"model.cmim_lambda": 0},
    )

    def in_this_process(job, *args):
        """What a spawned process gets: the job and its arguments through pickle (the fake
        chain above lives in this process only)."""
        job, args = pickle.loads(pickle.dumps((job, args)))
        return job(*args)

    monkeypatch.setattr(sweep, "in_fresh_process", in_this_process)
    result = sweep.run_sweep(spec)
    assert len(calls) == 8 and result["complete"]
    assert len(result["stages"]) == 8  # each run's stage times came back from its process
    for options in calls:
        pre, tr = options["pretrain_options"], options["transfer_options"]
        assert pre["model.backbone.binarizer"] == tr["model.backbone.binarizer"]
        assert "model.cmim_lambda" not in tr and tr["randomness.seed"] == pre["randomness.seed"]
    # seeds outermost: the first four runs are seed 0 of every setting
    assert [c["pretrain_options"]["randomness.seed"] for c in calls] == [0] * 4 + [1] * 4
    pairs = {p["name"]: p for p in result["paired"]}
    assert set(pairs) == {"binarizer=irnet,cmim_lambda=0.001", "binarizer=react,cmim_lambda=0.001"}
    react = pairs["binarizer=react,cmim_lambda=0.001"]
    assert react["reference"] == "binarizer=react,cmim_lambda=0"
    assert react["mIoU"]["values"] == pytest.approx([1.0, 1.0]) and react["mIoU"]["better"] == 2
    assert (
        "| binarizer=react,cmim_lambda=0.001 | binarizer=react,cmim_lambda=0 |"
        in (tmp_path / "w" / "sweep.md").read_text()
    )
    # the reference later in the grid: the runs before it have no pair yet, and that is fine
    later = {**spec.__dict__, "grid": {"model.cmim_lambda": [0.001, 0]}, "seeds": [0]}
    result = sweep.run_sweep(sweep.SweepSpec(**{**later, "work_dir": tmp_path / "w2"}))
    assert len(result["paired"]) == 2 and result["complete"]
    # a reference that matches nothing, or keys in both grids, are refused before any run
    calls.clear()
    for bad in (
        dict(reference={"model.cmim_lambda": 0.5}),
        dict(grid={"model.backbone.binarizer": ["irnet"]}),
    ):
        with pytest.raises(ValueError):
            sweep.run_sweep(sweep.SweepSpec(**{**spec.__dict__, **bad}))
    assert calls == []


def test_a_chain_run_goes_to_a_fresh_process():
    """What the sweep runs each chain run with: another process, spawned (no state of this
    one, such as OpenVINO's), whose result comes back."""
    from cmim_dense.utils.processes import in_fresh_process

    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(sorted, [3, 1, 2]) == [1, 2, 3]


def test_a_run_whose_process_died_is_started_once_more(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    from cmim_dense.pipelines import sweep

    deaths = []

    def dies_once(job, *args):
        if not deaths:
            deaths.append(args)
            raise BrokenProcessPool("a child process terminated abruptly")
        return ({"setting": {}, "seed": args[-1], "metrics": {}, "run_dirs": []}, [])

    monkeypatch.setattr(sweep, "in_fresh_process", dies_once)
    spec = sweep.SweepSpec(grid={}, seeds=[0], work_dir=tmp_path, config=tmp_path / "pre.py")
    record, stages = sweep._run_isolated(spec, ({}, {}, {}, 0), chain.StageTimer())
    assert len(deaths) == 1 and record["seed"] == 0 and stages == []

    def always_dies(job, *args):
        deaths.append(args)
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(sweep, "in_fresh_process", always_dies)
    deaths.clear()
    with pytest.raises(BrokenProcessPool):  # a second death stops the sweep
        sweep._run_isolated(spec, ({}, {}, {}, 0), chain.StageTimer())
    assert len(deaths) == 2
