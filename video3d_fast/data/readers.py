"""Frame readers for the three storages: jpg frame folders, HDF5 files of JPEG bytes, encoded video files.

Every reader returns the requested frames as one uint8 tensor ``[T, C, H, W]`` (RGB; C = 2 for optical flow;
decoded video comes channels-last, as the decoder lays it out),
with frames listed in ``indices`` order (repeats allowed: loop padding repeats indices; each distinct frame is
decoded once). A file that cannot be opened, a JPEG that does not decode, a missing frame file or a video
that ends well before the requested frames raises :class:`CorruptVideoError`, which the datasets turn into
a skipped sample with a warning (never a crash mid-epoch).

Frame numbering follows the authors' storages: ``image_00001.jpg`` is frame 1 (folders are 1-based), HDF5
datasets and decoded video streams are 0-based.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "CorruptVideoError",
    "FrameReader",
    "JpegFolderReader",
    "Hdf5Reader",
    "VideoFileReader",
    "decode_jpeg_frames",
    "make_reader",
    "VIDEO_EXTENSIONS",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
# A stream's frame count from the container can exceed what actually decodes by a frame or two (edit lists,
# dropped B-frames at the end); within this slack a request past the end repeats the last decoded frame.
_END_SLACK_FRAMES = 2

try:  # torchvision's libjpeg-turbo decoder is about 2x faster than PIL here; PIL is the fallback.
    from torchvision.io import ImageReadMode as _ImageReadMode
    from torchvision.io import decode_jpeg as _tv_decode_jpeg
except Exception:  # pragma: no cover - depends on the environment
    _tv_decode_jpeg = None


_INHERITED_REFORMATTERS: list = []  # kept alive on purpose in forked workers (see VideoFileReader._to_tensor)


class CorruptVideoError(RuntimeError):
    """A video file, HDF5 file or frame folder that cannot be (fully) decoded."""


def decode_jpeg_frames(blobs: Sequence[bytes], gray: bool = False) -> List[torch.Tensor]:
    """Decode JPEG byte strings into uint8 ``[C, H, W]`` tensors (C = 3, or 1 with ``gray``)."""
    out = []
    for blob in blobs:
        try:
            if _tv_decode_jpeg is not None:
                data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
                mode = _ImageReadMode.GRAY if gray else _ImageReadMode.RGB
                out.append(_tv_decode_jpeg(data, mode=mode))
            else:
                from PIL import Image

                img = Image.open(io.BytesIO(blob)).convert("L" if gray else "RGB")
                arr = np.asarray(img)
                arr = arr[:, :, None] if gray else arr
                out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        except Exception as e:  # both decoders raise assorted types for bad data
            raise CorruptVideoError(f"JPEG frame does not decode: {e}") from e
    return out


def _clamp_to_end(indices: Sequence[int], first: int, last: int, where) -> List[int]:
    """Map requests up to the end slack past ``last`` onto ``last``; anything else out of range is an error."""
    out = []
    for i in indices:
        if first <= i <= last:
            out.append(i)
        elif last >= first and last < i <= last + _END_SLACK_FRAMES:
            out.append(last)
        else:
            raise CorruptVideoError(f"{where}: frame {i} requested but only frames {first}..{last} exist (truncated?)")
    return out


def _stack(frames: Dict[int, torch.Tensor], indices: Sequence[int], where, hwc: bool = False) -> torch.Tensor:
    """``[T, C, H, W]`` of ``frames[i]`` for i in indices; ``hwc`` frames stack into a channels-last view."""
    picked = [frames[i] for i in indices]
    shapes = {tuple(f.shape) for f in picked}
    if len(shapes) != 1:
        raise CorruptVideoError(f"{where}: frames have different sizes {sorted(shapes)}")
    out = torch.stack(picked)
    return out.permute(0, 3, 1, 2) if hwc else out


class FrameReader:
    """Interface of a storage: where a video lives, how many frames it has, how to read some of them."""

    file_type: str = ""
    first_index: int = 0  # number of the first frame in this storage

    def locate(self, root: Path, label_dir: str, name: str) -> Path:
        """Path of video ``name`` stored under ``root/label_dir`` (the authors' layout)."""
        raise NotImplementedError

    def exists(self, path: Path) -> bool:
        raise NotImplementedError

    def count_frames(self, path: Path) -> int:
        raise NotImplementedError

    def read(self, path: Path, indices: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError


class JpegFolderReader(FrameReader):
    """The authors' frame folders: ``<root>/<label>/<video_id>/image_00001.jpg`` ... (1-based, 5 digits).

    An ``n_frames`` text file (CVPR-era preparation) gives the count without listing the folder.
    """

    file_type = "jpg"
    first_index = 1

    def __init__(self, image_template: str = "image_{:05d}.jpg"):
        self.image_template = image_template
        prefix, _, _ = image_template.partition("{")
        self._pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(Path(image_template).suffix) + "$")

    def locate(self, root: Path, label_dir: str, name: str) -> Path:
        return root / label_dir / name

    def exists(self, path: Path) -> bool:
        return path.is_dir()

    def count_frames(self, path: Path) -> int:
        n_frames_file = path / "n_frames"
        if n_frames_file.is_file():
            try:
                return int(n_frames_file.read_text().strip())
            except ValueError:
                pass
        try:
            numbers = [int(m.group(1)) for m in map(self._pattern.match, os.listdir(path)) if m]
        except OSError as e:
            raise CorruptVideoError(f"{path}: cannot list frame folder: {e}") from e
        return max(numbers, default=0)

    def read(self, path: Path, indices: Sequence[int]) -> torch.Tensor:
        if len(indices) == 0:
            raise CorruptVideoError(f"{path}: no frame indices to read (empty segment)")
        wanted = sorted(set(indices))
        blobs = []
        for i in wanted:
            try:
                with open(path / self.image_template.format(i), "rb") as f:
                    blobs.append(f.read())
            except OSError as e:
                raise CorruptVideoError(f"{path}: missing or unreadable frame {self.image_template.format(i)}") from e
        try:
            decoded = decode_jpeg_frames(blobs)
        except CorruptVideoError as e:
            raise CorruptVideoError(f"{path}: {e}") from e
        return _stack(dict(zip(wanted, decoded)), indices, path)


class Hdf5Reader(FrameReader):
    """The authors' HDF5 storage: ``<root>/<label>/<video_id>.hdf5`` with dataset ``video`` holding one
    variable-length uint8 array (the JPEG bytes) per frame, 0-based. Optical flow files hold ``video_u`` and
    ``video_v`` (grayscale JPEGs); they are read as 2 channels (u, v), which is what the authors' loader
    feeds the network after ``PickFirstChannels(2)``.
    """

    file_type = "hdf5"
    first_index = 0

    def __init__(self, input_type: str = "rgb"):
        if input_type not in ("rgb", "flow"):
            raise ValueError(f"input_type must be 'rgb' or 'flow', got {input_type!r}")
        self.input_type = input_type
        self.keys = ("video",) if input_type == "rgb" else ("video_u", "video_v")

    def locate(self, root: Path, label_dir: str, name: str) -> Path:
        return root / label_dir / f"{name}.hdf5"

    def exists(self, path: Path) -> bool:
        return path.is_file()

    def _open(self, path: Path):
        import h5py

        try:
            return h5py.File(path, "r")
        except Exception as e:  # h5py raises OSError for truncated/non-HDF5 files
            raise CorruptVideoError(f"{path}: cannot open HDF5 file: {e}") from e

    def count_frames(self, path: Path) -> int:
        with self._open(path) as f:
            try:
                return min(len(f[k]) for k in self.keys)
            except KeyError as e:
                raise CorruptVideoError(f"{path}: missing dataset {e}") from e

    def read(self, path: Path, indices: Sequence[int]) -> torch.Tensor:
        if len(indices) == 0:
            raise CorruptVideoError(f"{path}: no frame indices to read (empty segment)")
        with self._open(path) as f:
            try:
                available = min(len(f[k]) for k in self.keys)
                indices = _clamp_to_end(indices, 0, available - 1, path)
                wanted = sorted(set(indices))
                planes = []
                for key in self.keys:
                    blobs = [f[key][i].tobytes() for i in wanted]
                    planes.append(decode_jpeg_frames(blobs, gray=self.input_type == "flow"))
            except CorruptVideoError as e:
                raise CorruptVideoError(f"{path}: {e}") from e
            except (KeyError, OSError, ValueError) as e:
                raise CorruptVideoError(f"{path}: unreadable HDF5 content: {e}") from e
        decoded = [torch.cat(parts, dim=0) for parts in zip(*planes)]
        return _stack(dict(zip(wanted, decoded)), indices, path)


class VideoFileReader(FrameReader):
    """Encoded video files (mp4/avi/mkv/webm...) decoded with PyAV: ``<root>/<label>/<video_id>.<ext>``.

    Frames are numbered 0.. in decoding order. A clip that starts late in a long video seeks to the
    keyframe before it (the frame numbers then come from timestamps, exact for constant-frame-rate videos,
    which is what the preparation commands and common datasets hold); early clips decode from the start.
    """

    file_type = "video"
    first_index = 0
    seek_threshold = 96  # frames; below this, decoding from the start is cheaper than seeking

    def __init__(self, extensions: Sequence[str] = VIDEO_EXTENSIONS, threads: int = 1):
        self.extensions = tuple(extensions)
        self.threads = threads
        self._reformatter = None
        self._reformatter_pid = None

    def __getstate__(self):  # the cached converter is per process (DataLoader workers build their own)
        state = dict(self.__dict__)
        state["_reformatter"] = state["_reformatter_pid"] = None
        return state

    def _to_tensor(self, frame) -> torch.Tensor:
        # One VideoReformatter reuses its swscale context across frames: ~0.2 ms per small frame instead of
        # 0.6-5 ms for frame.to_ndarray(format="rgb24"), which rebuilds it on every call. It must not cross
        # a fork: swscale's worker threads do not exist in a forked DataLoader worker, which then hangs.
        if self._reformatter is None or self._reformatter_pid != os.getpid():
            from av.video.reformatter import VideoReformatter

            if self._reformatter is not None:  # inherited through fork: freeing it would wait on those threads
                _INHERITED_REFORMATTERS.append(self._reformatter)
            self._reformatter = VideoReformatter()
            self._reformatter_pid = os.getpid()
        return torch.from_numpy(self._reformatter.reformat(frame, format="rgb24").to_ndarray())  # [H, W, C]

    def locate(self, root: Path, label_dir: str, name: str) -> Path:
        base = root / label_dir / name
        if base.suffix.lower() in self.extensions and base.is_file():
            return base
        for ext in self.extensions:
            candidate = base.with_name(base.name + ext)
            if candidate.is_file():
                return candidate
        return base.with_name(base.name + self.extensions[0])

    def exists(self, path: Path) -> bool:
        return path.is_file()

    def _open(self, path: Path):
        import av

        try:
            container = av.open(str(path))
            stream = container.streams.video[0]
        except Exception as e:  # av.error.* (InvalidDataError "moov atom not found", ...), IndexError: no video
            raise CorruptVideoError(f"{path}: cannot open video: {e}") from e
        stream.thread_type = "AUTO" if self.threads != 1 else "SLICE"
        stream.thread_count = self.threads
        return container, stream

    def count_frames(self, path: Path) -> int:
        container, stream = self._open(path)
        try:
            if stream.frames and stream.frames > 0:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))
        except Exception as e:
            raise CorruptVideoError(f"{path}: decoding failed while counting frames: {e}") from e
        finally:
            container.close()

    def read(self, path: Path, indices: Sequence[int]) -> torch.Tensor:
        if len(indices) == 0:
            raise CorruptVideoError(f"{path}: no frame indices to read (empty segment)")
        want_set = set(indices)
        frames, last_index = self._decode(path, want_set, allow_seek=True)
        if min(frames) > min(want_set):  # the seek landed after the clip (odd timestamps): decode from the start
            frames, last_index = self._decode(path, want_set, allow_seek=False)
        indices = _clamp_to_end(indices, 0, last_index, path)
        missing = sorted(set(indices) - frames.keys())
        if missing:
            raise CorruptVideoError(f"{path}: frames {missing[:5]} were not decoded (damaged stream?)")
        return _stack(frames, indices, path, hwc=True)  # channels-last [T, C, H, W]: no transposing copy

    def _decode(self, path: Path, want_set: set, allow_seek: bool):
        """Decode up to the last wanted frame; return ({index: [C,H,W]} incl. the last decoded frame, its index)."""
        last_wanted = max(want_set)
        container, stream = self._open(path)
        frames: Dict[int, torch.Tensor] = {}
        last_frame, last_index, n_decoded = None, -1, 0
        try:
            numbering = self._seek(container, stream, min(want_set)) if allow_seek else (lambda frame, n: n)
            for frame in container.decode(stream):
                index = numbering(frame, n_decoded)
                n_decoded += 1
                last_frame, last_index = frame, index
                if index in want_set:
                    frames[index] = self._to_tensor(frame)
                if index >= last_wanted:
                    break
        except Exception as e:
            if last_frame is None:
                raise CorruptVideoError(f"{path}: decoding failed: {e}") from e
            # A damaged tail keeps the frames that decoded; read() decides whether enough of the clip exists.
        finally:
            container.close()
        if last_frame is None:
            raise CorruptVideoError(f"{path}: no frame decoded")
        if last_index not in frames:
            frames[last_index] = self._to_tensor(last_frame)
        return frames, last_index

    def _seek(self, container, stream, first_wanted: int):
        """Seek near ``first_wanted`` when worthwhile; return ``f(frame, n_decoded) -> frame index``."""
        rate = stream.average_rate
        if first_wanted < self.seek_threshold or not rate or stream.time_base is None:
            return lambda frame, n: n
        start = stream.start_time or 0
        target_pts = start + int(round((first_wanted - 8) / float(rate) / float(stream.time_base)))
        container.seek(max(start, target_pts), stream=stream, backward=True, any_frame=False)

        def from_pts(frame, n):
            if frame.pts is None:
                raise CorruptVideoError("frame without timestamp after seeking")
            return int(round((frame.pts - start) * float(stream.time_base) * float(rate)))

        return from_pts


def make_reader(file_type: str, input_type: str = "rgb", image_template: str = "image_{:05d}.jpg") -> FrameReader:
    """Reader for ``--file_type`` jpg / hdf5 / video (``--input_type flow`` needs hdf5, as in the authors' code)."""
    if input_type not in ("rgb", "flow"):
        raise ValueError(f"input_type must be 'rgb' or 'flow', got {input_type!r}")
    if input_type == "flow" and file_type != "hdf5":
        raise ValueError("--input_type flow needs --file_type hdf5 (datasets video_u / video_v)")
    if file_type == "jpg":
        return JpegFolderReader(image_template)
    if file_type == "hdf5":
        return Hdf5Reader(input_type)
    if file_type == "video":
        return VideoFileReader()
    raise ValueError(f"file_type must be 'jpg', 'hdf5' or 'video', got {file_type!r}")


def available_frames(reader: FrameReader, path: Path, segment: Optional[tuple]) -> range:
    """Frame numbers of a sample: the annotation's segment, or every frame of the storage."""
    if segment is not None:
        return range(segment[0], segment[1])
    n = reader.count_frames(path)
    return range(reader.first_index, reader.first_index + n)
