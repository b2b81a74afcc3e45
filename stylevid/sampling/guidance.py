"""Guidance: one prediction steered by the differences between others.

    ε̂ = ε_base + Σ_i w_i (ε_towards,i − ε_away,i)

Classifier-free guidance (Ho & Salimans) is the one-term case ε_uncond + w (ε_cond − ε_uncond), used by every
sampler and inversion here. Guidance with several terms is the same call with more terms: Gen-1's temporal guidance
adds w_t (ε_video − ε_image) to its classifier-free term, an image-prompt method a term for the image condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Term = tuple[float, torch.Tensor, torch.Tensor]  # (weight, towards, away from)


def guide(base: torch.Tensor, terms: Sequence[Term]) -> torch.Tensor:
    """base + Σ weight · (towards − away_from), each term in order."""
    guided = base
    for weight, towards, away_from in terms:
        guided = guided + weight * (towards - away_from)
    return guided


def classifier_free(noise: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch `[unconditional rows, conditional rows]` (the order diffusers' pipelines
    and stylevid's samplers stack them in): ε_u + scale (ε_c − ε_u), half the rows."""
    unconditional, conditional = noise.chunk(2)
    return guide(unconditional, [(scale, conditional, unconditional)])
