"""The demo's data and work-dir bookkeeping: reuse only what was made with the same settings."""

from __future__ import annotations

import json

import pytest

from cmim_dense.demo import (
    DATA_STAMP,
    RUN_STAMP,
    DemoSettings,
    check_work_dir,
    ensure_data,
    format_summary,
)


def _settings(tmp_path, **overrides) -> DemoSettings:
    values = dict(
        work_dir=tmp_path / "work",
        data_dir=tmp_path / "data",
        frames=4,
        size=(24, 32),
        crop_size=8,
    )
    return DemoSettings(**(values | overrides))


def _frames(nyud_root) -> int:
    return sum(len(list((nyud_root / "images" / split).iterdir())) for split in ("train", "test"))


def test_ensure_data_generates_once_and_regenerates_on_new_settings(tmp_path):
    settings = _settings(tmp_path)
    nyud, crops = ensure_data(settings, 0.0)
    assert _frames(nyud) == 4
    assert (crops / "train").is_dir() and (crops / "val").is_dir()
    stamp = settings.data_dir / DATA_STAMP
    assert json.loads(stamp.read_text()) == dict(settings.data_settings(), complete=True)

    labeled = settings.data_dir / "raw" / "nyu_depth_v2_labeled.mat"
    before = labeled.stat().st_mtime_ns
    ensure_data(settings, 0.0)
    assert labeled.stat().st_mtime_ns == before  # same settings: reused

    more = _settings(tmp_path, frames=6)
    nyud, _ = ensure_data(more, 0.0)
    assert _frames(nyud) == 6
    assert json.loads(stamp.read_text())["frames"] == 6


def test_ensure_data_redoes_a_cut_generation(tmp_path):
    settings = _settings(tmp_path)
    ensure_data(settings, 0.0)
    stamp = settings.data_dir / DATA_STAMP
    # as if the run died while generating: the stamp is still marked incomplete
    stamp.write_text(json.dumps(dict(settings.data_settings(), complete=False)))
    labeled = settings.data_dir / "raw" / "nyu_depth_v2_labeled.mat"
    labeled.write_bytes(b"truncated")
    nyud, _ = ensure_data(settings, 0.0)
    assert labeled.stat().st_size > len(b"truncated")
    assert _frames(nyud) == 4
    assert json.loads(stamp.read_text())["complete"] is True


def test_ensure_data_leaves_unstamped_data_alone(tmp_path):
    settings = _settings(tmp_path)
    own = settings.data_dir / "nyud" / "images" / "train" / "0001.png"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="did not make"):
        ensure_data(settings, 0.0)
    assert own.read_bytes() == b"a user's file"


def test_work_dir_refuses_other_settings(tmp_path):
    settings = _settings(tmp_path)
    check_work_dir(settings)
    check_work_dir(settings)  # a rerun with the same settings continues
    assert json.loads((settings.work_dir / RUN_STAMP).read_text())["cmim_lambda"] == 0.1
    with pytest.raises(ValueError, match="other settings"):
        check_work_dir(_settings(tmp_path, cmim_lambda=0.5))


def test_work_dir_refuses_a_run_without_stamp(tmp_path):
    settings = _settings(tmp_path)
    (settings.work_dir / "pretrain_cmim").mkdir(parents=True)  # e.g. from an older version
    with pytest.raises(ValueError, match="unknown settings"):
        check_work_dir(settings)


def test_format_summary_states_targets_and_verdicts():
    summary = dict(
        seconds=12.0,
        report="work/report",
        baselines=dict(mean_depth_rmse=0.9, majority_class_mIoU=5.0),
        runs=dict(
            cmim=dict(mIoU=51.0, rmse=0.44, neg_log_rmse=0.82, meets_targets=True),
            baseline=dict(mIoU=49.0, rmse=0.5, neg_log_rmse=0.69, meets_targets=False),
        ),
    )
    text = format_summary(summary)
    assert "RMSE <= 0.450 m" in text
    assert "cmim      mIoU  51.0 %" in text and "meets the targets" in text
    assert "baseline  mIoU  49.0 %" in text and "MISSES the targets" in text
