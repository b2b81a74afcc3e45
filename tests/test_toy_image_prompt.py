"""The toy image prompts (method=image_prompt model=toy): the captions they train on leave the colour out, the build
runs, and the packaged weights do what the paper claims.

Thresholds are the issue's targets; `scripts/toy_report.py --only image_prompt` prints the same figures
(`stylevid.toy.judge_image_prompt`). Until `scripts/build_toy_world.py --stage image_prompt` has built the toy
weights, the tests that need them are skipped.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stylevid.data import toy_world
from stylevid.data.toy_clips import ToyClipDataset
from stylevid.toy import WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PROMPT = WEIGHTS / "image_prompt"
built = pytest.mark.skipif(not (IMAGE_PROMPT / "manifest.json").exists(),
                           reason="the toy image prompts are not built yet (scripts/build_toy_world.py --stage image_prompt)")


def test_toy_captions_without_the_colour_keep_the_same_draws():
    """data.caption_colour=false: the same clips and captions with the object's colour word removed, never another
    colour word in its place (the toy image prompts' captions; appearance must come from the image)."""
    named = ToyClipDataset(count=12, frames=2, stride=8, size=32, seed=4)
    unnamed = ToyClipDataset(count=12, frames=2, stride=8, size=32, seed=4, caption_colour=False)
    for index in range(12):
        frames, scene, caption, _ = named.clip(index)
        same_frames, same_scene, bare, _ = unnamed.clip(index)
        assert np.array_equal(frames, same_frames) and scene == same_scene
        assert scene.colour in caption.split()
        assert not set(bare.split()) & set(toy_world.COLOURS), bare
        assert bare.split() == [word for word in caption.split() if word != scene.colour] or \
            bare.split()[0] == "a" and caption.split()[0] == "an"  # 'an orange star' -> 'a star'


def test_toy_image_prompt_clips_wear_an_accent_their_caption_does_not_name():
    """data.accent=true (the toy image prompts): every object has a second colour on its centre, drawn afresh per
    item and never its own colour; the caption names neither colour; the training crop shows the accent, as the
    clip's frames do, and data.accent=false leaves every clip as it was."""
    from omegaconf import OmegaConf

    from stylevid.data.image_prompt import image_prompt_dataset

    cfg = OmegaConf.load(ROOT / "conf" / "experiment" / "toy_image_prompt.yaml")
    assert cfg.data.accent is True and cfg.data.caption_colour is False
    data = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "data" / "toy.yaml"), {"count": 8, "frames": 2, "stride": 8, "size": 64, "caption_colour": False,
                                                                            "accent": True})
    clips = image_prompt_dataset(OmegaConf.create({"data": data, "seed": 2}))
    plain = ToyClipDataset(count=8, frames=2, stride=8, size=64, seed=2, caption_colour=False)
    accents = set()
    for index in range(8):
        frames, scene, caption, _ = clips.clips.clip(index)
        assert scene.accent in toy_world.COLOURS and scene.accent != scene.colour
        assert not set(caption.split()) & set(toy_world.COLOURS), caption
        accents.add(scene.accent)
        crop = clips[index]["crop"]
        centre = crop[crop.shape[0] // 2 - 1:crop.shape[0] // 2 + 2, crop.shape[1] // 2 - 1:crop.shape[1] // 2 + 2]
        if scene.shape != "person":  # a stick figure's centre may fall between its limbs
            assert (centre.reshape(-1, 3) == toy_world.COLOURS[scene.accent]).all(axis=1).any(), (scene, centre)
        assert (crop.reshape(-1, 3) == toy_world.COLOURS[scene.colour]).all(axis=1).any()
        assert not plain.clip(index)[1].accent
    assert len(accents) > 1


@pytest.mark.slow
def test_the_image_prompt_family_builds_and_its_weights_make_a_video(tmp_path):
    """`--stage image_prompt` with 2 steps a stage on a copy of the toy AnimateDiff model, then method=image_prompt
    on what it wrote."""
    from stylevid.data.image_prompt import toy_subject_crop
    from stylevid.methods.image_prompt import ImagePrompt
    from stylevid.progress import StageReporter
    from stylevid.toy import judge
    from PIL import Image

    spec = importlib.util.spec_from_file_location("build_toy_world", ROOT / "scripts" / "build_toy_world.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = tmp_path / "out"
    for part in ("pipeline", "motion_module", "clip"):
        shutil.copytree(WEIGHTS / part, out / part)
    args = ["--steps", "2", "--batch-size", "1", "--out", str(out), "--work", str(tmp_path / "work")]
    assert build.main(["--stage", "image_prompt", *args]) == 0
    assert set(json.loads((out / "manifest.json").read_text())["stages"]) == set(build.IMAGE_PROMPT)
    fine, joint = (json.loads((out / name / "manifest.json").read_text()) for name in ("image_prompt", "image_prompt_joint"))
    assert fine["stages"] == ["coarse", "fine"] and joint["stages"] == ["joint"]
    # Both run on the personalized base ip_base trained (toy.accent from the toy UNet), shipped once, in float16.
    assert fine["base_unet"] == "unet" and joint["base_unet"] == "../image_prompt/unet"
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    shipped = load_file(str(out / "image_prompt" / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = UNet2DConditionModel.from_pretrained(str(tmp_path / "work" / "ip_base_run" / "pipeline" / "unet")).state_dict()
    assert all(value.dtype == torch.float16 and torch.equal(value, trained[key].half()) for key, value in shipped.items())
    packaged = UNet2DConditionModel.from_pretrained(str(WEIGHTS / "pipeline" / "unet")).state_dict()
    assert any(not torch.equal(value, packaged[key]) for key, value in trained.items())
    # Rebuilding the coarse stage makes the fine one stale, not the joint ablation or the base.
    assert build.main(["--stage", "ip_coarse", "--force", *args]) == 0
    assert set(json.loads((out / "manifest.json").read_text())["stages"]) == {"ip_base", "ip_coarse", "ip_joint"}

    scene = toy_world.random_scene(np.random.default_rng(3))
    Image.fromarray(toy_subject_crop(scene)).save(tmp_path / "subject.png")
    cfg = judge.cli_configs("image_prompt", [[f"image_prompt={tmp_path / 'subject.png'}", f"subject={scene.shape}",
                                              f"prompt='a {scene.shape} moving right'", "steps=2", "frames=4",
                                              f"method.weights={out / 'image_prompt'}", f"model.path={out / 'pipeline'}",
                                              f"motion.path={out / 'motion_module'}"]])[0]
    method = ImagePrompt()
    settings = method.settings(cfg)
    loaded = method.load(cfg, settings, torch.device("cpu"), torch.float32, None)
    assert method.generate(loaded, settings, StageReporter()).frames.shape == (4, 64, 64, 3)


@built
def test_the_toy_image_prompts_are_within_20_mib_and_load_offline():
    from stylevid.models import image_prompt as ip
    from stylevid.models.gen1 import load_image_encoder

    size = sum(path.stat().st_size for root in (IMAGE_PROMPT, WEIGHTS / "image_prompt_joint")
               for path in root.rglob("*") if path.is_file())
    assert size < 20 * 2**20
    manifest = ip.read_manifest(IMAGE_PROMPT)
    assert manifest["stages"] == ["coarse", "fine"] and manifest["fine"]
    assert ip.bundled_base_unet(IMAGE_PROMPT, manifest) == (IMAGE_PROMPT / "unet").resolve()
    joint = WEIGHTS / "image_prompt_joint"
    assert ip.bundled_base_unet(joint, ip.read_manifest(joint)) == (IMAGE_PROMPT / "unet").resolve()
    ip.load_mapper(IMAGE_PROMPT)
    load_image_encoder(IMAGE_PROMPT / "image_encoder", "toy")


@pytest.fixture(scope="module")
def figures():
    from stylevid.toy.judge_image_prompt import measure_image_prompt

    return measure_image_prompt(16)


@pytest.mark.slow
@built
def test_the_video_takes_the_image_prompts_colour_which_the_text_does_not_name(figures):
    colour = figures["colour_followed"]
    assert colour["coarse_fine"] >= 0.7, figures
    assert colour["coarse_fine"] > colour["text_alone"], figures
    assert colour["ground_truth"] == 1.0, figures  # the judge reads the true clip's colour right


@pytest.mark.slow
@built
def test_fine_embeddings_raise_image_fidelity_over_coarse_only(figures):
    # clearly above: the paired gain more than two standard errors over zero (a higher mean alone can be noise;
    # README, "The toy image prompts": not met yet)
    gain = figures["image_fidelity"]["coarse_fine"] - figures["image_fidelity"]["coarse"]
    assert figures["fine_above_coarse"] and gain > 2 * figures["fine_gain_standard_error"], figures
    # reported either way (README): coarse-to-fine against joint training, and the position-encoding ablation
    assert set(figures["image_fidelity"]) >= {"coarse_fine", "coarse", "no_position_encoding", "text_alone"}


def test_the_subject_crop_of_a_true_toy_frame_is_the_image_prompts_crop():
    """subject_fidelity compares like with like: the judge's crop of a true clip's first frame (its object found by
    chroma, alone on the neutral background; its accent too) is `toy_subject_crop` pixel for pixel; a frame with no
    object gives none."""
    from stylevid.data.image_prompt import toy_subject_crop
    from stylevid.toy.judge_image_prompt import subject_crops, true_clip

    rng = np.random.default_rng(5)
    for index in range(12):
        scene = toy_world.random_scene(rng)
        scene = toy_world.with_random_accent(scene, rng) if index % 2 else scene
        assert np.array_equal(subject_crops(true_clip(scene)[:1])[0], toy_subject_crop(scene))
    # The least saturated accent on the most saturated body, over the background whose trail is most saturated:
    # the accent is in the crop at every frame, the trail is not.
    from stylevid.data.image_prompt import crop_to_mask

    scene = toy_world.Scene("orange", "circle", "large", "left", "stripes", "maroon", 40.0, 30.0, accent="purple")
    for k, frame in enumerate(true_clip(scene)):
        truth = toy_world.render_frame(scene, k)
        expected = crop_to_mask(toy_world.object_paint(scene, *toy_world.object_state(scene, k)), truth.mask.astype(bool))
        assert np.array_equal(subject_crops(frame[None])[0], expected), k
    assert subject_crops(np.full((2, 64, 64, 3), 128, np.uint8)) == []


def test_the_judge_reads_an_objects_body_and_accent_colours_from_its_pixels():
    """`judge.object_colours` on true toy clips: the body colour and the accent of every accented subject (every
    shape, the triangle's accent covering most of it), the body of plain ones; on a frame with no object, none."""
    from stylevid.toy import judge
    from stylevid.toy.judge_image_prompt import true_clip

    rng = np.random.default_rng(11)
    for index in range(40):
        scene = toy_world.random_scene(rng, shape=toy_world.SHAPES[index % len(toy_world.SHAPES)])
        accented = toy_world.with_random_accent(scene, rng)
        assert judge.object_colours(true_clip(accented)) == (scene.colour, accented.accent), accented
        assert judge.object_colours(true_clip(scene))[0] == scene.colour, scene
    assert judge.object_colours(np.full((2, 64, 64, 3), 128, np.uint8)) == (None, None)
