"""Progress bars do not flood a log: off a terminal, plain lines at most every few seconds."""

from __future__ import annotations

from cmim_dense.utils.progress import LOG_INTERVAL_S, progress_bar


def test_redirected_progress_writes_few_plain_lines(capsys):
    assert LOG_INTERVAL_S >= 5
    total = sum(progress_bar(range(5000), "frames", "frame"))  # stderr is captured: no tty
    assert total == sum(range(5000))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line]
    assert 1 <= len(lines) <= 3  # the start and the end, nothing per item
    assert lines[-1].startswith("frames: 100%") and "5000/5000" in lines[-1]
