"""video3d_fast.train: the train / validate / test loops, optimisation, checkpoints, logs, DDP, evaluation.

    from video3d_fast.config import Config
    from video3d_fast.train import Runner
    Runner(Config(video_path="jpg", annotation_path="ucf101_01.json", result_path="runs/ucf",
                  n_classes=101, inference=True)).run()
"""
from .checkpoint import atomic_save, load_checkpoint_file, make_checkpoint
from .engine import EpochResult, Runner, TestResult, TrainingDiverged
from .evaluation import VideoAccuracy, evaluate_result_file, topk_correct, video_accuracy
from .graphs import GraphedTraining
from .optim import LRSchedule, build_optimizer

__all__ = [
    "EpochResult",
    "GraphedTraining",
    "LRSchedule",
    "Runner",
    "TestResult",
    "TrainingDiverged",
    "VideoAccuracy",
    "atomic_save",
    "build_optimizer",
    "evaluate_result_file",
    "load_checkpoint_file",
    "make_checkpoint",
    "topk_correct",
    "video_accuracy",
]
