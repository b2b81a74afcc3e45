"""Bad input to `stylevid invert` and `stylevid evaluate`, through the real CLI: one row per key a user types
(conf/invert.yaml, conf/evaluate.yaml, conf/metrics/*.yaml). Each must end in exit code 2 with one line on stderr
naming the key or the file, and leave no run directory behind.

stderr is read at the file-descriptor level (capfd), so what C libraries print (ffmpeg, decord, libpng) counts too.
"""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_stylevid
from stylevid.io.video import write_video


def png_header(side: int) -> bytes:
    """A PNG claiming side x side pixels with no pixel data: Pillow sizes it from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_pipe):
    """Inputs good and bad. tiny_pipe: libraries that print once when first imported are imported by now."""
    d = tmp_path_factory.mktemp("inputs")
    rows, cols = np.mgrid[0:64, 0:64]
    frames = np.stack([np.stack([(cols * 2 + 12 * k) % 256, (rows * 3) % 256, np.full_like(cols, 90)], -1)
                       for k in range(4)]).astype(np.uint8)
    write_video(d / "clip.mp4", frames, fps=8)
    Image.fromarray(frames[0]).save(d / "photo.png")
    (d / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    (d / "text.png").write_text("not an image")
    (d / "huge.png").write_bytes(png_header(20000))
    (d / "folder.png").mkdir()
    (d / "folder.pt").mkdir()
    (d / "empty").mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "weights.pt").write_text("not TorchScript")
    (d / "stats.npz").write_text("not an npz")
    for name, video in (("run", "clip.mp4"), ("garbage_run", "garbage.mp4")):
        (d / name).mkdir()
        (d / name / "video.mp4").write_bytes((d / video).read_bytes())
        (d / name / "result.json").write_text(json.dumps({"task": "generate", "method": "t2v_zero",
                                                          "prompt": "a cat", "seed": 0}))
    (d / "broken_run").mkdir()
    (d / "broken_run" / "result.json").write_text("{not json")
    (d / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (d / "videos" / name).write_bytes((d / "clip.mp4").read_bytes())
    (d / "occupied").mkdir()
    (d / "occupied" / "keep.txt").write_text("someone's file")
    return d


def check_one_line_error(args, capfd, names: str, inputs: Path):
    """Exit code 2, one line naming `names`; and nothing written among the inputs (no run or evaluation there)."""
    before = sorted(inputs.rglob("*"))
    code, out, err = run_stylevid(args, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1, err
    assert names in lines[0], lines[0]
    assert sorted(inputs.rglob("*")) == before


# (overrides, text the error must contain: the key or the file); {d} is the inputs folder.
INVERT_ROWS = [
    ([], "input="),
    (["input={d}/missing.mp4"], "missing.mp4"),
    (["input={d}/garbage.mp4"], "garbage.mp4"),  # ffmpeg's and decord's own lines included
    (["input={d}/text.png"], "text.png"),
    (["input={d}/huge.png"], "huge.png is too large"),
    (["input={d}/folder.png"], "folder.png"),
    (["input={d}/empty"], "empty"),
    (["input={d}/notes.txt"], "notes.txt"),
    (["input={d}/photo.png", "start=1"], "start=1"),
    (["prompt=[a,b]"], "prompt"),
    (["negative_prompt=[a,b]"], "negative_prompt"),
    (["steps=abc"], "steps"),
    (["steps=0"], "steps"),
    (["steps=1.5"], "steps"),
    (["steps=6000"], "steps must be at most 1000"),  # beyond the scheduler's training timesteps
    (["guidance_scale=abc"], "guidance_scale"),
    (["guidance_scale=nan"], "guidance_scale"),
    (["guidance_scale=inf"], "guidance_scale"),
    (["guidance_scale=0.5"], "guidance_scale"),
    (["height=abc"], "height"),
    (["height=0"], "height"),
    (["height=60"], "multiples of 8"),
    (["height=100000", "width=100000"], "height"),
    (["width=inf"], "width"),
    (["fit=stretch"], "fit"),
    (["frames=0"], "frames"),
    (["frames=abc"], "frames"),
    (["start=-1"], "start"),
    (["start=abc"], "start"),
    (["start=99"], "start=99"),
    (["stride=0"], "stride"),
    (["fps=0"], "fps"),
    (["fps=nan"], "fps"),
    (["fps=inf"], "fps"),
    (["fps=abc"], "fps"),
    (["seed=abc"], "seed"),
    (["seed=-1"], "seed"),
    (["seed=99999999999999999999"], "seed"),
    (["dtype=float8"], "dtype"),
    (["device=tpu"], "device"),
    (["vae_slicing=maybe"], "vae_slicing"),
    (["save_latents=maybe"], "save_latents"),
    (["output_dir={d}/occupied"], "occupied"),
    (["output_dir={d}/notes.txt"], "notes.txt"),
]


@pytest.mark.parametrize("overrides,names", INVERT_ROWS, ids=[" ".join(row[0]) or "no input" for row in INVERT_ROWS])
def test_invert_bad_input_is_one_line_and_exit_code_2(files, tmp_path, capfd, overrides, names):
    values = {"input": f"{files}/clip.mp4", "steps": "1", "frames": "1", "output_dir": f"{tmp_path}/run",
              "outputs_root": f"{tmp_path}/outputs"}
    if not overrides:
        del values["input"]
    for override in overrides:
        key, _, value = override.format(d=files).partition("=")
        values[key] = value
    args = ["invert", "model=tiny", *(f"{key}={value}" for key, value in values.items())]
    check_one_line_error(args, capfd, names.format(d=files), files)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


EVALUATE_ROWS = [
    (["run={d}/missing"], "missing"),
    (["run={d}/clip.mp4"], "clip.mp4"),
    (["run={d}/empty"], "result.json"),
    (["run={d}/broken_run"], "broken_run/result.json"),
    (["run={d}/garbage_run"], "garbage_run/video.mp4"),  # ffmpeg's own lines included
    (["run=", "sweep={d}/missing"], "missing"),
    (["run=", "sweep={d}/clip.mp4"], "clip.mp4"),
    (["run=", "sweep={d}/videos"], "result.json"),
    (["run=", "videos={d}/missing"], "missing"),
    (["run=", "videos={d}/empty"], "empty"),
    (["run=", "videos={d}/photo.png"], "photo.png"),
    (["run=", "videos={d}/garbage.mp4"], "garbage.mp4"),
    (["videos={d}/videos"], "exactly one of"),
    (["run=", "videos={d}/videos", "prompts={d}/missing.txt"], "missing.txt"),
    (["run=", "videos={d}/videos", "prompts={d}/folder.png"], "folder.png"),
    (["run=", "videos={d}/videos", "prompts={d}/photo.png"], "photo.png"),
    (["prompts={d}/notes.txt"], "prompts="),
    (["style={d}/missing.png"], "missing.png"),
    (["style={d}/text.png"], "text.png"),
    (["style={d}/folder.png"], "folder.png"),
    (["style={d}/huge.png"], "huge.png is too large"),
    (["run=", "videos={d}/videos", "metrics=[fvd]", "metrics.fvd.i3d_path={d}/weights.pt", "real={d}/missing"],
     "missing"),
    (["run=", "videos={d}/videos", "metrics=[fvd]", "metrics.fvd.i3d_path={d}/weights.pt", "real={d}/empty"],
     "empty"),
    (["max_frames=abc"], "max_frames"),
    (["max_frames=0"], "max_frames"),
    (["max_frames=nan"], "max_frames"),
    (["device=tpu"], "device"),
    (["output_dir={d}/occupied"], "occupied"),
    (["output_dir={d}/notes.txt"], "notes.txt"),
    (["metrics=[bogus]"], "bogus"),
    (["metrics=[]"], "metrics="),
    (["metrics=[clipsim]", "metrics.clip.model={d}/missing"], "missing"),
    (["metrics.clip.batch_size=0"], "metrics.clip.batch_size"),
    (["metrics.clip.batch_size=abc"], "metrics.clip.batch_size"),
    (["metrics.clip.batch_size=nan"], "metrics.clip.batch_size"),
    (["metrics.clip.clamp=max"], "metrics.clip.clamp"),
    (["metrics.frame_consistency.pairs=some"], "metrics.frame_consistency.pairs"),
    (["metrics=[style_gram]", "style={d}/photo.png", "metrics.style.vgg_path={d}/missing.pt"], "missing.pt"),
    (["metrics=[style_gram]", "style={d}/photo.png", "metrics.style.vgg_path={d}/weights.pt"], "weights.pt"),
    (["metrics=[style_gram]", "style={d}/photo.png", "metrics.style.vgg_path={d}/folder.pt"], "folder.pt"),
    (["metrics.style.vgg_layers=abc"], "metrics.style.vgg_layers"),
    (["metrics.style.vgg_layers=[a]"], "metrics.style.vgg_layers"),
    (["metrics.style.vgg_layers=[-1]"], "metrics.style.vgg_layers"),
    (["metrics=[style_csd]", "style={d}/photo.png", "metrics.style.csd_path={d}/missing.pt"], "missing.pt"),
    (["metrics=[style_csd]", "style={d}/photo.png", "metrics.style.csd_path={d}/weights.pt"], "weights.pt"),
    (["metrics.style.csd_resolution=0"], "metrics.style.csd_resolution"),
    (["metrics.style.csd_resolution=inf"], "metrics.style.csd_resolution"),
    (["metrics.style.csd_output_index=abc"], "metrics.style.csd_output_index"),
    (["metrics.flow.preset=slow"], "metrics.flow.preset"),
    (["metrics=[fvd]", "metrics.fvd.i3d_path={d}/missing.pt", "real={d}/videos"], "missing.pt"),
    (["run=", "videos={d}/videos", "metrics=[fvd]", "metrics.fvd.i3d_path={d}/weights.pt",
      "metrics.fvd.stats_path={d}/missing.npz"], "missing.npz"),
    (["run=", "videos={d}/videos", "metrics=[fvd]", "metrics.fvd.i3d_path={d}/weights.pt",
      "metrics.fvd.stats_path={d}/stats.npz"], "stats.npz"),
    (["metrics.fvd.num_frames=0"], "metrics.fvd.num_frames"),
    (["metrics.fvd.num_frames=abc"], "metrics.fvd.num_frames"),
    (["metrics.fvd.resolution=0"], "metrics.fvd.resolution"),
    (["metrics.fvd.resolution=abc"], "metrics.fvd.resolution"),
    (["metrics.fvd.value_range=uint16"], "metrics.fvd.value_range"),
    (["metrics.fvd.call_kwargs=abc"], "metrics.fvd.call_kwargs"),
    (["metrics.fvd.batch_size=0"], "metrics.fvd.batch_size"),
    (["metrics.fvd.batch_size=nan"], "metrics.fvd.batch_size"),
    (["metrics=[is]", "metrics.is.c3d_path={d}/missing.pt"], "missing.pt"),
    (["metrics.is.num_frames=0"], "metrics.is.num_frames"),
    (["metrics.is.resolution=-5"], "metrics.is.resolution"),
    (["metrics.is.value_range=x"], "metrics.is.value_range"),
    (["metrics.is.call_kwargs=abc"], "metrics.is.call_kwargs"),
    (["metrics.is.softmax=maybe"], "metrics.is.softmax"),
    (["metrics.is.splits=0"], "metrics.is.splits"),
    (["metrics.is.splits=abc"], "metrics.is.splits"),
    (["metrics.is.batch_size=0"], "metrics.is.batch_size"),
    (["metrics.is.shuffle_seed=abc"], "metrics.is.shuffle_seed"),
    (["metrics.is.shuffle_seed=-1"], "metrics.is.shuffle_seed"),
]


@pytest.mark.parametrize("overrides,names", EVALUATE_ROWS, ids=[" ".join(row[0]) for row in EVALUATE_ROWS])
def test_evaluate_bad_input_is_one_line_and_exit_code_2(files, tmp_path, capfd, overrides, names):
    values = {"run": f"{files}/run", "metrics": "[temporal_flicker]", "metrics.clip.model": "tiny",
              "device": "cpu", "output_dir": f"{tmp_path}/evaluation", "outputs_root": f"{tmp_path}/outputs"}
    for override in overrides:
        key, _, value = override.format(d=files).partition("=")
        values[key] = value
    args = ["evaluate", *(f"{key}={value}" for key, value in values.items() if value != "")]
    check_one_line_error(args, capfd, names.format(d=files), files)
    assert not (tmp_path / "evaluation").exists() and not (tmp_path / "outputs").exists()


def test_an_undecodable_input_is_one_line_from_the_installed_entry_point(files, tmp_path):
    """The whole process, as a user runs it: nothing but stylevid's line reaches the terminal's stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "stylevid", "invert", "model=tiny", f"input={files}/garbage.mp4",
               f"output_dir={tmp_path}/run"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: input {files}/garbage.mp4 cannot be decoded as a video (moov atom not found; "
        "Invalid data found when processing input)"
    ]
    assert not (tmp_path / "run").exists()
