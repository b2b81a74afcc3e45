"""The packaged toy VideoGen (method=videogen model=toy): it loads offline, is small, and does what the paper claims.

Thresholds are the issue's targets; `scripts/toy_report.py --only videogen tsr video_decoder sr` prints the same
figures (`stylevid.toy.judge_videogen`). Generation-heavy checks carry the `slow` marker. Until
`scripts/build_toy_world.py` has built a part, the tests that need it are skipped, naming the stage.
"""

import json

import pytest

from stylevid.toy import WEIGHTS

VIDEOGEN = WEIGHTS / "videogen"
PARTS = {"base": "vg_base", "sr2": "vg_sr", "latent_flow": "vg_flow", "tsr_refiner": "vg_refiner",
         "video_decoder": "vg_decoder"}


def built(*parts: str):
    manifest = VIDEOGEN / "manifest.json"
    have = set(json.loads(manifest.read_text())["parts"]) if manifest.exists() else set()
    missing = [PARTS[part] for part in parts if part not in have]
    return pytest.mark.skipif(bool(missing), reason=f"toy VideoGen stage(s) {', '.join(missing)} not built yet")


@built(*PARTS)
def test_the_toy_videogen_is_within_60_mib_and_every_part_loads_offline():
    from stylevid.models.latent_flow import load_latent_flow
    from stylevid.models.tsr_refiner import load_tsr_refiner
    from stylevid.models.video_decoder import VideoDecoder
    from stylevid.models.videogen import load_stage, stage_kind

    size = sum(path.stat().st_size for path in VIDEOGEN.rglob("*") if path.is_file())
    assert size < 60 * 2**20
    assert stage_kind(load_stage(VIDEOGEN / "base")) == "base" and stage_kind(load_stage(VIDEOGEN / "sr2")) == "sr"
    load_latent_flow(VIDEOGEN / "latent_flow", "flow")
    load_tsr_refiner(VIDEOGEN / "tsr_refiner", "refiner")
    VideoDecoder.from_pretrained(str(VIDEOGEN / "video_decoder"))


def test_rendered_references_have_the_prompts_look():
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from stylevid.data import toy_world
    from stylevid.toy import judge
    from stylevid.toy.judge_videogen import rendered_references

    chosen = judge.prompts(32, seed=70_001, directions=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = np.stack([np.asarray(Image.open(path)) for path in rendered_references(chosen, Path(tmp), 70_001)])
        again = np.stack([np.asarray(Image.open(path)) for path in rendered_references(chosen, Path(tmp), 70_001)])
    assert np.array_equal(images, again)  # a function of the seed
    for prompt, image in zip(chosen, images):
        assert (image.reshape(-1, 3) == toy_world.COLOURS[prompt.colour]).all(axis=1).sum() > 100  # the object, drawn
    # The judge reads their look as it reads the videos' (measured: colour 31 of 32, shape 28 of 32).
    embedder = judge.toy_clip_embedder()
    assert np.mean([c == p.colour for c, p in zip(judge.classify(embedder, images, "colour"), chosen)]) >= 0.9
    assert np.mean([s == p.shape for s, p in zip(judge.classify(embedder, images, "shape"), chosen)]) >= 0.8


@pytest.mark.slow
@built(*PARTS)
def test_videogen_follows_the_prompts_direction_and_the_reference_helps_adherence():
    from stylevid.toy.judge_videogen import measure_videogen

    figures = measure_videogen()  # 128 held-out prompts: the gain's paired standard error is about 0.012
    assert figures["direction_followed"] >= 0.70, figures
    assert figures["adherence_gain"] >= 0.0, figures  # Table 3: with the reference at least as high


@pytest.mark.slow
@built("latent_flow", "tsr_refiner")
def test_flow_tsr_beats_linear_latent_interpolation_by_1_db():
    from stylevid.toy.judge_videogen import measure_tsr

    figures = measure_tsr(16)
    assert figures["flow_gain_db"] >= 1.0, figures


@pytest.mark.slow
@built("video_decoder")
def test_the_video_decoder_beats_the_image_decoder_on_degraded_latents():
    from stylevid.toy.judge_videogen import measure_video_decoder

    figures = measure_video_decoder(16)
    assert figures["psnr_gain_db"] >= 0.5, figures
    assert figures["flicker_error_video_decoder"] < figures["flicker_error_image_decoder"], figures
