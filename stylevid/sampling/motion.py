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


def warp_by_flow(latents: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """Backward warping by a dense flow: out[n, :, y, x] = latents[n, :, y + flow[n, 1, y, x], x + flow[n, 0, y, x]].

    `flow` is (N, 2, h, w) in latent pixels, x displacement first, as optical-flow networks give it once resized to
    the latent grid (VideoGen's flow-based temporal super-resolution, Gen-1's temporal guidance). Bilinear sampling
    by default; with a constant flow and mode="nearest", padding_mode="reflection" it is Text2Video-Zero's
    translation W_k (`warp_latents`, tested).
    """
    if flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[-2:] != latents.shape[-2:] or flow.shape[0] != latents.shape[0]:
        raise ValueError(f"flow must be (N, 2, h, w) matching latents {tuple(latents.shape)}, got {tuple(flow.shape)}")
    _, _, height, width = latents.shape
    rows = torch.arange(height, device=latents.device, dtype=latents.dtype)
    cols = torch.arange(width, device=latents.device, dtype=latents.dtype)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    x = grid_x + flow[:, 0].to(latents.dtype)
    y = grid_y + flow[:, 1].to(latents.dtype)
    # pixel index -> grid_sample's [-1, 1] with align_corners=False (pixel centres at (2i + 1) / size - 1)
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    return F.grid_sample(latents, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def translation_flow(frame_id: int, strength_x: float, strength_y: float, height: int, width: int) -> torch.Tensor:
    """Text2Video-Zero's W_k as a constant flow in latent pixels, (1, 2, height, width): k * strength in 512-px
    units, less the half 512-px pixel its construction samples at (see `translation_grid`)."""
    flow = torch.empty(1, 2, height, width)
    flow[:, 0] = (strength_x * frame_id - 0.5) * width / REFERENCE_SIZE
    flow[:, 1] = (strength_y * frame_id - 0.5) * height / REFERENCE_SIZE
    return flow
