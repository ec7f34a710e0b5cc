"""Run logs: the authors' TSV files (``train.log``, ``train_batch.log``, ``val.log``), appended, never overwritten,
plus optional TensorBoard scalars.

Columns (tab-separated, header on the first line)::

    train.log        epoch  loss  clip_acc  lr  clips_per_s  data_s  skipped
    train_batch.log  epoch  batch  iter  loss  clip_acc  lr
    val.log          epoch  loss  clip_acc  clip_acc5  skipped

Accuracies here are **clip-level** (each clip scored on its own); video-level accuracy comes from the test
phase and the ``eval`` command. Resuming from epoch ``e`` keeps every row up to ``e`` and drops rows
of later epochs that an interrupted run wrote before its last checkpoint (they are about to be redone).
A fresh run in a folder with old logs moves them aside to ``<name>.<n>`` instead of mixing runs.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["TsvLogger", "TensorBoardWriter", "read_tsv", "LOG_COLUMNS"]

LOG_COLUMNS = {
    "train.log": ["epoch", "loss", "clip_acc", "lr", "clips_per_s", "data_s", "skipped"],
    "train_batch.log": ["epoch", "batch", "iter", "loss", "clip_acc", "lr"],
    "val.log": ["epoch", "loss", "clip_acc", "clip_acc5", "skipped"],
}


def read_tsv(path: os.PathLike | str) -> List[Dict[str, str]]:
    """Rows of a TSV log as dicts (header names as keys)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _set_aside(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    target = path.with_name(f"{path.name}.{n}")
    os.replace(path, target)
    return target


class TsvLogger:
    """Append rows to one TSV log (see the module docstring for ``resume_epoch``)."""

    def __init__(self, path: os.PathLike | str, columns: Sequence[str], resume_epoch: Optional[int] = None):
        self.path = Path(path)
        self.columns = list(columns)
        self.moved_to: Optional[Path] = None
        if self.path.exists() and self.path.stat().st_size > 0:
            if resume_epoch is None:
                self.moved_to = _set_aside(self.path)
            else:
                self._drop_rows_after(resume_epoch)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write("\t".join(self.columns) + "\n")

    def _drop_rows_after(self, epoch: int) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if not lines:
            return
        header, rows = lines[0], lines[1:]
        kept = [r for r in rows if not r.split("\t", 1)[0].isdigit() or int(r.split("\t", 1)[0]) <= epoch]
        if len(kept) != len(rows):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("\n".join([header] + kept) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

    def log(self, **values) -> None:
        missing = [c for c in self.columns if c not in values]
        if missing:
            raise KeyError(f"{self.path.name}: missing columns {missing}")
        cells = []
        for c in self.columns:
            v = values[c]
            cells.append(f"{v:.6g}" if isinstance(v, float) else str(v))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\t".join(cells) + "\n")


class TensorBoardWriter:
    """TensorBoard scalars when ``torch.utils.tensorboard`` imports (it needs the ``tensorboard`` package);
    otherwise a no-op that says so once. ``purge_step`` drops events after it on resume."""

    def __init__(self, log_dir: os.PathLike | str, enabled: bool, purge_step: Optional[int] = None):
        self.writer = None
        self.unavailable_reason = ""
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # ImportError when tensorboard is not installed
            self.unavailable_reason = f"TensorBoard scalars skipped: {e} (pip install tensorboard)"
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
