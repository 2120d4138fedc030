"""train_log.csv / eval_log.csv across resumes: rows past the restored step dropped, steps stay integers."""

from __future__ import annotations

import csv

import pytest
import torch

from envs.dataset import write_dataset
from worldmodel.common.runlog import CsvLog


def raw_steps(path) -> list[str]:
    with path.open(newline="") as f:
        return [r["step"] for r in csv.DictReader(f)]


def test_resume_keeps_integer_steps_and_drops_later_rows(tmp_path):
    path = tmp_path / "train_log.csv"
    log = CsvLog(path)
    for step in (25, 50, 75):
        log.append({"step": step, "loss": 1.0 / step, "lr": 1e-3})
    resumed = CsvLog(path, resume_step=50)                  # state saved at 50: the row of 75 is dropped
    assert [r["step"] for r in resumed.rows] == [25, 50] and all(type(r["step"]) is int for r in resumed.rows)
    resumed.append({"step": 75, "loss": 0.5, "lr": 1e-3})
    again = CsvLog(path, resume_step=75)
    again.append({"step": 100, "loss": 0.25, "lr": 1e-3})
    assert raw_steps(path) == ["25", "50", "75", "100"]
    assert again.rows[0]["loss"] == 1.0 / 25 and type(again.rows[0]["loss"]) is float


def test_resume_heals_float_steps_written_by_older_versions(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text("step,loss\n25.0,0.5\n50.0,0.25\n")
    log = CsvLog(path, resume_step=50)
    log.append({"step": 75, "loss": 0.125})
    assert raw_steps(path) == ["25", "50", "75"]


@pytest.mark.slow
def test_training_resume_writes_integer_steps(tmp_path):
    from tests.worldmodel.training.test_training import ACTIONS, painted_episodes, tiny_cfg
    from worldmodel.training.loop import train

    data = tmp_path / "tokens"
    write_dataset(data, painted_episodes(4, 12, 0), "train", "tokens", "synthetic", ACTIONS)
    n = torch.get_num_threads()
    try:
        train(tiny_cfg(steps=2, ckpt_every=2, batch_size=4), data, tmp_path / "run")
        train(tiny_cfg(steps=4, ckpt_every=2, batch_size=4), data, tmp_path / "run")    # resumes at step 2
    finally:
        torch.set_num_threads(n)
    assert raw_steps(tmp_path / "run" / "train_log.csv") == ["1", "2", "3", "4"]
