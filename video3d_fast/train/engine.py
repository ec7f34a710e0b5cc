"""The train / validate / test loops (the authors' ``main_worker``, ``train_epoch``, ``val_epoch``, ``inference``).

    from video3d_fast.config import Config
    from video3d_fast.train import Runner
    summary = Runner(Config(video_path=..., annotation_path=..., result_path=..., n_classes=101,
                            inference=True)).run()

Per epoch: train (clip accuracy) -> validate (clip accuracy over ``--n_val_samples`` clips per video) ->
schedule -> checkpoint (``last.pth`` every epoch, ``save_<e>.pth`` every ``--checkpoint`` epochs). After
the last epoch, ``--inference`` runs the video-level test (every sliding-window clip, mean softmax per
video, top-k JSON ``<result_path>/<subset>.json``) and reports video top-1/top-5 when labels exist.

Under torchrun every process runs this code: the data are sharded (``ShardedSampler``), sums of metrics
are all-reduced, and only rank 0 writes logs, checkpoints and results.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..data.annotations import Annotation
from ..data.pipeline import build_dataset, build_loader, build_normalize, load_run_annotation, subset_of_phase
from .checkpoint import (
    atomic_save,
    load_checkpoint_file,
    load_weights,
    make_checkpoint,
    restore_rng_state,
    unwrap_model,
)
from .distributed import (
    DistContext,
    all_agree,
    all_gather_objects,
    all_reduce_sum,
    average_gradients,
    broadcast_from_main,
    init_distributed,
)
from .evaluation import topk_correct, video_accuracy, video_topk_entries
from .finetune import build_model, frozen_batchnorms, select_fine_tuning, train_mode
from .graphs import GraphedTraining, cuda_graph_unsupported_reason
from .logs import LOG_COLUMNS, TensorBoardWriter, TsvLogger
from .optim import LRSchedule, build_optimizer

__all__ = ["EpochResult", "Runner", "TestResult", "TrainingDiverged"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class EpochResult:
    """Averages of one training or validation epoch (accuracies are **clip-level**)."""

    epoch: int
    loss: float
    clip_acc: float
    clip_acc5: float = float("nan")
    n_clips: int = 0
    skipped: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    lr: float = float("nan")

    @property
    def clips_per_s(self) -> float:
        return self.n_clips / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class TestResult:
    """Video-level test outcome; ``accuracy`` is None for unlabelled subsets."""

    subset: str
    path: Optional[Path]
    n_videos: int
    skipped: int
    results: Dict[str, list] = field(default_factory=dict)
    top1: Optional[float] = None
    top5: Optional[float] = None
    mean_class_top1: Optional[float] = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Runner:
    """One run of the loops for a :class:`~video3d_fast.config.Config` (see the module docstring).

    Args:
        cfg: validated options.
        ctx: distributed context (default: from torchrun's environment, or single process).
        echo: where console lines go (rank 0 only); default ``print``.
    """

    def __init__(self, cfg, ctx: Optional[DistContext] = None, echo: Optional[Callable[[str], None]] = None):
        self.cfg = cfg.validate()
        self.ctx = ctx if ctx is not None else init_distributed(cfg)
        self.device = self.ctx.device
        self._echo = echo or (lambda line: print(line, flush=True))
        self.result_dir: Optional[Path] = cfg.resolved_path("result_path")
        if self.result_dir is not None and self.ctx.is_main:
            self.result_dir.mkdir(parents=True, exist_ok=True)
        if cfg.batch_size < self.ctx.world_size:
            raise ValueError(f"--batch_size {cfg.batch_size} is smaller than the {self.ctx.world_size} DDP processes")
        self.batch_per_rank = cfg.batch_size // self.ctx.world_size
        self.workers = math.ceil(cfg.n_threads / self.ctx.world_size) if cfg.n_threads else 0
        self.amp_dtype = _AMP_DTYPES.get(cfg.amp)
        _seed_everything(cfg.manual_seed)
        self._annotation: Optional[Annotation] = None
        self.model = build_model(cfg, self.device, dist_enabled=self.ctx.enabled)
        self.normalize = build_normalize(cfg).to(self.device)
        self.trainable, self.frozen_modules = select_fine_tuning(self.model, cfg.ft_begin_module)
        self.frozen_bn = frozen_batchnorms(self.model)
        self.last_good_checkpoint: Optional[Path] = None
        self.skipped_videos: Dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def echo(self, line: str) -> None:
        if self.ctx.is_main:
            self._echo(line)

    @property
    def annotation(self) -> Annotation:
        if self._annotation is None:
            self._annotation = load_run_annotation(self.cfg)
        return self._annotation

    def _progress(self, iterable, desc: str, total: int):
        if self.cfg.no_progress or not self.ctx.is_main:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        # CUDA-graph capture needs autocast without its weight-cast cache
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype,
                              cache_enabled=not self.cfg.cuda_graph)

    def _inputs(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 clips [N, C, T, H, W] -> normalised float on the device (channels_last_3d if asked)."""
        x = clips.to(self.device, non_blocking=True)
        x = self.normalize(x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def _loader(self, phase: str, dataset, batch_size: int):
        train = phase == "train"
        # --cuda_graph: a last partial batch would run eagerly, its memory next to the graph's pool
        return build_loader(dataset, batch_size, shuffle=train, seed=self.cfg.manual_seed, num_workers=self.workers,
                            rank=self.ctx.rank, world_size=self.ctx.world_size, pad_to_world=train,
                            pin_memory=self.device.type == "cuda", drop_last=train and self.cfg.cuda_graph)

    def _note_skipped(self, batch) -> int:
        for video_id, reason in batch.skipped:
            self.skipped_videos[video_id] = reason
        return len(batch.skipped)

    # ------------------------------------------------------------------ training
    def _setup_training(self):
        cfg = self.cfg
        self.train_set = build_dataset(cfg, "train", self.annotation)
        self.train_loader = self._loader("train", self.train_set, self.batch_per_rank)
        steps = math.ceil(len(self.train_loader) / cfg.accumulation_steps)
        self.optimizer = build_optimizer(self.trainable, cfg)
        self.schedule = LRSchedule(self.optimizer, cfg.lr_scheduler, cfg.n_epochs, steps, cfg.warmup_epochs,
                                   cfg.multistep_milestones, 0.1, cfg.plateau_patience, cfg.cosine_min_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.step_model = self.model
        if cfg.compile:
            self.step_model = torch.compile(self.step_model, mode=cfg.compile_mode)
        self.graphed: Optional[GraphedTraining] = None
        if cfg.cuda_graph:  # under DDP without the wrapper: see graphs.py
            reason = cuda_graph_unsupported_reason(self.device, sync_batchnorm=self.ctx.enabled and cfg.batchnorm_sync,
                                                   accumulation_steps=cfg.accumulation_steps, compile=cfg.compile)
            if reason is not None:
                raise ValueError(reason)
            broadcast_from_main(list(self.model.parameters()) + list(self.model.buffers()), self.ctx)
            self.graphed = GraphedTraining(self.model, echo=self.echo)
        elif self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = nn.parallel.DistributedDataParallel(self.step_model, device_ids=ids)

    def _resume(self) -> int:
        """Load ``--resume_path`` into model/optimizer/schedule/scaler/RNG; return the first epoch to run."""
        cfg = self.cfg
        path = cfg.resolved_path("resume_path")
        ckpt = load_checkpoint_file(path, cfg.allow_unsafe_pickle, "--resume_path")
        load_weights(self.model, path, cfg.arch, cfg.allow_unsafe_pickle, "--resume_path", checkpoint=ckpt)
        if ckpt.get("optimizer") is not None and hasattr(self, "optimizer"):
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError as e:
                raise ValueError(f"--resume_path {path}: optimizer state does not fit this run "
                                 f"(different --ft_begin_module or --optimizer?): {e}") from None
        if hasattr(self, "schedule") and isinstance(ckpt.get("scheduler"), dict) and "plateau_factor" in ckpt["scheduler"]:
            self.schedule.load_state_dict(ckpt["scheduler"], overwrite_milestones=cfg.overwrite_milestones)
        if hasattr(self, "scaler") and ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            restore_rng_state(ckpt["rng"])
        epoch = int(ckpt.get("epoch", 0))
        self.last_good_checkpoint = path
        self.echo(f"resumed from {path} (finished epoch {epoch}); continuing at epoch {epoch + 1}")
        return epoch + 1

    def train_epoch(self, epoch: int, batch_logger: Optional[TsvLogger] = None) -> EpochResult:
        """One epoch of training; returns clip-level averages over all processes."""
        cfg, ctx = self.cfg, self.ctx
        self.train_loader.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        train_mode(self.step_model, self.frozen_bn)
        n_batches = len(self.train_loader)
        accum = cfg.accumulation_steps
        loss_sum = correct = n = skipped = 0.0
        data_time = 0.0
        started = end = time.perf_counter()
        bar = self._progress(self.train_loader, f"train {epoch}/{cfg.n_epochs}", n_batches)
        self.optimizer.zero_grad(set_to_none=True)
        pending_grads = group_synced = False
        for i, batch in enumerate(bar):
            data_time += time.perf_counter() - end
            step, pos = divmod(i, accum)
            group = min(accum, n_batches - step * accum)
            last_of_group = pos == group - 1
            if pos == 0:
                self.schedule.set_step(epoch, step)
            skipped += self._note_skipped(batch)
            batch_loss = None
            if all_agree(len(batch) > 0, ctx):  # every rank skips an empty batch together (DDP lock-step)
                x = self._inputs(batch.clips)
                y = batch.clip_targets.to(self.device, non_blocking=True)
                if self.graphed is not None:  # DDP's broadcast_buffers: every rank steps with rank 0's statistics
                    broadcast_from_main(list(self.model.buffers()), ctx)
                sync = last_of_group or not ctx.enabled
                with (nullcontext() if sync else self.step_model.no_sync()):
                    with self._autocast(), ops.recompute_conv_outputs(cfg.recompute_conv):
                        logits = (self.graphed or self.step_model)(x)
                        loss = F.cross_entropy(logits.float(), y)
                    if not all_agree(bool(torch.isfinite(loss.detach())), ctx):
                        self._diverged(epoch, i, loss)
                    self.scaler.scale(loss / group).backward()
                pending_grads, group_synced = True, sync and self.graphed is None  # graphs: no DDP wrapper
                batch_loss = loss.item()
                loss_sum += batch_loss * len(y)
                correct += topk_correct(logits.detach(), y, (1,))[0]
                n += len(y)
            if last_of_group and pending_grads:
                if ctx.enabled and not group_synced:  # no DDP wrapper, or its last micro-batch was empty
                    average_gradients(self.trainable, ctx)
                if cfg.clip_grad_norm > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                pending_grads = group_synced = False
            lr = self.schedule.current_lr()
            if batch_logger is not None and batch_loss is not None:
                batch_logger.log(epoch=epoch, batch=i + 1, iter=(epoch - 1) * n_batches + i + 1,
                                 loss=batch_loss, clip_acc=float(correct / max(n, 1)), lr=float(lr))
            if bar is not self.train_loader and n:
                bar.set_postfix(loss=f"{loss_sum / n:.3f}", clip_acc=f"{correct / n:.3f}", lr=f"{lr:.3g}")
            elif cfg.no_progress and (i + 1) % cfg.log_interval == 0 and n:
                self.echo(f"Epoch [{epoch}][{i + 1}/{n_batches}] loss {loss_sum / n:.4f} clip_acc {correct / n:.4f} "
                          f"lr {lr:.4g} data {data_time:.1f}s")
            end = time.perf_counter()
        loss_sum, correct, n, skipped = all_reduce_sum([loss_sum, correct, n, skipped], ctx)
        seconds = time.perf_counter() - started
        return EpochResult(epoch, loss_sum / max(n, 1), correct / max(n, 1), n_clips=int(n), skipped=int(skipped),
                           seconds=seconds, data_seconds=data_time, lr=self.schedule.current_lr())

    def _diverged(self, epoch: int, iteration: int, loss: torch.Tensor):
        where = f"epoch {epoch}, iteration {iteration + 1}"
        keep = f"the last good checkpoint is {self.last_good_checkpoint}" if self.last_good_checkpoint else \
            "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged: loss is {float(loss.detach())} at {where}; stopped without saving ({keep}). "
            "Try a lower --learning_rate, --warmup_epochs 1-5, --clip_grad_norm, or --amp bf16 instead of fp16."
        )

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, epoch: int, dataset=None) -> EpochResult:
        """Clip-level loss and top-1/top-5 over ``--n_val_samples`` clips per validation video."""
        cfg, ctx = self.cfg, self.ctx
        if dataset is None:
            dataset = self.val_set
        loader = self._loader("val", dataset, max(1, self.batch_per_rank // cfg.n_val_samples))
        model = unwrap_model(self.model)
        model.eval()
        loss_sum = c1 = c5 = n = skipped = 0.0
        started = time.perf_counter()
        for batch in self._progress(loader, f"val {epoch}", len(loader)):
            skipped += self._note_skipped(batch)
            if len(batch) == 0:
                continue
            y = batch.clip_targets.to(self.device)
            labelled = y >= 0
            if not bool(labelled.any()):
                continue
            with self._autocast():
                logits = model(self._inputs(batch.clips)).float()
            logits, y = logits[labelled], y[labelled]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            a1, a5 = topk_correct(logits, y, (1, 5))
            c1, c5, n = c1 + a1, c5 + a5, n + len(y)
        loss_sum, c1, c5, n, skipped = all_reduce_sum([loss_sum, c1, c5, n, skipped], ctx)
        return EpochResult(epoch, loss_sum / max(n, 1), c1 / max(n, 1), c5 / max(n, 1), n_clips=int(n),
                           skipped=int(skipped), seconds=time.perf_counter() - started)

    # ------------------------------------------------------------------ test (video level)
    @torch.no_grad()
    def test(self, write: bool = True) -> TestResult:
        """Video-level test on ``--inference_subset``: SlidingWindow clips, mean softmax, top-k JSON."""
        cfg, ctx = self.cfg, self.ctx
        dataset = build_dataset(cfg, "test", self.annotation)
        videos_per_batch = max(1, (cfg.inference_batch_size or cfg.batch_size) // ctx.world_size)
        if cfg.inference_crop == "nocrop":
            videos_per_batch = 1  # uncropped clips of different videos differ in size (the authors' rule too)
        loader = self._loader("test", dataset, videos_per_batch)
        chunk = cfg.max_clips_per_forward or self.batch_per_rank
        model = unwrap_model(self.model)
        model.eval()
        names = self.annotation.labels
        results: Dict[str, list] = {}
        skipped = 0
        for batch in self._progress(loader, "test (video level)", len(loader)):
            skipped += self._note_skipped(batch)
            if len(batch) == 0:
                continue
            probs = []
            for start in range(0, batch.clips.shape[0], chunk):
                with self._autocast():
                    logits = model(self._inputs(batch.clips[start : start + chunk]))
                probs.append(F.softmax(logits.float(), dim=1).cpu())
            probs = torch.cat(probs)
            for video_id, clip_probs, segments in zip(batch.video_ids, probs.split(batch.clip_counts.tolist()),
                                                      batch.segments):
                if cfg.inference_no_average:
                    results[video_id] = [
                        {"segment": [int(s[0]), int(s[1])], "result": video_topk_entries(p, names, cfg.output_topk)}
                        for p, s in zip(clip_probs, segments)
                    ]
                else:
                    results[video_id] = video_topk_entries(clip_probs.mean(0), names, cfg.output_topk)
        merged: Dict[str, list] = {}
        for part in all_gather_objects(results, ctx):
            merged.update(part)
        skipped = int(all_reduce_sum([skipped], ctx)[0])
        subset = subset_of_phase(cfg, "test")
        out = TestResult(subset, None, len(merged), skipped, merged)
        if write and ctx.is_main and self.result_dir is not None:
            out.path = self.result_dir / f"{cfg.inference_subset}.json"
            tmp = out.path.with_name(out.path.name + ".tmp")
            tmp.write_text(json.dumps({"results": merged}))
            tmp.replace(out.path)
        gt = self.annotation.ground_truth(subset)
        if gt and not cfg.inference_no_average:
            acc = video_accuracy(gt, merged, (1, 5))
            out.top1, out.top5, out.mean_class_top1 = acc.accuracy(1), acc.accuracy(5), acc.mean_class_top1
        return out

    # ------------------------------------------------------------------ the run
    def run(self) -> Dict:
        """Train/validate/test as the options say; returns a summary dict (rank 0 prints it)."""
        cfg = self.cfg
        if self.result_dir is None and (not cfg.no_train or cfg.inference):
            raise ValueError("--result_path is required (logs, checkpoints and results go there)")
        summary: Dict = {"arch": cfg.arch, "train": [], "val": []}
        begin_epoch = 1
        if not cfg.no_train:
            self._setup_training()
        if not cfg.no_val:
            self.val_set = build_dataset(cfg, "val", self.annotation)
        if cfg.resume_path:
            begin_epoch = self._resume()
        if self.ctx.is_main:
            self._describe(begin_epoch)
        if not cfg.no_train and begin_epoch <= cfg.n_epochs:
            self._epochs(begin_epoch, summary)
        elif not cfg.no_val:
            res = self.validate(begin_epoch - 1)
            summary["val"].append(res)
            self.echo(f"validation: loss {res.loss:.4f}, clip top-1 {100 * res.clip_acc:.2f}%, "
                      f"clip top-5 {100 * res.clip_acc5:.2f}% (clip level)")
        if cfg.inference:
            test = self.test()
            summary["test"] = test
            if test.path is not None:
                self.echo(f"wrote {test.n_videos} video results to {test.path}")
            if test.top1 is not None:
                self.echo(f"test ({test.subset}, video level, {test.n_videos} videos): top-1 {100 * test.top1:.2f}%, "
                          f"top-5 {100 * test.top5:.2f}%, mean-class top-1 {100 * test.mean_class_top1:.2f}%")
        if self.skipped_videos:
            self.echo(f"skipped {len(self.skipped_videos)} unreadable video(s) on this process, e.g. "
                      f"{next(iter(self.skipped_videos.items()))}")
        summary["skipped_videos"] = dict(self.skipped_videos)
        return summary

    def _describe(self, begin_epoch: int) -> None:
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.trainable)
        from ..models.fusion import get_backend

        try:
            backend = get_backend(unwrap_model(self.model))
        except ValueError:
            backend = "n/a"
        self.echo(f"{cfg.arch}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained"
                  + (f"; frozen: {', '.join(self.frozen_modules)}" if self.frozen_modules else "")
                  + f"), backend {backend}, device {self.device}"
                  + (f", {self.ctx.world_size} DDP processes" if self.ctx.enabled else "")
                  + (f", amp {cfg.amp}" if cfg.amp != "none" else ""))
        if hasattr(self, "train_set"):
            self.echo(f"training on {len(self.train_set)} videos, {len(self.train_loader)} batches of "
                      f"{self.batch_per_rank} clips per process, epochs {begin_epoch}..{cfg.n_epochs}")

    def _epochs(self, begin_epoch: int, summary: Dict) -> None:
        cfg, ctx = self.cfg, self.ctx
        resume_epoch = begin_epoch - 1 if cfg.resume_path else None
        loggers = {}
        tb = None
        if ctx.is_main:
            for name in ("train.log", "train_batch.log", "val.log"):
                loggers[name] = TsvLogger(self.result_dir / name, LOG_COLUMNS[name], resume_epoch)
                if loggers[name].moved_to is not None:
                    self.echo(f"previous {name} moved to {loggers[name].moved_to.name} (fresh run, not --resume_path)")
            cfg.save_json(self.result_dir / "opts.json")
            tb = TensorBoardWriter(self.result_dir, cfg.tensorboard, purge_step=begin_epoch if cfg.resume_path else None)
            if tb.unavailable_reason:
                self.echo(tb.unavailable_reason)
        for epoch in range(begin_epoch, cfg.n_epochs + 1):
            tr = self.train_epoch(epoch, loggers.get("train_batch.log"))
            summary["train"].append(tr)
            line = (f"epoch {epoch}/{cfg.n_epochs}: train loss {tr.loss:.4f}, clip acc {100 * tr.clip_acc:.2f}%, "
                    f"lr {tr.lr:.4g}, {tr.clips_per_s:.1f} clips/s (data wait {tr.data_seconds:.1f}s of {tr.seconds:.1f}s)")
            if tr.skipped:
                line += f", {tr.skipped} unreadable videos skipped"
            if ctx.is_main:
                loggers["train.log"].log(epoch=epoch, loss=tr.loss, clip_acc=tr.clip_acc, lr=tr.lr,
                                         clips_per_s=tr.clips_per_s, data_s=tr.data_seconds, skipped=tr.skipped)
                for tag, value in (("train/loss", tr.loss), ("train/clip_acc", tr.clip_acc), ("train/lr", tr.lr)):
                    tb.add_scalar(tag, value, epoch)
            val_loss = None
            if not cfg.no_val:
                va = self.validate(epoch)
                summary["val"].append(va)
                val_loss = va.loss
                line += f" | val loss {va.loss:.4f}, clip acc {100 * va.clip_acc:.2f}%"
                if ctx.is_main:
                    loggers["val.log"].log(epoch=epoch, loss=va.loss, clip_acc=va.clip_acc, clip_acc5=va.clip_acc5,
                                           skipped=va.skipped)
                    tb.add_scalar("val/loss", va.loss, epoch)
                    tb.add_scalar("val/clip_acc", va.clip_acc, epoch)
            self.echo(line)
            self.schedule.step_epoch(val_loss)
            if ctx.is_main:
                state = make_checkpoint(epoch, cfg, self.model, self.optimizer, self.schedule, self.scaler)
                atomic_save(state, self.result_dir / "last.pth")
                if epoch % cfg.checkpoint == 0:
                    atomic_save(state, self.result_dir / f"save_{epoch}.pth")
            ctx.barrier()
            self.last_good_checkpoint = self.result_dir / "last.pth"
        if tb is not None:
            tb.close()
