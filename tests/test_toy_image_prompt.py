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
    assert json.loads((out / "image_prompt" / "manifest.json").read_text())["stages"] == ["coarse", "fine"]
    assert json.loads((out / "image_prompt_joint" / "manifest.json").read_text())["stages"] == ["joint"]
    # Rebuilding the coarse stage makes the fine one stale, not the joint ablation.
    assert build.main(["--stage", "ip_coarse", "--force", *args]) == 0
    assert set(json.loads((out / "manifest.json").read_text())["stages"]) == {"ip_coarse", "ip_joint"}

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

    size = sum(path.stat().st_size for path in IMAGE_PROMPT.rglob("*") if path.is_file())
    assert size < 20 * 2**20
    manifest = ip.read_manifest(IMAGE_PROMPT)
    assert manifest["stages"] == ["coarse", "fine"] and manifest["fine"]
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
    chroma, alone on the neutral background) is `toy_subject_crop` pixel for pixel; a frame with no object gives none."""
    from stylevid.data.image_prompt import toy_subject_crop
    from stylevid.toy.judge_image_prompt import subject_crops, true_clip

    rng = np.random.default_rng(5)
    for _ in range(12):
        scene = toy_world.random_scene(rng)
        assert np.array_equal(subject_crops(true_clip(scene)[:1])[0], toy_subject_crop(scene))
    assert subject_crops(np.full((2, 64, 64, 3), 128, np.uint8)) == []
