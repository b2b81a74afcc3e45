import numpy as np
import pytest
import torch

from stylevid.errors import UserInputError
from stylevid.methods.t2v_zero import default_step_counts
from stylevid.methods.t2v_zero import ZeroShotSettings, ZeroShotVideo, frame_chunks
from stylevid.sampling.motion import warp_latents

SMALL = dict(prompt="a panda surfing", frames=4, height=64, width=64, steps=8, t0=3, t1=5, seed=3)


def reference_pipeline(pipe):
    from diffusers import TextToVideoZeroPipeline

    parts = {name: getattr(pipe, name) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    reference = TextToVideoZeroPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    return reference


@pytest.mark.parametrize("motion", [(12, 12), (300, -150)])
def test_matches_diffusers_text_to_video_zero(tiny_pipe, motion):
    """The peer check: same components, seed and settings give the same frames as diffusers' pipeline."""
    reference = reference_pipeline(tiny_pipe)(
        prompt=SMALL["prompt"], video_length=4, height=64, width=64, num_inference_steps=8, t0=3, t1=5,
        motion_field_strength_x=motion[0], motion_field_strength_y=motion[1],
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images
    reference = (reference * 255).round().astype(np.int16)
    ours = ZeroShotVideo(tiny_pipe)(
        ZeroShotSettings(**SMALL, motion_field_strength_x=motion[0], motion_field_strength_y=motion[1])
    ).frames
    assert ours.shape == (4, 64, 64, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(np.int16) - reference).max() <= 1


@pytest.mark.parametrize("size,strength", [((8, 8), (12, 12)), ((64, 64), (12, -7)), ((6, 10), (200, 33))])
def test_warp_equals_text2video_zero_motion_field(size, strength):
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        create_motion_field_and_warp_latents,
    )

    torch.manual_seed(0)
    latents = torch.randn(5, 4, *size)
    ids = [1, 2, 3, 7, 11]
    expected = create_motion_field_and_warp_latents(strength[0], strength[1], ids, latents)
    assert torch.equal(warp_latents(latents, ids, *strength), expected)


def test_chunk_layout_keeps_frame_one_as_anchor():
    assert frame_chunks(5, 8) == [[0, 1, 2, 3, 4]]
    assert frame_chunks(8, 0) == [list(range(8))]
    assert frame_chunks(8, 3) == [[0, 1, 2], [0, 3, 4], [0, 5, 6], [0, 7]]
    covered = sorted({f for chunk in frame_chunks(32, 8) for f in chunk})
    assert covered == list(range(32)) and all(len(c) <= 8 and c[0] == 0 for c in frame_chunks(32, 8))


def test_chunked_generation_gives_the_same_video(tiny_pipe):
    whole = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**{**SMALL, "frames": 5}, chunk_size=0))
    chunked = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**{**SMALL, "frames": 5}, chunk_size=2))
    torch.testing.assert_close(chunked.latents, whole.latents, atol=1e-5, rtol=0)
    assert np.abs(chunked.frames.astype(int) - whole.frames.astype(int)).max() <= 1


def test_first_frame_does_not_depend_on_the_other_frames(tiny_pipe):
    one = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**{**SMALL, "frames": 1}))
    three = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**{**SMALL, "frames": 3}))
    torch.testing.assert_close(three.latents[:1], one.latents, atol=1e-5, rtol=0)
    assert not torch.allclose(three.latents[1], three.latents[0], atol=1e-3)


def test_full_background_smoothing_makes_frames_the_warped_first_frame(tiny_pipe):
    """Eq. 6 with α = 1 and no foreground: every frame's latent is frame 1's, warped by the motion field."""
    s = ZeroShotSettings(**SMALL, smooth_background=True, smoothing_alpha=1.0, smoothing_threshold=float("inf"))
    out = ZeroShotVideo(tiny_pipe)(s)
    warped = warp_latents(out.latents[:1].repeat(3, 1, 1, 1), [1, 2, 3], 12, 12)
    torch.testing.assert_close(out.latents[1:], warped, atol=1e-6, rtol=0)
    plain = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL))
    assert not torch.allclose(plain.latents[1:], warped, atol=1e-3)


@pytest.mark.parametrize("steps,expected", [(50, (44, 47)), (100, (89, 95)), (30, (26, 28)), (20, (17, 18)), (10, (7, 8)), (4, (1, 2))])
def test_step_counts_follow_text2video_zero(steps, expected):
    """t0=44, t1=47 at 50 steps: frame 1 alone takes 2 DDIM steps to t1 and 3 more to t0, scaled to `steps` with at
    least one each, so t0 < t1 < steps always (10 steps: (7, 8), where 44/50 and 47/50 rounded give (9, 9))."""
    t0, t1 = default_step_counts(steps)
    assert (t0, t1) == expected
    assert 0 <= t0 < t1 < steps
    ZeroShotSettings(prompt="x", steps=steps, t0=t0, t1=t1).validate()  # ... and the CLI's own check accepts them


@pytest.mark.parametrize(
    "change,message",
    [
        ({"frames": 0}, "frames"),
        ({"height": 60}, "multiples of 8"),
        ({"steps": 5, "t0": 3, "t1": 5}, "steps=5 is too small"),
        ({"t0": 5, "t1": 5}, "t0 < t1"),
        ({"frames": 9, "chunk_size": 1}, "chunk_size"),
    ],
)
def test_bad_settings_are_user_errors(change, message):
    with pytest.raises(UserInputError, match=message):
        ZeroShotSettings(**{**SMALL, **change}).validate()


def test_bfloat16_and_vae_slicing_stay_close_to_float32(tiny_pipe):
    from stylevid.models.tiny import tiny_pipeline

    reference = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL)).frames.astype(int)
    sliced = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL, frames_per_decode=1)).frames.astype(int)
    assert np.abs(sliced - reference).max() <= 1  # decoding frame by frame changes nothing visible
    half = ZeroShotVideo(tiny_pipeline().to(dtype=torch.bfloat16))(ZeroShotSettings(**SMALL)).frames.astype(int)
    assert np.abs(half - reference).mean() < 3  # bfloat16 runs end to end and stays near float32


def test_background_smoothing_with_an_all_foreground_mask_equals_smoothing_off(tiny_pipe):
    """The mask source is pluggable: a mask that calls everything foreground leaves eq. 6 nothing to smooth."""
    calls = []

    def everything_moves(predicted_x0, frame_ids):
        calls.append(list(frame_ids))
        return torch.ones(len(frame_ids) - 1, 1, *predicted_x0.shape[-2:])

    smoothed = ZeroShotVideo(tiny_pipe)(
        ZeroShotSettings(**SMALL, smooth_background=True, smoothing_alpha=1.0, foreground_mask=everything_moves)
    )
    plain = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL))
    assert torch.equal(smoothed.latents, plain.latents)
    assert calls and all(ids == [0, 1, 2, 3] for ids in calls)  # one chunk, led by frame 1
    # the default source (motion saliency) does smooth with the same α
    default = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL, smooth_background=True, smoothing_alpha=1.0))
    assert not torch.allclose(default.latents, plain.latents, atol=1e-3)
