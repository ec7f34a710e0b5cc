"""Frame readers: jpg folders (1-based), HDF5 of JPEG bytes (0-based, flow), PyAV video files; corrupt input."""
import numpy as np
import pytest
import torch

from video3d_fast.data.readers import (
    CorruptVideoError,
    Hdf5Reader,
    JpegFolderReader,
    VideoFileReader,
    make_reader,
)

from .fixtures import jpeg_bytes, random_frames, truncate, write_hdf5, write_jpg_folder, write_mp4


def _as_thwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy().astype(np.float32)


def _which_frames(decoded: torch.Tensor, originals: np.ndarray) -> list:
    """Index of the original frame closest to each decoded frame (lossy codecs: identity, not equality)."""
    got = _as_thwc(decoded)
    dist = np.abs(got[:, None] - originals[None].astype(np.float32)).mean(axis=(2, 3, 4))
    return dist.argmin(axis=1).tolist()


@pytest.fixture(scope="module")
def frames():
    return random_frames(np.random.default_rng(1), 20, 32, 40)


def test_jpg_folder_is_one_based_and_keeps_request_order_with_repeats(tmp_path, frames):
    folder = write_jpg_folder(tmp_path / "v", frames)
    reader = JpegFolderReader()
    assert reader.count_frames(folder) == 20
    out = reader.read(folder, [3, 1, 1, 20])
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 32, 40)
    assert _which_frames(out, frames) == [2, 0, 0, 19]  # image_00003.jpg is frame 2 counting from 0
    assert np.abs(_as_thwc(out)[0] - frames[2]).mean() < 4.0  # JPEG q95 of smooth frames
    assert torch.equal(out[1], out[2])


def test_jpg_folder_missing_frame_and_bad_jpeg_raise_corrupt(tmp_path, frames):
    folder = write_jpg_folder(tmp_path / "v", frames[:5])
    with pytest.raises(CorruptVideoError, match="image_00007.jpg"):
        JpegFolderReader().read(folder, [1, 7])
    (folder / "image_00002.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CorruptVideoError, match="does not decode"):
        JpegFolderReader().read(folder, [1, 2])


def test_jpg_count_prefers_n_frames_file(tmp_path, frames):
    folder = write_jpg_folder(tmp_path / "v", frames[:4])
    (folder / "n_frames").write_text("4\n")
    (folder / "image_00009.jpg").write_bytes(jpeg_bytes(frames[0]))
    assert JpegFolderReader().count_frames(folder) == 4


def test_hdf5_is_zero_based_and_matches_the_jpg_frames(tmp_path, frames):
    path = write_hdf5(tmp_path / "v.hdf5", frames)
    folder = write_jpg_folder(tmp_path / "f", frames)
    reader = Hdf5Reader()
    assert reader.count_frames(path) == 20
    a = reader.read(path, [0, 5, 19])
    b = JpegFolderReader().read(folder, [1, 6, 20])
    assert torch.equal(a, b)  # same JPEG bytes, same decoder


def test_hdf5_end_slack_repeats_last_frame_but_far_past_end_is_corrupt(tmp_path, frames):
    path = write_hdf5(tmp_path / "v.hdf5", frames[:6])
    reader = Hdf5Reader()
    out = reader.read(path, [4, 5, 6])  # a 1-based segment [1, n+1] used on 0-based storage asks for index n
    assert torch.equal(out[1], out[2])
    with pytest.raises(CorruptVideoError, match="truncated"):
        reader.read(path, [5, 30])


def test_hdf5_flow_reads_two_channels(tmp_path):
    rng = np.random.default_rng(2)
    flow = random_frames(rng, 5, 32, 40)[..., :2]
    path = write_hdf5(tmp_path / "flow.hdf5", None, flow=flow)
    out = make_reader("hdf5", "flow").read(path, [0, 4])
    assert out.shape == (2, 2, 32, 40)
    assert np.abs(_as_thwc(out) - flow[[0, 4]].astype(np.float32)).mean() < 3.0


def test_truncated_or_garbage_hdf5_is_corrupt(tmp_path, frames):
    path = truncate(write_hdf5(tmp_path / "v.hdf5", frames), 500)
    with pytest.raises(CorruptVideoError):
        Hdf5Reader().read(path, [0])


def test_video_file_frames_match_what_was_encoded(tmp_path, frames):
    path = write_mp4(tmp_path / "v.mp4", frames)
    reader = VideoFileReader()
    assert reader.count_frames(path) == 20
    out = reader.read(path, [0, 7, 7, 19])
    assert out.shape == (4, 3, 32, 40)
    assert _which_frames(out, frames) == [0, 7, 7, 19]
    assert np.abs(_as_thwc(out)[1] - frames[7]).mean() < 10.0  # H.264 + yuv420p of unrelated random frames
    assert torch.equal(out[1], out[2])


def test_video_seek_gives_the_same_frames_as_decoding_from_the_start(tmp_path):
    frames = random_frames(np.random.default_rng(3), 150, 32, 40)
    path = write_mp4(tmp_path / "long.mp4", frames)
    seeking = VideoFileReader()
    sequential = VideoFileReader()
    sequential.seek_threshold = 10**9
    wanted = [120, 121, 135, 149, 120]
    assert torch.equal(seeking.read(path, wanted), sequential.read(path, wanted))
    assert _which_frames(seeking.read(path, [130, 149]), frames) == [130, 149]


def test_truncated_and_missing_videos_raise_corrupt(tmp_path, frames):
    path = truncate(write_mp4(tmp_path / "v.mp4", frames), 3000)  # cuts the moov atom: "moov atom not found"
    reader = VideoFileReader()
    with pytest.raises(CorruptVideoError):
        reader.read(path, [0, 1])
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptVideoError, match="cannot open"):
        reader.count_frames(tmp_path / "junk.mp4")


def test_video_locate_tries_known_extensions(tmp_path, frames):
    write_mp4(tmp_path / "lab" / "clip.mp4", frames[:3])
    avi = tmp_path / "lab" / "other.avi"
    avi.write_bytes(b"")
    reader = VideoFileReader()
    assert reader.locate(tmp_path, "lab", "clip") == tmp_path / "lab" / "clip.mp4"
    assert reader.locate(tmp_path, "lab", "other") == avi


def test_make_reader_rejects_bad_combinations():
    with pytest.raises(ValueError, match="flow needs --file_type hdf5"):
        make_reader("jpg", "flow")
    with pytest.raises(ValueError, match="file_type"):
        make_reader("png")
