"""method=videogen and method=tsr end to end on tiny random parts (model=tiny), through the CLI's own entry."""

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from conftest import run_stylevid
from stylevid.data.toy import write_toy_videos

TINY = ["model=tiny", "frames=3", "steps=2", "height=64", "width=64", "method.tsr.steps=2"]


def config(*overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def generate(tmp_path, capsys, *overrides, name="run"):
    run_dir = tmp_path / name
    code, out, err = run_stylevid(["generate", "method=videogen", "prompt=a red circle moving right", *TINY,
                                   f"output_dir={run_dir}", *overrides], capsys)
    assert code == 0, err
    return run_dir, json.loads((run_dir / "result.json").read_text())


def frames_of(run_dir):
    import imageio.v3 as iio

    return iio.imread(run_dir / "video.mp4", plugin="FFMPEG")


def test_the_whole_pipeline_writes_its_reference_stages_tsr_and_decoder(tmp_path, capsys):
    run_dir, result = generate(tmp_path, capsys, "method.tsr.factor=2", "save_frames=true")
    assert result["output_frames"] == 5 and len(list((run_dir / "frames").glob("*.png"))) == 5  # (3 - 1) x 2 + 1
    assert result["fps"] == 16.0  # the cascade's 8 fps, two frames per gap
    videogen = result["videogen"]
    assert [stage["name"] for stage in videogen["stages"]] == ["base", "sr2"]
    assert [(s["height"], s["width"]) for s in videogen["stages"]] == [(32, 32), (64, 64)]
    assert videogen["tsr"]["factor"] == 2 and videogen["tsr"]["mode"] == "flow" and videogen["decoder"]["kind"] == "video"
    assert videogen["reference"]["mode"] == "first_frame" and result["files"]["reference"] == "reference.png"
    reference = np.asarray(Image.open(run_dir / "reference.png"))
    assert reference.shape == (64, 64, 3)
    assert {"reference", "stage base", "stage sr2", "temporal super-resolution", "decoding"} <= set(result["timings_s"])


def test_an_own_reference_image_is_used_and_none_is_the_ablation(tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "mine.png")
    mine_dir, mine = generate(tmp_path, capsys, f"reference={tmp_path / 'mine.png'}", "method.tsr.factor=1", name="mine")
    from stylevid.io.video_input import fit_frame

    assert np.array_equal(np.asarray(Image.open(mine_dir / "reference.png")), fit_frame(image, 64, 64, "crop"))
    none_dir, none = generate(tmp_path, capsys, "method.reference_mode=none", "method.tsr.factor=1", name="none")
    assert none["videogen"]["reference"]["mode"] == "none" and "reference" not in none["files"]
    assert not (none_dir / "reference.png").exists()


def test_the_video_decoder_at_initialisation_decodes_as_the_image_decoder(tmp_path, capsys):
    """model=tiny's video decoder is SD's decoder inflated with identity temporal layers (Section 3.4)."""
    video_dir, _ = generate(tmp_path, capsys, "method.tsr.factor=1", "save_frames=true", name="video")
    image_dir, _ = generate(tmp_path, capsys, "method.tsr.factor=1", "save_frames=true", "method.decoder=image", name="image")
    for a, b in zip(sorted((video_dir / "frames").glob("*.png")), sorted((image_dir / "frames").glob("*.png"))):
        assert np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int)).max() <= 1


def test_tsr_raises_the_frame_rate_of_a_video_and_keeps_its_frames(tmp_path, capsys):
    write_toy_videos(tmp_path / "in", count=1, frames=4, size=64)
    clip = tmp_path / "in" / "toy_00.mp4"
    run_dir = tmp_path / "tsr"
    code, out, err = run_stylevid(["generate", "method=tsr", "model=tiny", f"input={clip}", "method.tsr.factor=4",
                                   "method.tsr.mode=linear", "method.tsr.refine=false", "method.decoder=image",
                                   f"output_dir={run_dir}", "save_frames=true"], capsys)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["input_frames"] == 4 and result["output_frames"] == 13 and result["fps"] == 32.0  # 8 fps x 4
    frames = sorted((run_dir / "frames").glob("*.png"))
    assert len(frames) == 13
    # every 4th output frame is an input frame through the VAE (encode, decode): the same as a factor of 1 (up to
    # one grey level: 13 frames decode in another batch shape than 4)
    once_dir = tmp_path / "once"
    code, _, err = run_stylevid(["generate", "method=tsr", "model=tiny", f"input={clip}", "method.tsr.factor=1",
                                 "method.decoder=image", f"output_dir={once_dir}", "save_frames=true"], capsys)
    assert code == 0, err
    once = sorted((once_dir / "frames").glob("*.png"))
    for index, path in enumerate(once):
        difference = np.asarray(Image.open(path)).astype(int) - np.asarray(Image.open(frames[4 * index])).astype(int)
        assert np.abs(difference).max() <= 1


@pytest.mark.parametrize("overrides, message", [
    (["method.tsr.factor=3"], "method.tsr.factor must be one of 1, 2, 4, 8"),
    (["method.tsr.strength=0"], "method.tsr.strength must be in (0, 1], got 0"),
    (["method.tsr.mode=cubic"], "method.tsr.mode must be one of flow, slerp, linear"),
    (["method.reference_mode=last"], "method.reference_mode must be first_frame or none"),
    (["method.stages.1.height=48"], "method.stages[1] is 48x64 but the stage below is 32x32"),
    (["height=68"], "height and width must be multiples of 8"),
    (["height=40", "width=40"], "must be multiples of 16 for a 2-stage cascade"),
    (["method.decode_overlap=8"], "method.decode_overlap=8 must be smaller than method.decode_chunk=8"),
    (["reference=/nonexistent/ref.png"], "reference"),
    (["fps=0"], "fps"),
    (["model=sd15"], "method.weights= is required"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, overrides, message):
    run_dir = tmp_path / "run"
    code, out, err = run_stylevid(["generate", "method=videogen", "prompt=x", *TINY, f"output_dir={run_dir}", *overrides], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists()


def test_missing_stage_weights_name_the_key_to_pass(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps({"format": "stylevid-videogen", "fps": 4}))
    code, _, err = run_stylevid(["generate", "method=videogen", "prompt=x", *TINY, f"method.weights={weights}",
                                 f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "has no latent_flow" in err and "method.tsr.flow_path=" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    ([], "method=tsr needs input="),
    (["input=/nonexistent.mp4"], "does not exist"),
    (["method.tsr.factor=16"], "method.tsr.factor must be one of"),
])
def test_tsr_bad_input_is_one_line(tmp_path, capsys, overrides, message):
    if overrides and overrides[0].startswith("method.tsr"):
        write_toy_videos(tmp_path / "in", count=1, frames=4, size=32)
        overrides = [f"input={tmp_path / 'in' / 'toy_00.mp4'}", *overrides]
    code, _, err = run_stylevid(["generate", "method=tsr", "model=tiny", *overrides, f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_tsr_needs_two_frames(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "0000.png")
    code, _, err = run_stylevid(["generate", "method=tsr", "model=tiny", f"input={folder}", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "has 1 frame(s); temporal super-resolution needs at least 2" in err


def test_a_weights_directory_loads_every_part_and_gives_the_in_memory_parts_video(tmp_path, capsys):
    """The tiny parts written in the weights layout (base/, sr2/, latent_flow/, tsr_refiner/, video_decoder/,
    manifest.json) load through method.weights= and make the same video as the parts built in memory."""
    from stylevid.models import videogen_weights as weights
    from stylevid.models.tiny import tiny_vae
    from stylevid.models.tsr_refiner import save_tsr_refiner
    from stylevid.models.videogen import StageInfo, save_stage

    root = tmp_path / "weights"
    for index, (name, kind) in enumerate([("base", "base"), ("sr2", "sr")]):
        save_stage(root / name, weights.load_stage(None, kind, "x"), StageInfo(index=index + 1, latent_size=4 * 2**index, frames=3))
    weights.load_flow_net(None, "x").save_pretrained(str(root / "latent_flow"))
    save_tsr_refiner(root / "tsr_refiner", *weights.load_refiner(None, "x"))
    weights.load_video_decoder(None, tiny_vae(0), "x").save_pretrained(str(root / "video_decoder"))
    (root / "manifest.json").write_text(json.dumps({"format": "stylevid-videogen", "fps": 8}))
    loaded_dir, loaded = generate(tmp_path, capsys, f"method.weights={root}", "method.tsr.factor=2", "save_frames=true",
                                  name="loaded")
    memory_dir, _ = generate(tmp_path, capsys, "method.tsr.factor=2", "save_frames=true", name="memory")
    assert loaded["videogen"]["stages"][1]["source"] == str(root / "sr2")
    assert loaded["videogen"]["tsr"]["flow"] == str(root / "latent_flow")
    for a, b in zip(sorted((loaded_dir / "frames").glob("*.png")), sorted((memory_dir / "frames").glob("*.png"))):
        assert np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int)).max() <= 1


def test_the_stages_sample_on_the_schedule_and_prediction_the_manifest_records(tmp_path):
    from stylevid.methods.videogen import stage_scheduler
    from stylevid.models.tiny import tiny_pipeline

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "stylevid-videogen", "schedule": "B",
                                                        "prediction": "v_prediction"}))
    recorded = stage_scheduler(tiny_pipeline(), tmp_path).config
    assert (recorded.beta_schedule, recorded.beta_end, recorded.prediction_type) == ("linear", 0.012, "v_prediction")
    assert stage_scheduler(tiny_pipeline(), None).config.beta_schedule == "scaled_linear"  # the image model's own


def test_the_refiner_strength_reaches_the_sampler_and_is_recorded(tmp_path, capsys, monkeypatch):
    """method.tsr.strength < 1 starts each refinement from the coarse latent (img2img); 1, the default, from noise."""
    import stylevid.sampling.tsr as tsr

    seen, original = [], tsr.refine

    def recording(*args, **kwargs):
        seen.append(kwargs["strength"])
        return original(*args, **kwargs)

    monkeypatch.setattr(tsr, "refine", recording)
    _, result = generate(tmp_path, capsys, "method.tsr.factor=2", "method.tsr.strength=0.5")
    assert seen and set(seen) == {0.5} and result["videogen"]["tsr"]["strength"] == 0.5
    seen.clear()
    _, result = generate(tmp_path, capsys, "method.tsr.factor=2", name="default")
    assert set(seen) == {1.0} and result["videogen"]["tsr"]["strength"] == 1.0
