"""Moving between pixels and the VAE's latent space."""

from __future__ import annotations

import numpy as np
import torch


def pixels_from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) images to float (N, 3, H, W) pixels in [-1, 1], the range SD's VAE encodes."""
    copied = np.array(images, dtype=np.uint8)  # a copy: torch refuses the negative strides of flipped views
    return torch.from_numpy(copied).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_images(vae, images: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) images to scaled latents, taking the mean of the VAE posterior (deterministic).

    `device` is where the VAE runs: pass the pipeline's `_execution_device`. Under diffusers' model CPU
    offload the VAE's weights wait on the CPU (`vae.device` says cpu) and move to the GPU only inside
    encode/decode, so inputs must go to the execution device, not to `vae.device` (the default).
    """
    pixels = pixels_from_uint8(images).to(device=device or vae.device, dtype=vae.dtype)
    posterior = vae.encode(pixels).latent_dist
    return posterior.mean * vae.config.scaling_factor


@torch.no_grad()
def decode_to_uint8(
    vae, latents: torch.Tensor, frames_per_decode: int | None = None, device: torch.device | None = None
) -> np.ndarray:
    """Scaled latents to uint8 (N, H, W, 3) frames; `frames_per_decode` bounds decoder memory (VAE slicing).

    `device`: where the VAE runs, the pipeline's `_execution_device` (see `encode_images`).
    """
    step = frames_per_decode or latents.shape[0]
    out = []
    for start in range(0, latents.shape[0], step):
        chunk = latents[start : start + step].to(device=device or vae.device, dtype=vae.dtype)
        images = vae.decode(chunk / vae.config.scaling_factor, return_dict=False)[0]
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        out.append((images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)
