"""``video3d-fast``: the command line.

    video3d-fast demo [--quick]                         # the embedded end-to-end demo (README's first command)
    video3d-fast train --config run.yaml [--authors' flags ...]
    video3d-fast test  --resume_path runs/x/last.pth [flags ...]   # video-level test -> <result_path>/<subset>.json
    video3d-fast eval  annotation.json val.json [-k 1 5] [--subset validation]
    video3d-fast prepare {frames,hdf5,kinetics,ucf101,hmdb51,mit,folders,activitynet-fps} ...
    video3d-fast plot  runs/x                           # loss / clip-accuracy curves to PNG
    video3d-fast loader-bench [train flags ...]         # loader clips/s vs model step clips/s

``train``/``test``/``loader-bench`` accept every option of :class:`video3d_fast.config.Config` under the
authors' names (``--model``, ``--model_depth``, ``--sample_size``, ``--sample_duration``, ``--n_classes``,
``--learning_rate``, ``--resume_path``, ``--pretrain_path``, ``--ft_begin_module``, ...) and ``--config
FILE.yaml``; flags given on the command line win over the file. Under ``torchrun`` they run DDP.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from .config import Config

    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML file of option: value pairs (command-line flags override it)")
    group = parser.add_argument_group("run options (the authors' names; see video3d_fast/config.py)")
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", "") + f" (default: {default!r})"}
        if isinstance(default, bool):
            group.add_argument(f"--{f.name}", action="store_true", **kwargs)
            continue
        if isinstance(default, list):
            kwargs.update(nargs="+", type=int)
        elif isinstance(default, float):
            kwargs["type"] = float
        elif isinstance(default, int):
            kwargs["type"] = int
        else:
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(f"--{f.name}", **kwargs)


def config_from_args(args: argparse.Namespace, **forced):
    """Config = defaults < --config YAML < command-line flags < ``forced`` (what the subcommand implies)."""
    from .config import Config, config_from_dict, load_yaml_config

    values = vars(args)
    cfg = load_yaml_config(values["config"]) if "config" in values else Config()
    field_names = {f.name for f in dataclasses.fields(Config)}
    flags = {k: v for k, v in values.items() if k in field_names}
    cfg = config_from_dict(flags, cfg, source="command line")
    cfg = config_from_dict(forced, cfg, source="command")
    return cfg.validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video3d-fast", description="3D-CNN video classification on fused kernels")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="embedded end-to-end demo: motion dataset, train, test, accuracy table")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for CI): fewer videos and epochs")
    p.add_argument("--workdir", default="runs/demo", help="where the data and the runs go (default: runs/demo)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "cpu", "cuda", "triton"],
                   help="fused-op backend (auto: the C++ CPU kernels on a CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")

    for name, text in (("train", "train (and validate, and with --inference test) a model"),
                       ("test", "video-level test of a checkpoint (--resume_path): top-k JSON + video accuracy"),
                       ("loader-bench", "measure the training loader alone against the model's step time")):
        p = sub.add_parser(name, help=text)
        _add_config_flags(p)
        if name == "loader-bench":
            p.add_argument("--batches", type=int, default=20, help="loader batches to time (default 20)")
            p.add_argument("--steps", type=int, default=3, help="model steps to time (default 3)")

    p = sub.add_parser("eval", help="video top-k accuracy of a result JSON against an annotation JSON")
    p.add_argument("annotation", help="annotation JSON (ground truth)")
    p.add_argument("result", help="result JSON written by `test` (or by the authors' inference)")
    p.add_argument("-k", "--topk", type=int, nargs="+", default=[1, 5], help="k values (default: 1 5)")
    p.add_argument("--subset", default="validation", help="subset of the annotation (validation/val, training, testing)")
    p.add_argument("--ignore", action="store_true", help="leave videos without a result out of the denominator")
    p.add_argument("--save", action="store_true", help="write top<k>.txt next to the result file")

    p = sub.add_parser("plot", help="draw loss and clip-accuracy curves of a run to PNG")
    p.add_argument("result_path", help="the run's --result_path (holds train.log, val.log)")
    p.add_argument("--out", default=None, help="output folder (default: the run's folder)")

    _add_prepare(sub)
    return parser


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="make frames / HDF5 / annotation JSON from videos and official split files")
    ps = p.add_subparsers(dest="what", metavar="WHAT")
    for name, text in (("frames", "videos -> <dst>/<label>/<video>/image_00001.jpg"),
                       ("hdf5", "videos -> <dst>/<label>/<video>.hdf5 (JPEG bytes per frame)")):
        q = ps.add_parser(name, help=text)
        q.add_argument("src", help="folder of <label>/<video>.mp4|.avi|... (or the videos themselves with --flat)")
        q.add_argument("dst", help="output folder")
        q.add_argument("--flat", action="store_true", help="videos directly in src (ActivityNet)")
        q.add_argument("--size", type=int, default=240, help="short side in pixels, <= 0 keeps it (default 240)")
        q.add_argument("--fps", type=float, default=-1, help="resample to this frame rate (default: keep all frames)")
        q.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
        q.add_argument("--n_jobs", type=int, default=1, help="worker processes (default 1)")
    q = ps.add_parser("kinetics", help="Kinetics CSVs -> annotation JSON")
    q.add_argument("csv_dir")
    q.add_argument("n_classes", type=int, help="400, 600 or 700 (selects kinetics-<N>_*.csv)")
    q.add_argument("video_path", help="prepared videos (to add frame counts)")
    q.add_argument("file_type", choices=["jpg", "hdf5", "video"])
    q.add_argument("dst", help="output JSON")
    for name in ("ucf101", "hmdb51"):
        q = ps.add_parser(name, help=f"{name} split files -> one annotation JSON per split")
        q.add_argument("annotation_dir")
        q.add_argument("video_path")
        q.add_argument("dst_dir")
        q.add_argument("--file_type", default="jpg", choices=["jpg", "hdf5", "video"])
    q = ps.add_parser("mit", help="Moments in Time CSVs -> annotation JSON")
    q.add_argument("annotation_dir")
    q.add_argument("video_path")
    q.add_argument("dst")
    q.add_argument("--file_type", default="jpg", choices=["jpg", "hdf5", "video"])
    q = ps.add_parser("folders", help="your own <root>/<label>/<video> tree -> annotation JSON (random split)")
    q.add_argument("video_path")
    q.add_argument("dst")
    q.add_argument("--file_type", default="video", choices=["jpg", "hdf5", "video"])
    q.add_argument("--val_fraction", type=float, default=0.2)
    q.add_argument("--seed", type=int, default=0)
    q = ps.add_parser("activitynet-fps", help="add fps to the official ActivityNet JSON")
    q.add_argument("activitynet_json")
    q.add_argument("video_dir", help="folder of v_<id> videos or frame folders with an fps file")
    q.add_argument("dst")


def _run_prepare(args) -> int:
    from .data import prepare

    if args.what in ("frames", "hdf5"):
        fn = prepare.extract_frames if args.what == "frames" else prepare.pack_hdf5
        report = fn(args.src, args.dst, flat=args.flat, size=args.size, fps=args.fps, quality=args.quality,
                    n_jobs=args.n_jobs, progress=True)
        print(f"{args.what}: {report.summary()}")
        return 1 if report.failed and not report.written and not report.skipped_existing else 0
    if args.what == "kinetics":
        print("wrote", prepare.kinetics_json(args.csv_dir, args.n_classes, args.video_path, args.file_type, args.dst))
    elif args.what == "ucf101":
        print("wrote", *prepare.ucf101_json(args.annotation_dir, args.video_path, args.dst_dir, args.file_type))
    elif args.what == "hmdb51":
        print("wrote", *prepare.hmdb51_json(args.annotation_dir, args.video_path, args.dst_dir, args.file_type))
    elif args.what == "mit":
        print("wrote", prepare.mit_json(args.annotation_dir, args.video_path, args.dst, args.file_type))
    elif args.what == "folders":
        print("wrote", prepare.folders_json(args.video_path, args.dst, args.file_type, args.val_fraction, args.seed))
    elif args.what == "activitynet-fps":
        path, missing = prepare.add_activitynet_fps(args.activitynet_json, args.video_dir, args.dst)
        print(f"wrote {path}" + (f" ({missing} videos without fps: not found or unreadable)" if missing else ""))
    else:
        raise SystemExit("video3d-fast prepare: choose what to prepare (see --help)")
    return 0


def _run_loader_bench(args) -> int:
    import torch

    from .data.pipeline import build_dataset, build_loader, build_normalize
    from .train.distributed import _pick_device
    from .train.finetune import build_model
    from .train.throughput import ThroughputReport, measure_loader, measure_train_step

    cfg = config_from_args(args)
    device = _pick_device(cfg, 0)
    dataset = build_dataset(cfg, "train")
    loader = build_loader(dataset, cfg.batch_size, shuffle=True, seed=cfg.manual_seed, num_workers=cfg.n_threads)
    loader_rate, skipped = measure_loader(loader, args.batches)
    model = build_model(cfg, device)
    batch = next(iter(loader))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    seconds = measure_train_step(model, build_normalize(cfg).to(device), batch.clips, cfg.n_classes, args.steps,
                                 device, amp, cuda_graph=cfg.cuda_graph)
    report = ThroughputReport(loader_rate, batch.clips.shape[0] / seconds, seconds, batch.clips.shape[0],
                              cfg.n_threads, skipped)
    print(report.summary())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.simplefilter("default", UserWarning)  # show each skipped-video warning (the default shows them once per place)
    from .train.engine import TrainingDiverged

    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:  # usage and data errors: a message, no traceback
        print(f"video3d-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.command == "demo":
        from .train.demo import run_demo

        run_demo(args.workdir, quick=args.quick, backend=args.backend, threads=args.threads,
                 progress=not args.no_progress)
        return 0
    if args.command in ("train", "test"):
        from .train.engine import Runner

        forced = {} if args.command == "train" else {"no_train": True, "no_val": True, "inference": True}
        cfg = config_from_args(args, **forced)
        if args.command == "test" and not cfg.resume_path:
            raise ValueError("test needs weights: --resume_path <checkpoint> (the authors' option for inference)")
        runner = Runner(cfg)
        try:
            runner.run()
        finally:
            runner.ctx.shutdown()
        return 0
    if args.command == "eval":
        from .train.evaluation import evaluate_result_file

        acc = evaluate_result_file(args.annotation, args.result, args.subset, args.topk, args.ignore, args.save)
        print(acc.summary())
        return 0
    if args.command == "plot":
        from .train.plot import plot_run

        for path in plot_run(args.result_path, args.out):
            print("wrote", path)
        return 0
    if args.command == "prepare":
        return _run_prepare(args)
    if args.command == "loader-bench":
        return _run_loader_bench(args)
    raise SystemExit(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
