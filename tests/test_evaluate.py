"""`stylevid evaluate`: inputs (run, sweep, folder + prompts), outputs (metrics.json/csv, report.html), errors.

Videos are tiny (6 frames, 64x64 H.264) and CLIP is the seeded tiny random CLIP, built once per session.
"""

import base64
import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from PIL import Image
from torch import nn

from stylevid.errors import UserInputError
from stylevid.evaluate import print_metrics_table, run_evaluate
from stylevid.io.video import write_video
from stylevid.io.video_input import read_frames
from stylevid.metrics import PER_VIDEO_METRICS, SET_METRICS, MetricsConfig, compute_metrics, compute_set_metrics
from stylevid.metrics.clip import build_tiny_clip

FRAMES, SIZE = 6, 64
DEFAULT_METRICS = ["clipsim", "frame_consistency", "style_fidelity", "warp_error", "temporal_flicker", "motion"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0))


def frames_for(seed: int) -> np.ndarray:
    """A smooth gradient with a square moving right by 3 px per frame (something for the flow to follow)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x * 4, y * 4, np.full_like(x, 60 + 30 * seed)], axis=-1).clip(0, 255)
    video = []
    for t in range(FRAMES):
        frame = base.copy()
        top, left = 20 + seed, 8 + 3 * t
        frame[top : top + 16, left : left + 16] = rng.integers(150, 255, 3)
        video.append(frame.astype(np.uint8))
    return np.stack(video)


def make_video(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames_for(seed), fps=4)


def make_run(run_dir: Path, seed: int = 0, method: str = "t2v_zero", prompt: str = "a red square",
             style: str | None = None, **config) -> Path:
    """A finished generate run as run_generate writes it: video.mp4, config.yaml, result.json."""
    make_video(run_dir / "video.mp4", seed)
    full_config = {"method": {"name": method, "motion_field_strength_x": 12}, "prompt": prompt, "style": style,
                   "seed": seed, "steps": 50, "guidance_scale": 7.5, "output_dir": None, **config}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(full_config))
    result = {"task": "generate", "method": method, "prompt": prompt, "seed": seed, "style": style,
              "files": {"video": "video.mp4", "frames": None}}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def compose_evaluate(overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def evaluate(tiny_clip, *overrides) -> Path:
    return run_evaluate(compose_evaluate([f"metrics.clip.model={tiny_clip}", "device=cpu", *overrides]))


def load(eval_dir: Path):
    summary = json.loads((eval_dir / "metrics.json").read_text())
    with (eval_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return summary, rows


def test_run_values_equal_direct_library_calls_on_the_same_frames(tmp_path, tiny_clip, style_image_path):
    run_dir = make_run(tmp_path / "10-00-00_stylet2v0", method="stylet2v0", style=style_image_path, seed=3)
    eval_dir = evaluate(tiny_clip, f"run={run_dir}")

    assert eval_dir == run_dir / "evaluation"
    summary, rows = load(eval_dir)
    # Equivalence: the evaluation's numbers are exactly the library's on the frames the public reader returns.
    frames = read_frames(run_dir / "video.mp4", FRAMES)
    style = np.asarray(Image.open(style_image_path).convert("RGB"))
    expected = compute_metrics(frames, "a red square", style, DEFAULT_METRICS,
                               MetricsConfig.from_dict({"clip": {"model": tiny_clip}}))
    (video,) = summary["videos"]
    assert video["metrics"] == expected and list(video["metrics"]) == DEFAULT_METRICS
    assert video["prompt"] == "a red square" and video["style"] == style_image_path
    assert video["overrides"] == {"method": "stylet2v0", "seed": 3}
    assert video["num_frames"] == FRAMES and (video["height"], video["width"]) == (SIZE, SIZE)
    for name, value in expected.items():
        assert summary["aggregate"][name] == {"mean": value, "std": 0.0, "n": 1}
    assert summary["definitions"]["clipsim"]["model"] == tiny_clip
    assert summary["definitions"]["warp_error"]["higher_is_better"] is False
    assert summary["skipped"] == {"count": 0, "videos": []}
    assert rows[0]["method"] == "stylet2v0" and rows[0]["seed"] == "3" and rows[0]["status"] == "ok"
    assert float(rows[0]["clipsim"]) == expected["clipsim"]
    assert "names:" in (eval_dir / "config.yaml").read_text()

    # A finished evaluation is never overwritten: the next one goes to evaluation_2.
    before = (eval_dir / "metrics.json").read_bytes()
    assert evaluate(tiny_clip, f"run={run_dir}", "metrics=[temporal_flicker]") == run_dir / "evaluation_2"
    assert (eval_dir / "metrics.json").read_bytes() == before


def test_sweep_gives_one_row_per_run_with_the_swept_keys(tmp_path, tiny_clip, style_image_path):
    sweep = tmp_path / "multirun" / "2026-11-21" / "10-00-00"
    for number, (method, seed) in enumerate([("t2v_zero", 0), ("t2v_zero", 1), ("stylet2v0", 0), ("stylet2v0", 1)]):
        style = style_image_path if method == "stylet2v0" else None
        make_run(sweep / f"{number}_{method}", seed=seed, method=method, style=style, guidance_scale=5.0 + seed)
    (sweep / "0_t2v_zero" / "evaluation").mkdir()  # an earlier evaluation of one run is not a run
    (sweep / "0_t2v_zero" / "evaluation" / "metrics.json").write_text("{}")

    eval_dir = evaluate(tiny_clip, f"sweep={sweep}", "metrics=[style_fidelity,temporal_flicker]")

    assert eval_dir == sweep / "evaluation"
    summary, rows = load(eval_dir)
    assert [row["video"] for row in rows] == ["0_t2v_zero", "1_t2v_zero", "2_stylet2v0", "3_stylet2v0"]
    header = list(rows[0])
    assert header == ["video", "status", "prompt", "style", "method", "seed", "guidance_scale",
                      "style_fidelity", "temporal_flicker"]  # steps, motion_field_strength_x: same in every run
    assert [(r["method"], r["seed"], r["guidance_scale"]) for r in rows] == [
        ("t2v_zero", "0", "5.0"), ("t2v_zero", "1", "6.0"), ("stylet2v0", "0", "5.0"), ("stylet2v0", "1", "6.0")]
    # t2v_zero runs have no style image: style_fidelity is not applicable there, and left out of the mean.
    assert [r["style_fidelity"] == "" for r in rows] == [True, True, False, False]
    assert summary["not_applicable"] == {"style_fidelity": {"count": 2, "reasons": ["no style image"]}}
    assert summary["aggregate"]["style_fidelity"]["n"] == 2 and summary["aggregate"]["temporal_flicker"]["n"] == 4
    assert summary["incomplete_batches"] == []  # a Hydra sweep, no prompts= batches
    # Runs with the same seed share their video here, so their values agree.
    assert rows[0]["temporal_flicker"] == rows[2]["temporal_flicker"] != rows[1]["temporal_flicker"]


def test_sweep_over_unfinished_prompts_batches_warns_once_and_records_the_missing_rows(tmp_path, tiny_clip, caplog,
                                                                                        monkeypatch):
    """A prompts= batch is finished only once its batch.json is written (rows 0000, 0001... before it). Scoring
    an interrupted one must say so: one warning line, and the missing rows in metrics.json."""
    # An in-process CLI test of another task (Hydra's `disabled` logging) may have disabled this module's logger.
    monkeypatch.setattr(logging.getLogger("stylevid.evaluate"), "disabled", False)
    sweep = tmp_path / "sweep"
    (tmp_path / "three.txt").write_text("a red square\na blue square\na green square\n")
    (tmp_path / "two.txt").write_text("a red square\na blue square\n")

    def batch(name, finished, unfinished=(), record=None):
        for row in finished:
            make_run(sweep / name / row)
        for row in unfinished:  # killed mid-run: its directory, no result.json
            (sweep / name / row).mkdir(parents=True)
        if record is not None:
            (sweep / name / "batch.json").write_text(json.dumps(record))

    batch("complete", ["0000", "0001"], record={"prompts": str(tmp_path / "two.txt"), "runs": ["0000", "0001"]})
    batch("killed", ["0000"], ["0001"])  # interrupted after its first row: no batch.json
    batch("short", ["0000"], record={"prompts": str(tmp_path / "three.txt"), "runs": ["0000"]})
    batch("rows_key", ["0000"], ["0001"], record={"prompts": "gone.txt", "rows": 2, "runs": ["0000", "0001"]})
    batch("planned", ["0000"])  # interrupted, with the plan generate writes before its first row
    (sweep / "planned" / "batch_plan.json").write_text(json.dumps({"prompts": "gone.txt", "rows": [{}, {}, {}]}))

    with caplog.at_level("WARNING", logger="stylevid.evaluate"):
        eval_dir = evaluate(tiny_clip, f"sweep={sweep}", "metrics=[temporal_flicker]")
    summary, _ = load(eval_dir)
    assert summary["num_videos"] == 6
    assert summary["incomplete_batches"] == [
        {"batch": "killed", "reason": "no batch.json (interrupted or still running)", "finished": 1, "rows": None,
         "missing": ["0001"]},
        {"batch": "planned", "reason": "no batch.json (interrupted or still running)", "finished": 1, "rows": 3,
         "missing": ["0001", "0002"]},
        {"batch": "rows_key", "reason": None, "finished": 1, "rows": 2, "missing": ["0001"]},
        {"batch": "short", "reason": None, "finished": 1, "rows": 3, "missing": ["0001", "0002"]},
    ]
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "\n" not in warning.getMessage() and "short: 1 of 3 rows finished, missing 0001, 0002" in warning.getMessage()
    assert "killed: no batch.json (interrupted or still running), 1 finished, missing 0001" in warning.getMessage()


def test_folder_with_prompts_txt_and_csv(tmp_path, tiny_clip, style_image_path):
    folder = tmp_path / "videos"
    for seed, name in enumerate(["clip10.mp4", "clip2.mp4", "b.mp4"]):
        make_video(folder / name, seed)
    # Natural sort order: b, clip2, clip10.
    (tmp_path / "prompts.txt").write_text("prompt for b\n\nprompt for clip2\nprompt for clip10\n")
    eval_dir = evaluate(tiny_clip, f"videos={folder}", f"prompts={tmp_path / 'prompts.txt'}",
                        f"outputs_root={tmp_path / 'outputs'}", "metrics=[clipsim]")
    assert eval_dir.parent.parent == tmp_path / "outputs" / "evaluate" and eval_dir.name.endswith("_evaluate")
    summary, _ = load(eval_dir)
    assert [(v["video"], v["prompt"]) for v in summary["videos"]] == [
        ("b.mp4", "prompt for b"), ("clip2.mp4", "prompt for clip2"), ("clip10.mp4", "prompt for clip10")]

    (tmp_path / "prompts.csv").write_text(
        "video,prompt,style\n"
        f"clip2.mp4,a second prompt,{style_image_path}\n"
        "clip10.mp4,,\n"
        "b.mp4,\"a prompt, with a comma\",\n"
    )
    eval_dir = evaluate(tiny_clip, f"videos={folder}", f"prompts={tmp_path / 'prompts.csv'}",
                        f"output_dir={tmp_path / 'csv_eval'}", "metrics=[clipsim,style_fidelity]")
    assert eval_dir == tmp_path / "csv_eval"
    summary, rows = load(eval_dir)
    by_name = {v["video"]: v for v in summary["videos"]}
    assert by_name["b.mp4"]["prompt"] == "a prompt, with a comma" and by_name["b.mp4"]["style"] is None
    assert by_name["clip2.mp4"]["style"] == style_image_path and set(by_name["clip2.mp4"]["metrics"]) == {
        "clipsim", "style_fidelity"}
    assert by_name["clip10.mp4"]["metrics"] == {}
    assert by_name["clip10.mp4"]["not_applicable"] == {"clipsim": "no prompt", "style_fidelity": "no style image"}

    # output_dir= is exact and never reused.
    with pytest.raises(UserInputError, match="already holds a finished evaluation"):
        evaluate(tiny_clip, f"videos={folder}", f"output_dir={eval_dir}", "metrics=[temporal_flicker]")


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("p.txt", "one\ntwo\n", r"has 2 prompts for 3 videos"),
        ("p.csv", "video,prompt\na.mp4,x\nb.mp4,y\nc.mp4,z\nd.mp4,w\n", r"line 5: video 'd.mp4' is not in"),
        ("p.csv", "video,prompt\na.mp4,x\nb.mp4,y\n", r"no row for video 'c.mp4'"),
        ("p.csv", "video,prompt\na.mp4,x\nb.mp4,y\na.mp4,z\n", r"line 4: a second row for video 'a.mp4'"),
        ("p.csv", "file,text\na.mp4,x\n", r"needs a header with columns video,prompt"),
        ("p.json", "{}", r"must be a .txt .* or a .csv"),
    ],
)
def test_prompt_files_that_do_not_match_the_videos_are_errors(tmp_path, tiny_clip, name, text, message):
    folder = tmp_path / "videos"
    for seed, video in enumerate(["a.mp4", "b.mp4", "c.mp4"]):
        make_video(folder / video, seed)
    (tmp_path / name).write_text(text)
    with pytest.raises(UserInputError, match=message):
        evaluate(tiny_clip, f"videos={folder}", f"prompts={tmp_path / name}", f"outputs_root={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_a_corrupt_video_is_skipped_and_counted(tmp_path, tiny_clip):
    folder = tmp_path / "videos"
    make_video(folder / "a.mp4", 0)
    make_video(folder / "c.mp4", 1)
    (folder / "b.mp4").write_bytes(b"not a video" * 50)
    (folder / "notes.txt").write_text("not a video either, and not listed")

    eval_dir = evaluate(tiny_clip, f"videos={folder}", f"output_dir={tmp_path / 'eval'}",
                        "metrics=[frame_consistency,temporal_flicker]")
    summary, rows = load(eval_dir)
    assert summary["num_videos"] == 2 and summary["skipped"]["count"] == 1
    (skipped,) = summary["skipped"]["videos"]
    assert skipped["video"] == "b.mp4" and "cannot be decoded" in skipped["reason"]
    assert [r["video"] for r in rows] == ["a.mp4", "c.mp4", "b.mp4"]
    assert rows[2]["status"].startswith("skipped: ") and rows[2]["temporal_flicker"] == ""
    assert summary["aggregate"]["temporal_flicker"]["n"] == 2

    # report.html: one embedded frame strip per evaluated video (6 frames of 64 px, scaled to 96 px high).
    page = (eval_dir / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    strip = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert strip.size == (FRAMES * 96, 96)
    assert "b.mp4" in page and "cannot be decoded" in page


def test_unusable_inputs_are_one_line_errors(tmp_path, tiny_clip):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"junk")
    (broken / "b.mp4").write_bytes(b"")
    cases = [
        ([f"videos={tmp_path / 'empty'}"], "holds no videos"),
        ([f"videos={broken}"], "none of the 2 videos can be read"),
        ([f"videos={tmp_path / 'missing'}"], "no such file or folder"),
        ([f"sweep={tmp_path / 'empty'}"], "holds no run directories"),
        ([f"run={tmp_path / 'empty'}"], "has no result.json"),
        ([], "pass exactly one of run="),
        ([f"videos={broken}", f"run={tmp_path}"], "pass exactly one of run="),
        ([f"videos={broken}", "metrics=[]"], "no metrics requested"),
        ([f"videos={broken}", "metrics=[style_gram]"], r"metrics\.style\.vgg_path="),
        ([f"videos={broken}", "metrics=[fvd]", "metrics.fvd.i3d_path=/no/i3d.pt", f"real={broken}"],
         r"not found: /no/i3d.pt; pass metrics\.fvd\.i3d_path="),
        ([f"videos={broken}", "style=/no/style.png"], "style image not found: /no/style.png"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserInputError, match=message) as error:
            evaluate(tiny_clip, *overrides, f"outputs_root={tmp_path / 'out'}")
        assert "\n" not in str(error.value)
    # Nothing half-written is left (only the empty date folder, as run_generate leaves it).
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() or p.name.endswith("_evaluate")]


class TinyI3D(nn.Module):
    """The i3d_torchscript.pt call convention: model(videos [B, 3, T, H, W] in [-1, 1], ...) -> [B, 6]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 6, kernel_size=(2, 4, 4), stride=(2, 4, 4))

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        return torch.tanh(self.conv(videos)).mean(dim=(2, 3, 4))


def test_fvd_equals_the_library_on_the_same_videos(tmp_path, tiny_clip):
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(TinyI3D().eval()), str(i3d))
    generated, real = tmp_path / "gen", tmp_path / "real"
    for seed in range(3):
        make_video(generated / f"{seed}.mp4", seed)
        make_video(real / f"{seed}.mp4", seed + 3)
    fvd_options = ["metrics.fvd.num_frames=4", "metrics.fvd.resolution=32", f"metrics.fvd.i3d_path={i3d}"]

    with pytest.raises(UserInputError, match=r"real=<folder of real videos> or metrics\.fvd\.stats_path="):
        evaluate(tiny_clip, f"videos={generated}", "metrics=[fvd]", *fvd_options)
    eval_dir = evaluate(tiny_clip, f"videos={generated}", f"real={real}", "metrics=[temporal_flicker,fvd]",
                        *fvd_options, f"output_dir={tmp_path / 'eval'}")

    summary, rows = load(eval_dir)
    options = MetricsConfig.from_dict({"fvd": {"num_frames": 4, "resolution": 32, "i3d_path": str(i3d)}})
    expected = compute_set_metrics([read_frames(p, FRAMES) for p in sorted(generated.iterdir())], ["fvd"], options,
                                   real_videos=[read_frames(p, FRAMES) for p in sorted(real.iterdir())])
    assert summary["set_metrics"] == expected and expected["fvd"] > 0
    assert expected["fvd_num_generated"] == 3 and expected["fvd_num_real"] == 3  # FVD depends on the set sizes
    assert summary["definitions"]["fvd"]["weights"] == str(i3d)
    assert "fvd" not in rows[0]  # set-level: one number for the set, not a column per video


def write_long_video(path: Path, seed: int, repeats: int) -> Path:
    """A video of FRAMES * repeats frames (the usual test video, played `repeats` times)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, np.concatenate([frames_for(seed)] * repeats), fps=4)


class UniformC3D(nn.Module):
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return torch.zeros(videos.shape[0], 101)


def test_videos_too_short_for_fvd_and_is_are_named_left_out_and_counted(tmp_path, tiny_clip, caplog):
    import logging

    # An earlier CLI test may have run Hydra's `job_logging: disabled`, which disables existing loggers.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("stylevid")] + ["stylevid"]:
        logging.getLogger(name).disabled = False
    caplog.set_level(logging.WARNING)
    i3d, c3d = tmp_path / "i3d.pt", tmp_path / "c3d.pt"
    torch.jit.save(torch.jit.script(TinyI3D().eval()), str(i3d))
    torch.jit.save(torch.jit.script(UniformC3D().eval()), str(c3d))
    generated, real = tmp_path / "gen", tmp_path / "real"
    for seed in range(2):
        write_long_video(generated / f"long{seed}.mp4", seed, repeats=2)
        write_long_video(real / f"real{seed}.mp4", seed + 3, repeats=2)
    make_video(generated / "short.mp4", 2)  # 6 frames
    make_video(real / "short_real.mp4", 5)
    options = ["metrics.fvd.num_frames=8", "metrics.fvd.resolution=32", f"metrics.fvd.i3d_path={i3d}",
               "metrics.is.num_frames=8", "metrics.is.splits=2", f"metrics.is.c3d_path={c3d}"]

    eval_dir = evaluate(tiny_clip, f"videos={generated}", f"real={real}", "metrics=[temporal_flicker,fvd,is]",
                        *options, f"output_dir={tmp_path / 'eval'}")
    summary, rows = load(eval_dir)
    assert summary["num_videos"] == 3 and [r["video"] for r in rows][-1] == "short.mp4"  # per-video metrics stand
    (short,) = summary["set_skipped"]["videos"]
    assert short["video"] == "short.mp4" and short["metrics"] == ["fvd", "is"]
    assert short["reason"] == "6 frames; fvd needs 8 (metrics.fvd.num_frames), is needs 8 (metrics.is.num_frames)"
    assert summary["skipped_real"]["count"] == 1 and summary["skipped_real"]["videos"][0]["video"].endswith(
        "short_real.mp4")
    set_metrics = summary["set_metrics"]
    assert (set_metrics["fvd_num_generated"], set_metrics["fvd_num_real"], set_metrics["is_num_videos"]) == (2, 2, 2)
    long_videos = [read_frames(generated / f"long{seed}.mp4", 12) for seed in range(2)]
    expected = compute_set_metrics(long_videos, ["fvd"], MetricsConfig.from_dict(
        {"fvd": {"num_frames": 8, "resolution": 32, "i3d_path": str(i3d)}}),
        real_videos=[read_frames(real / f"real{seed}.mp4", 12) for seed in range(2)])
    assert set_metrics["fvd"] == expected["fvd"]
    assert any("short.mp4" in record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    page = (eval_dir / "report.html").read_text()
    assert "Left out of set-level metrics" in page and "short.mp4: 6 frames" in page
    from rich.console import Console

    console = Console(record=True, width=200)
    print_metrics_table(eval_dir, console)
    assert "1 too short for set metrics (short.mp4)" in " ".join(console.export_text().split())  # caption wraps


def test_set_metric_inputs_that_cannot_work_are_one_line_errors(tmp_path, tiny_clip):
    i3d, c3d = tmp_path / "i3d.pt", tmp_path / "c3d.pt"
    torch.jit.save(torch.jit.script(TinyI3D().eval()), str(i3d))
    torch.jit.save(torch.jit.script(UniformC3D().eval()), str(c3d))
    short, real = tmp_path / "short", tmp_path / "real"
    for seed in range(3):
        make_video(short / f"s{seed}.mp4", seed)  # 6 frames each
        write_long_video(real / f"r{seed}.mp4", seed, repeats=2)
    fvd = ["metrics=[fvd]", "metrics.fvd.num_frames=8", f"metrics.fvd.i3d_path={i3d}", f"real={real}"]
    cases = [
        # after reading: no video is long enough, and the files say so
        ([f"videos={short}", *fvd], r"^fvd needs at least 2 videos \(a feature covariance\) of 8 frames "
         r"\(metrics\.fvd\.num_frames\); 0 of 3 are that long \(s0\.mp4 has 6, s1\.mp4 has 6"),
        # before reading: more splits than videos, fewer frames than a clip
        ([f"videos={short}", "metrics=[is]", f"metrics.is.c3d_path={c3d}"],
         r"is needs at least 10 videos \(one per split; lower metrics\.is\.splits\), got 3"),
        ([f"videos={real}", *fvd, "max_frames=4"], r"max_frames=4 is fewer than the 8 frames fvd uses"),
        ([f"videos={real}", *fvd[:-1], f"real={short}"],
         r"fvd needs at least 2 usable real videos, 0 of 3 are; s0\.mp4: 6 frames"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserInputError, match=message) as error:
            evaluate(tiny_clip, *overrides, f"outputs_root={tmp_path / 'out'}")
        assert "\n" not in str(error.value)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() or p.name.endswith("_evaluate")]


def test_each_torchrun_rank_evaluates_on_its_own_gpu(monkeypatch):
    from stylevid.distributed import Rank
    from stylevid.evaluate import metrics_config, on_rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only device names are made, nothing runs

    def device(setting, rank):
        return on_rank_device(metrics_config(compose_evaluate([f"device={setting}"]))[0], rank).device

    rank_1 = Rank(rank=1, world_size=2, local_rank=1)
    assert device("cuda", rank_1) == "cuda:1"
    assert device("auto", rank_1) == "cuda:1"
    assert device("cuda:0", rank_1) == "cuda:0"  # as asked
    assert device("cuda", Rank()) == "cuda"  # one process
    assert device("cpu", rank_1) == "cpu"


def test_metrics_group_matches_the_library_and_tiny_selects_the_tiny_clip(tmp_path, tiny_clip):
    conf_dir = Path(__file__).resolve().parents[1] / "conf" / "metrics"
    assert {p.stem for p in conf_dir.glob("*.yaml")} == set(PER_VIDEO_METRICS) | set(SET_METRICS)
    cfg = compose_evaluate([])
    assert list(cfg.metrics.names) == DEFAULT_METRICS
    assert MetricsConfig.from_dict(cfg.metrics) == MetricsConfig()  # the YAML's defaults are the library's
    assert list(compose_evaluate(["metrics=[fvd,clipsim]"]).metrics.names) == ["fvd", "clipsim"]

    video = make_video(tmp_path / "videos" / "a.mp4")
    by_path = evaluate(tiny_clip, f"videos={video}", "metrics=[frame_consistency]", f"output_dir={tmp_path / 'a'}")
    by_name = evaluate("tiny", f"videos={video}", "metrics=[frame_consistency]", f"output_dir={tmp_path / 'b'}")
    (first,), (second,) = load(by_path)[0]["videos"], load(by_name)[0]["videos"]
    assert first["metrics"] == second["metrics"]  # both are build_tiny_clip(seed=0)
    assert load(by_name)[0]["definitions"]["frame_consistency"]["model"].startswith("tiny (random weights")


def test_terminal_table_shows_rows_and_means(tmp_path, tiny_clip):
    from rich.console import Console

    folder = tmp_path / "videos"
    for seed in range(2):
        make_video(folder / f"v{seed}.mp4", seed)
    eval_dir = evaluate(tiny_clip, f"videos={folder}", "metrics=[temporal_flicker,clipsim]",
                        f"output_dir={tmp_path / 'eval'}")
    console = Console(record=True, width=160)
    print_metrics_table(eval_dir, console)
    text = console.export_text()
    summary, _ = load(eval_dir)
    mean = summary["aggregate"]["temporal_flicker"]["mean"]
    assert "v0.mp4" in text and "v1.mp4" in text and "temporal_flicker ↓" in text
    assert f"{mean:.4g} ±" in text and "(2)" in text
