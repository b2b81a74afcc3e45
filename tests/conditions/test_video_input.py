"""Reading input videos and frame folders: frame selection, fps resampling, geometry and errors."""

import struct
import sys
import zlib
from collections.abc import Iterator

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from stylevid.errors import UserInputError
from stylevid.io.images import MAX_IMAGE_PIXELS, image_size
from stylevid.io.video_input import fit_frame, iter_frames, read_frames, read_image, select_frame_indices

RED, BLUE = (255, 0, 0), (0, 0, 255)


def brightness_frames(count: int, size: int = 32) -> np.ndarray:
    """Grey frames whose brightness encodes their index (10 * index), so a decoded frame names itself."""
    return np.stack([np.full((size, size, 3), 10 * index, np.uint8) for index in range(count)])


def frame_numbers(frames) -> list[int]:
    # H.264 moves a flat grey level by a couple of units at most; rounding recovers the index.
    return [round(float(frame.mean()) / 10) for frame in frames]


@pytest.fixture(scope="module")
def mp4_24fps(tmp_path_factory):
    """24 frames at 24 fps, 32x32 (a multiple of the codec's 16-pixel macroblock, so nothing is padded)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    iio.imwrite(path, brightness_frames(24), fps=24)
    return path


def write_folder(folder, frames, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        name = names[index] if names else f"{index:04d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def split_frame(height=40, width=80):
    """Left half red, right half blue."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, : width // 2] = RED
    frame[:, width // 2 :] = BLUE
    return frame


# --- frame selection ----------------------------------------------------------------------------


def test_reads_every_frame_of_a_video_in_order_as_uint8_rgb(mp4_24fps):
    frames = list(iter_frames(mp4_24fps, height=32, width=32))
    assert frame_numbers(frames) == list(range(24))
    assert all(frame.shape == (32, 32, 3) and frame.dtype == np.uint8 for frame in frames)


def test_frames_come_as_a_stream_not_a_list(mp4_24fps):
    frames = iter_frames(mp4_24fps, height=32, width=32)
    assert isinstance(frames, Iterator) and not isinstance(frames, (list, tuple))
    assert frame_numbers([next(frames)]) == [0]


def test_start_stride_and_max_frames_select_source_frames(mp4_24fps):
    frames = iter_frames(mp4_24fps, height=32, width=32, start=2, stride=3, max_frames=4)
    assert frame_numbers(frames) == [2, 5, 8, 11]
    assert frame_numbers(iter_frames(mp4_24fps, start=20, stride=2)) == [20, 22]
    assert list(iter_frames(mp4_24fps, start=24)) == []


def test_fps_resampling_picks_frames_by_timestamp(mp4_24fps):
    assert frame_numbers(iter_frames(mp4_24fps, fps=8)) == [0, 3, 6, 9, 12, 15, 18, 21]
    # stride steps over the resampled frames; start is a source frame index.
    assert frame_numbers(iter_frames(mp4_24fps, fps=8, stride=2, start=1)) == [1, 7, 13, 19]
    assert frame_numbers(iter_frames(mp4_24fps, fps=8, max_frames=3)) == [0, 3, 6]


def test_select_frame_indices_takes_the_nearest_frame_for_uneven_rates():
    # 30 -> 7 fps: wanted times fall on source frames 0, 4.29, 8.57, 12.86.
    assert select_frame_indices(14, fps=7, timestamps=np.arange(14) / 30.0) == [0, 4, 9, 13]
    # A time during the last frame (12.86 in a 13-frame clip) takes it; none past the clip's end.
    assert select_frame_indices(13, fps=7, timestamps=np.arange(13) / 30.0) == [0, 4, 9, 12]
    # Asking for more fps than the source has repeats frames rather than inventing them.
    assert select_frame_indices(3, fps=20, timestamps=np.arange(3) / 10.0) == [0, 0, 1, 1, 2, 2]
    # Without timing, fps cannot apply.
    assert select_frame_indices(6, stride=2, fps=8) == [0, 2, 4]


# --- geometry -----------------------------------------------------------------------------------


def test_crop_scales_the_short_side_to_cover_and_keeps_the_centre():
    out = fit_frame(split_frame(40, 80), 32, 32, fit="crop")
    # 40x80 -> 32x64 -> columns 16..47: the red/blue boundary lands in the middle of the crop.
    assert out.shape == (32, 32, 3)
    assert (out[:, :15] == RED).all()
    assert (out[:, 17:] == BLUE).all()


def test_pad_fits_the_whole_frame_and_centres_it_on_black():
    out = fit_frame(split_frame(40, 80), 32, 32, fit="pad")
    # 40x80 -> 16x32, placed in rows 8..23.
    assert (out[:8] == 0).all() and (out[24:] == 0).all()
    assert (out[8:24, :15] == RED).all()
    assert (out[8:24, 17:] == BLUE).all()


def test_folder_frames_get_the_same_geometry_as_video_frames(tmp_path):
    folder = write_folder(tmp_path / "frames", [split_frame(40, 80)] * 2)
    frames = read_frames(folder, 2, height=32, width=32)
    np.testing.assert_array_equal(frames[0], fit_frame(split_frame(40, 80), 32, 32))


def test_frames_keep_their_size_when_no_size_is_asked(tmp_path):
    folder = write_folder(tmp_path / "frames", [split_frame(40, 80)])
    (frame,) = iter_frames(folder)
    np.testing.assert_array_equal(frame, split_frame(40, 80))


# --- folders and GIFs ---------------------------------------------------------------------------


def test_folder_frames_are_sorted_naturally_and_other_files_ignored(tmp_path):
    names = ["frame10.png", "frame2.jpg", "frame1.webp"]
    frames = brightness_frames(3)[[2, 1, 0]]  # frameN holds brightness of its number's order
    folder = write_folder(tmp_path / "frames", frames, names)
    (folder / "notes.txt").write_text("not a frame")
    assert frame_numbers(iter_frames(folder, height=32, width=32)) == [0, 1, 2]


def test_folder_is_resampled_only_when_its_source_fps_is_given(tmp_path):
    folder = write_folder(tmp_path / "frames", brightness_frames(12))
    assert frame_numbers(iter_frames(folder, fps=8)) == list(range(12))
    assert frame_numbers(iter_frames(folder, fps=8, source_fps=24)) == [0, 3, 6, 9]


def test_gif_is_read_with_its_frame_durations(tmp_path):
    path = tmp_path / "clip.gif"
    iio.imwrite(path, brightness_frames(12), duration=1000 / 24, loop=0)
    assert frame_numbers(iter_frames(path)) == list(range(12))
    # GIF stores durations in 10 ms units (40 ms here, 25 fps), so 8 fps lands on frames 0, 3.1, 6.25, 9.4.
    assert frame_numbers(iter_frames(path, fps=8)) == [0, 3, 6, 9]


# --- read_frames and errors ---------------------------------------------------------------------


def test_read_frames_returns_exactly_the_requested_count(mp4_24fps):
    frames = read_frames(mp4_24fps, 5, height=16, width=24, stride=2)
    assert frames.shape == (5, 16, 24, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames) == [0, 2, 4, 6, 8]


def test_too_few_frames_says_what_was_found(mp4_24fps):
    with pytest.raises(UserInputError) as error:
        read_frames(mp4_24fps, 16, height=32, width=32, stride=2, label="condition.video")
    assert str(error.value) == (
        f"condition.video {mp4_24fps} has 12 frames after start=0 stride=2 (24 in the source); 16 requested"
    )
    with pytest.raises(UserInputError, match="has 4 frames after start=12 stride=1 fps=8 .* 5 requested"):
        read_frames(mp4_24fps, 5, start=12, fps=8)


def test_max_frames_caps_the_frames_read(mp4_24fps):
    assert frame_numbers(read_frames(mp4_24fps, 3, stride=2, max_frames=5)) == [0, 2, 4]
    with pytest.raises(UserInputError) as error:
        read_frames(mp4_24fps, 5, stride=2, max_frames=3, label="condition.video")
    assert str(error.value) == (
        f"condition.video {mp4_24fps} has 3 frames after start=0 stride=2 max_frames=3 (24 in the source); 5 requested"
    )


def test_missing_path_raises_when_called_not_when_iterated(tmp_path):
    with pytest.raises(UserInputError, match="dance.mp4: no such file or folder"):
        iter_frames(tmp_path / "dance.mp4", label="condition.video")


def test_undecodable_video_is_a_user_error_and_the_decoders_own_lines_stay_off_the_terminal(tmp_path, capfd):
    """ffmpeg and decord print 2-7 lines to fd 2 from C for a broken file (capfd sees fd 2, capsys would not);
    they are kept out of the terminal, and their reason goes into the one-line error instead."""
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"this is not a video" * 50)
    with pytest.raises(UserInputError, match="broken.mp4 cannot be decoded as a video") as error:
        iter_frames(path)
    assert capfd.readouterr().err == ""
    assert "moov atom not found" in str(error.value) and "\n" not in str(error.value)
    print("after", file=sys.stderr)  # fd 2 is restored afterwards
    assert capfd.readouterr().err == "after\n"


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height with no pixel data (an empty IDAT): all Pillow reads to size it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 12000, 20000])  # over MAX_IMAGE_PIXELS; over Pillow's warning; its error
def test_an_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path, side, recwarn):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(side, side))  # a real 20000² image would take seconds to write
    assert side * side > MAX_IMAGE_PIXELS
    with pytest.raises(UserInputError, match=r"huge.png is too large: .*at most 67,108,864 pixels"):
        read_image(path, 64, 64, label="style image")
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_an_image_at_the_pixel_limit_is_measured_from_its_header(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(8192, 8192))
    assert image_size(path) == (8192, 8192)  # allowed, and not decoded to find out


def test_folder_without_frames_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    with pytest.raises(UserInputError, match="folder with no frames"):
        iter_frames(tmp_path / "empty")


def test_unreadable_image_in_a_folder_is_a_user_error(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "0000.png").write_bytes(b"not a png")
    with pytest.raises(UserInputError, match="0000.png cannot be read as an image"):
        list(iter_frames(folder))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(height=30, width=32), "multiples of 8"),
        (dict(height=32), "both height and width"),
        (dict(fit="stretch"), "fit must be one of crop, pad"),
        (dict(stride=0), "stride must be >= 1"),
        (dict(start=-1), "start must be >= 0"),
        (dict(fps=0), "fps must be > 0"),
    ],
)
def test_bad_values_are_user_errors(mp4_24fps, options, message):
    with pytest.raises(UserInputError, match=message):
        iter_frames(mp4_24fps, **options)


def test_unknown_file_type_is_a_user_error(tmp_path):
    path = tmp_path / "clip.txt"
    path.write_text("hello")
    with pytest.raises(UserInputError, match="not a video"):
        iter_frames(path)


@pytest.mark.parametrize("width", [16, 48])
def test_narrow_videos_that_trip_decord_batch_decoding_read_correctly(tmp_path, width):
    # decord 0.6 pads these widths' rows and then fails or returns 4+ channels; the reader undoes it.
    frames = np.zeros((3, 32, width, 3), np.uint8)
    frames[:, :, : width // 2] = RED
    frames[1:] += 40
    path = tmp_path / "narrow.mp4"
    iio.imwrite(path, frames, fps=8)
    decoded = read_frames(path, 3)
    assert decoded.shape == (3, 32, width, 3)
    np.testing.assert_allclose(decoded, frames, atol=12)  # H.264 rounding on a sharp colour edge
