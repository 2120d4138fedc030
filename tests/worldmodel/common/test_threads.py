"""The thread governor: fixed counts stay fixed; adaptive counts follow other processes' CPU use."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from worldmodel.common import threads


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """The governor's tests start from every usable core, not the suite's one thread, so that a count the
    governor sets is one it changed (the suite's fixture restores the count and forgets the governor)."""
    torch.set_num_threads(threads.usable_cores())
    yield


def test_a_fixed_count_is_kept_and_never_measured():
    gov = threads.governor(1)
    assert torch.get_num_threads() == 1
    time.sleep(0.05)
    assert gov.tick(force=True) == 1 and gov.changes == 0


@pytest.mark.parametrize("others, cores, want", [(0.0, 2, 2), (0.2, 2, 2), (0.67, 2, 1), (1.0, 2, 1),
                                                 (1.9, 2, 1), (1.0, 4, 3), (2.6, 4, 1), (0.0, 4, 4)])
def test_adaptive_count_is_the_cores_others_leave_free(monkeypatch, others, cores, want):
    clock = {"t": 100.0, "busy": 5000.0, "own": 10.0}
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    gov = threads.ThreadGovernor(0, interval=0.5)
    # one second passes: this process used 0.5 CPU-s, the others `others` CPU-s
    clock["t"] += 1.0
    clock["own"] += 0.5
    clock["busy"] += 0.5 + others
    assert gov.tick() == want == torch.get_num_threads()
    assert gov.others == pytest.approx(others)
    clock["t"] += 0.1                                   # within the interval: no new measurement
    clock["busy"] += 10
    assert gov.tick() == want


@pytest.mark.skipif(threads.usable_cores() < 2 or threads._busy_seconds() is None,
                    reason="needs 2 cores and /proc/stat")
def test_a_real_busy_process_takes_a_thread_away():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        gov = threads.governor(0, interval=0.2, probe=0.5)
        assert gov.others > 0.5
        assert torch.get_num_threads() == threads.usable_cores() - 1
    finally:
        hog.kill()
        hog.wait()


def test_cli_threads_key_reaches_the_governor(tmp_path):
    from worldmodel.dream.verb import DreamConfig, dream

    # a dream that fails right after the governor started (no such checkpoint): the count is set
    with pytest.raises(Exception, match="no world model"):
        dream(DreamConfig(checkpoint=str(tmp_path / "none"), out=str(tmp_path / "out"), threads=1, frames=2))
    assert torch.get_num_threads() == 1 and threads._CURRENT.requested == 1
