"""Moving between pixels and the VAE's latent space."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def encode_images(vae, images: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) images to scaled latents, taking the mean of the VAE posterior (deterministic)."""
    pixels = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    posterior = vae.encode(pixels).latent_dist
    return posterior.mean * vae.config.scaling_factor


@torch.no_grad()
def decode_to_uint8(vae, latents: torch.Tensor, frames_per_decode: int | None = None) -> np.ndarray:
    """Scaled latents to uint8 (N, H, W, 3) frames; `frames_per_decode` bounds decoder memory (VAE slicing)."""
    step = frames_per_decode or latents.shape[0]
    out = []
    for start in range(0, latents.shape[0], step):
        chunk = latents[start : start + step].to(device=vae.device, dtype=vae.dtype)
        images = vae.decode(chunk / vae.config.scaling_factor, return_dict=False)[0]
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        out.append((images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)
