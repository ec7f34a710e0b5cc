"""video3d_fast.data: the authors' video datasets, clip sampling and transforms, on uint8 tensors.

    from video3d_fast.data import load_annotation, make_reader, VideoDataset, ClipSampler
    ann = load_annotation("ucf101_01.json")                  # the authors' JSON layouts
    reader = make_reader("jpg")                               # jpg folders | hdf5 | video (PyAV)
    samples, missing = find_samples(ann, "training", Path("jpg_root"), reader)
    ds = VideoDataset(samples, reader, ClipSampler("random", 16), Compose([RandomResizedCrop(112)]))
    clips, target, video_id, segments = ds[0]                # clips: uint8 [1, 3, 16, 112, 112]

:mod:`.pipeline` builds all of this from a :class:`video3d_fast.config.Config` per phase.
"""
from .annotations import SUBSETS, Annotation, VideoEntry, canonical_subset, load_annotation, parse_annotation, write_annotation
from .datasets import (
    CorruptVideoWarning,
    Sample,
    SkippedSample,
    VideoBatch,
    VideoDataset,
    collate_videos,
    find_samples,
)
from .readers import CorruptVideoError, FrameReader, Hdf5Reader, JpegFolderReader, VideoFileReader, make_reader
from .samplers import ShardedSampler
from .temporal import (
    ClipSampler,
    LoopPadding,
    SlidingWindow,
    TemporalBeginCrop,
    TemporalCenterCrop,
    TemporalEvenCrop,
    TemporalRandomCrop,
    TemporalSubsampling,
)
from .transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    CornerCrop,
    MultiScaleCornerCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    get_mean_std,
)

__all__ = [name for name in dir() if not name.startswith("_")]
