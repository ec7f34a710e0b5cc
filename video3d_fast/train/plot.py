"""``video3d-fast plot RESULT_PATH``: loss and clip-accuracy curves from train.log / val.log to PNG."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from .logs import read_tsv

__all__ = ["plot_run"]


def _column(rows: List[Dict[str, str]], name: str) -> List[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r[name]))
        except (KeyError, TypeError, ValueError):
            out.append(float("nan"))
    return out


def plot_run(result_path: os.PathLike | str, out_dir: Optional[os.PathLike | str] = None) -> List[Path]:
    """Draw ``loss.png`` and ``accuracy.png`` (clip-level, train and val) into ``out_dir`` (default: the run).

    Raises FileNotFoundError when the run has no ``train.log``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result_path = Path(result_path)
    train_log, val_log = result_path / "train.log", result_path / "val.log"
    if not train_log.is_file():
        raise FileNotFoundError(f"{train_log} not found: is {result_path} a run's --result_path?")
    out_dir = Path(out_dir) if out_dir is not None else result_path
    out_dir.mkdir(parents=True, exist_ok=True)
    train = read_tsv(train_log)
    val = read_tsv(val_log) if val_log.is_file() else []
    written = []
    for metric, ylabel, filename in (("loss", "cross-entropy loss", "loss.png"),
                                     ("clip_acc", "clip accuracy (top-1)", "accuracy.png")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        if train:
            ax.plot(_column(train, "epoch"), _column(train, metric), marker="o", ms=3, label="train")
        if val:
            ax.plot(_column(val, "epoch"), _column(val, metric), marker="s", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{result_path.name}: {ylabel}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
