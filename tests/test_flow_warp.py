"""Backward warping of latents by a dense flow (sampling/motion.py `warp_by_flow`)."""

import pytest
import torch

from stylevid.sampling.motion import translation_flow, warp_by_flow, warp_latents


@pytest.mark.parametrize("strengths,size", [((12.0, 12.0), (8, 8)), ((-20.0, 7.5), (16, 24)), ((64.0, 0.0), (8, 16))])
def test_a_constant_flow_is_text2video_zeros_translation(strengths, size):
    torch.manual_seed(0)
    latents = torch.randn(3, 4, *size)
    frame_ids = [1, 2, 5]
    expected = warp_latents(latents, frame_ids, *strengths)
    flow = torch.cat([translation_flow(k, *strengths, *size) for k in frame_ids])
    got = warp_by_flow(latents, flow, mode="nearest", padding_mode="reflection")
    assert torch.equal(got, expected)


def test_integer_flow_moves_pixels_and_bilinear_interpolates_between_them():
    image = torch.arange(25.0).view(1, 1, 5, 5)
    flow = torch.zeros(1, 2, 5, 5)
    flow[:, 0] = 1.0  # every output pixel reads the pixel to its right
    shifted = warp_by_flow(image, flow)
    assert torch.equal(shifted[0, 0, :, :4], image[0, 0, :, 1:])
    assert torch.equal(shifted[0, 0, :, 4], image[0, 0, :, 4])  # border padding repeats the edge
    flow[:, 0], flow[:, 1] = 0.5, 0.0
    half = warp_by_flow(image, flow)
    torch.testing.assert_close(half[0, 0, :, :4], (image[0, 0, :, :4] + image[0, 0, :, 1:]) / 2)
    flow[:, 0], flow[:, 1] = 0.0, -1.0  # reads the pixel above
    assert torch.equal(warp_by_flow(image, flow)[0, 0, 1:], image[0, 0, :4])


def test_zero_flow_is_the_identity_and_shapes_are_checked():
    latents = torch.randn(2, 4, 6, 7)
    assert torch.allclose(warp_by_flow(latents, torch.zeros(2, 2, 6, 7)), latents, atol=1e-6)
    with pytest.raises(ValueError, match="flow must be"):
        warp_by_flow(latents, torch.zeros(2, 2, 6, 6))
