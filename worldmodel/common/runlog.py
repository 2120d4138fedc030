"""Run logs: CSV files of log rows, TensorBoard scalars and a curves PNG.

A world-model run appends ``OUT/train_log.csv`` (every ``log_every`` steps) and ``OUT/eval_log.csv``
(held-out metrics) row by row (:class:`RunLogger`); on resume, rows past the restored step are
dropped so the files never hold two histories. TensorBoard keys are namespaced ``world/train/...``
and ``world/eval/...``. A tokenizer run keeps its rows in its resumable state and rewrites its one
``train_log.csv`` whole (:func:`write_csv`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from envs.common.files import atomic_write


def _number(text: str) -> int | float:
    """A CSV cell back as the number it was written from: "100" -> 100 (steps stay ints), "0.5" -> 0.5."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, int | float]],
              fields: Sequence[str] | None = None) -> None:
    """Write ``rows`` as one CSV file, atomically. Columns: ``fields`` (keys outside them are left out), by
    default ``step``, ``time`` and then every other key of any row, sorted; a row lacking one leaves it empty."""
    if fields is None:
        fields = ["step", "time", *sorted({k for r in rows for k in r} - {"step", "time"})]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue())


class CsvLog:
    """An append-only CSV with a header fixed by its first row (later unknown keys are ignored)."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.fields: list[str] | None = None
        self.rows: list[dict[str, int | float]] = []
        if self.path.is_file() and resume_step is not None:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                # cells keep their written type: float("100") would rewrite the step column as "100.0"
                rows = [{k: _number(v) for k, v in r.items() if v not in ("", None)} for r in reader]
                for r in rows:              # also heals "100.0" steps that older versions rewrote
                    if "step" in r:
                        r["step"] = int(r["step"])
                self.rows = [r for r in rows if r.get("step", 0) <= resume_step]
            self._rewrite()
        elif self.path.is_file():
            self.path.unlink()

    def _rewrite(self) -> None:
        if self.fields is not None:
            write_csv(self.path, self.rows, self.fields)

    def append(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = ["step", *sorted(k for k in row if k != "step")]
            self._rewrite()
        self.rows.append(row)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)


class RunLogger:
    """CSV + optional TensorBoard + curves PNG for one run (rank 0 only)."""

    def __init__(self, out: Path, resume_step: int | None, tensorboard: bool = True):
        self.out = out
        self.train = CsvLog(out / "train_log.csv", resume_step)
        self.eval = CsvLog(out / "eval_log.csv", resume_step)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)
            except ImportError:      # tensorboard is optional: CSV and PNG still work
                self.tb = None

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        (self.train if kind == "train" else self.eval).append({"step": step, **values})
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"world/{kind}/{k}", v, step)

    def plot(self) -> Path:
        """Write ``curves.png``: training loss, masked accuracy and held-out next-frame accuracy."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        tr, ev = self.train.rows, self.eval.rows
        for key, ax in (("loss", axes[0]), ("masked_acc", axes[1])):
            pts = [(r["step"], r[key]) for r in tr if key in r]
            if pts:
                ax.plot(*zip(*pts), label=f"train {key}")
        for key in ("acc_mask0.5", "acc_mask0.9"):
            pts = [(r["step"], r[key]) for r in ev if key in r]
            if pts:
                axes[1].plot(*zip(*pts), marker="o", label=f"held-out {key}")
        for key in ("acc_next", "acc_next_changed", "acc_copy", "acc_next_noaction"):
            pts = [(r["step"], r[key]) for r in ev if key in r]
            if pts:
                axes[2].plot(*zip(*pts), marker="o", label=key)
        titles = ("training loss (weighted masked CE)", "masked-token accuracy", "held-out next-frame accuracy")
        for ax, title in zip(axes, titles):
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = self.out / "curves.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
