import numpy as np
import pytest
import torch

from stylevid.errors import UserInputError
from stylevid.methods import stylet2v0
from stylevid.methods.t2v_zero import ZeroShotSettings, ZeroShotVideo
from stylevid.sampling.inversion import ddim_invert

SMALL = dict(prompt="a horse galloping", frames=3, height=64, width=64, steps=8, t0=3, t1=5, seed=1)


def test_strength_zero_reproduces_t2v_zero_exactly(tiny_pipe, style_image_path):
    base = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL))
    styled = stylet2v0.generate(tiny_pipe, ZeroShotSettings(**SMALL), stylet2v0.StyleSettings(style_image_path, strength=0.0))
    assert torch.equal(styled.latents, base.latents)
    assert np.array_equal(styled.frames, base.frames)


def test_style_row_alone_does_not_leak_into_frames(tiny_pipe, style_image_path):
    """With sharing on no layer, the extra style row is only carried along: frames stay t2v_zero's."""
    base = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL))
    carried = stylet2v0.generate(
        tiny_pipe, ZeroShotSettings(**SMALL), stylet2v0.StyleSettings(style_image_path, strength=1.0, layers=["no_such_block"])
    )
    torch.testing.assert_close(carried.latents, base.latents, atol=2e-4, rtol=0)


def test_style_changes_frames_more_as_strength_grows(tiny_pipe, style_image_path):
    base = ZeroShotVideo(tiny_pipe)(ZeroShotSettings(**SMALL)).latents
    distances = []
    for strength in (0.25, 1.0):
        out = stylet2v0.generate(tiny_pipe, ZeroShotSettings(**SMALL), stylet2v0.StyleSettings(style_image_path, strength=strength))
        distances.append((out.latents - base).abs().mean().item())
    assert 0 < distances[0] < distances[1]


def test_inversion_visits_every_denoising_timestep(tiny_pipe):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(8)
    clean = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds, _ = tiny_pipe.encode_prompt("", "cpu", 1, False)
    trajectory = ddim_invert(tiny_pipe.unet, tiny_pipe.scheduler, clean, embeds, 8)
    assert sorted(trajectory) == sorted(int(t) for t in scheduler.timesteps)
    # noise grows along the trajectory: the latent drifts further from the clean one at higher timesteps
    drift = [(trajectory[t] - clean).norm().item() for t in sorted(trajectory)]
    assert drift[-1] > drift[0]


def test_missing_and_unreadable_style_images(tmp_path, tiny_pipe):
    with pytest.raises(UserInputError, match="not found"):
        stylet2v0.load_style_image(str(tmp_path / "nope.png"), 64, 64)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserInputError, match="cannot be read"):
        stylet2v0.load_style_image(str(broken), 64, 64)


def test_style_image_is_cropped_to_the_frame(tmp_path):
    from PIL import Image

    image = np.zeros((40, 120, 3), dtype=np.uint8)
    image[:, 40:80] = 255  # a white centre third
    Image.fromarray(image).save(tmp_path / "wide.png")
    loaded = stylet2v0.load_style_image(str(tmp_path / "wide.png"), 64, 64)
    assert loaded.shape == (64, 64, 3)
    assert loaded[:, 8:56].min() > 200  # the centre survives the crop; the black sides are mostly cut
