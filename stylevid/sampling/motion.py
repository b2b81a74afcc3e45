"""Text2Video-Zero's global translation motion field and latent warping (Section 3.2 of the paper).

Frame k is frame 1 translated by k * (strength_x, strength_y) pixels, where strengths are given in pixels of
a 512-px image as in Text2Video-Zero (so a setting means the same relative motion at any resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Text2Video-Zero states its motion strengths in pixels of a 512 x 512 image, whatever the output size.
REFERENCE_SIZE = 512


def translation_grid(frame_id: int, strength_x: float, strength_y: float, height: int, width: int, dtype, device):
    """The sampling grid (for `grid_sample`, align_corners=False) of the translation W_k at latent size.

    Written as the closed form of Text2Video-Zero's construction (a 512-px flow field of constant
    displacement k * strength, normalised, then bilinearly resized to the latent grid): a bilinear resize of
    a linear ramp is the same ramp sampled at the latent pixel centres.
    """
    rows = torch.arange(height, device=device, dtype=dtype)
    cols = torch.arange(width, device=device, dtype=dtype)
    # centre of latent pixel j in 512-px coordinates, plus the displacement, normalised to [-1, 1]
    x = ((cols + 0.5) * (REFERENCE_SIZE / width) - 0.5 + strength_x * frame_id) / REFERENCE_SIZE * 2.0 - 1.0
    y = ((rows + 0.5) * (REFERENCE_SIZE / height) - 0.5 + strength_y * frame_id) / REFERENCE_SIZE * 2.0 - 1.0
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)[None]


def warp_latents(latents: torch.Tensor, frame_ids: Sequence[int], strength_x: float, strength_y: float) -> torch.Tensor:
    """Warp each latent row i by the translation of frame `frame_ids[i]` (W_k in the paper).

    Nearest sampling with reflection at the borders, as Text2Video-Zero does, so no latent value is blurred.
    """
    _, _, height, width = latents.shape
    warped = torch.empty_like(latents)
    for row, frame_id in enumerate(frame_ids):
        grid = translation_grid(frame_id, strength_x, strength_y, height, width, latents.dtype, latents.device)
        warped[row] = F.grid_sample(latents[row : row + 1], grid, mode="nearest", padding_mode="reflection", align_corners=False)[0]
    return warped
