"""The diffusion objective every diffusion target trains with (`conf/diffusion/`), written once.

x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε under a DDPM noise schedule; the model predicts ε (`prediction=epsilon`) or
v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (`prediction=v_prediction`); the loss is the MSE to that target, optionally
weighted per timestep, with timesteps drawn uniformly or biased, and captions dropped to "" with probability
`caption_dropout` (what classifier-free guidance needs at sampling time).

Every random draw takes the caller's generator, so a target decides the order of its draws (and a resumed run
repeats them): `noise`, `timesteps` and `dropped` each draw once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..errors import UserInputError

# AnimateDiff paper Table 2: A is SD's own pre-training schedule, B (linear 0.00085-0.012) AnimateDiff's choice.
SCHEDULES = {
    "A": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "B": {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012},
    "C": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
}
PREDICTIONS = ("epsilon", "v_prediction")
TIMESTEP_BIASES = ("none", "later", "earlier")
LOSS_WEIGHTINGS = ("epsilon", "v", "min_snr")
NUM_TIMESTEPS = 1000


def noise_schedule(name: str, prediction: str = "epsilon") -> DDPMScheduler:
    if name not in SCHEDULES:
        raise UserInputError(f"diffusion.schedule must be one of {', '.join(SCHEDULES)} (AnimateDiff Table 2), got {name!r}")
    if prediction not in PREDICTIONS:
        raise UserInputError(f"diffusion.prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    return DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, clip_sample=False, prediction_type=prediction, **SCHEDULES[name])


def timestep_weights(strategy: str, portion: float, multiplier: float, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Sampling weights over the training timesteps: uniform, or `multiplier` times heavier on the noisiest
    (`later`) or cleanest (`earlier`) `portion` of them (the strategy of diffusers' SDXL training example).

    Why offer it: under the ε-loss an error in the clean video at t=900 weighs ᾱ/(1-ᾱ) = 0.005 (schedule B), so the
    noisiest steps, where the layout of the whole clip is decided, train least; drawing them more often trains
    them more. On the toy models (`scripts/build_toy_world.py`) it did not teach the motion module the prompt's
    direction: 1,000 fine-tuning steps with `later` (portion 0.5 x4 or 0.2 x20) left the loss gap between the true
    and the direction-swapped caption at zero, as without it.
    """
    if strategy not in TIMESTEP_BIASES:
        raise UserInputError(f"diffusion.timestep_bias must be none, later or earlier; got {strategy!r}")
    if not 0 < portion <= 1 or multiplier <= 0:
        raise UserInputError(f"diffusion.timestep_bias_portion must be in (0, 1] and the multiplier > 0; got {portion}, {multiplier}")
    weights = torch.ones(num_timesteps)
    favoured = max(1, round(portion * num_timesteps))
    if strategy == "later":
        weights[-favoured:] *= multiplier
    elif strategy == "earlier":
        weights[:favoured] *= multiplier
    return weights / weights.sum()


def loss_weights(weighting: str, scheduler: DDPMScheduler, snr_gamma: float = 5.0) -> torch.Tensor | None:
    """The MSE's weight at each training timestep, indexed by t (None: the plain MSE to the prediction target).

    With ε-prediction: `v` is 1/ᾱ_t = 1 + 1/SNR, which makes the ε-MSE equal to the v-prediction MSE (Salimans & Ho,
    2022) and keeps a clean-video error at t=900 from weighing only ᾱ/(1-ᾱ) = 0.005 (schedule B): the noisiest steps,
    where a clip's layout is decided, train as much as the rest. `min_snr` is min(SNR, γ)/SNR (Hang et al., 2023;
    diffusers' `--snr_gamma`), which lowers the nearly clean steps instead. On the toy world (README) `v` taught a
    module fine-tuned on videos that all move right to draw rightward motion from pure noise, which the ε-loss did not.
    With v-prediction the plain MSE already is the v-loss (`v` adds nothing) and `min_snr` is min(SNR, γ)/(SNR + 1).
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise UserInputError(f"diffusion.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {weighting!r}")
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    if weighting == "epsilon" or (weighting == "v" and v_prediction):
        return None
    if weighting == "min_snr" and snr_gamma <= 0:
        raise UserInputError(f"diffusion.snr_gamma must be > 0; got {snr_gamma}")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, torch.arange(scheduler.config.num_train_timesteps))
    if weighting == "v":
        return 1 + 1 / snr
    return snr.clamp(max=snr_gamma) / (snr + 1 if v_prediction else snr)


@dataclass
class DiffusionObjective:
    """`conf/diffusion/<name>.yaml` as the pieces a diffusion target's loss is made of."""

    scheduler: DDPMScheduler
    timestep_weights: torch.Tensor | None  # None: uniform (drawn with randint, as before the option existed)
    loss_weight_per_timestep: torch.Tensor | None
    caption_dropout: float

    @classmethod
    def from_config(cls, diffusion) -> "DiffusionObjective":
        scheduler = noise_schedule(str(diffusion.schedule), str(diffusion.get("prediction", "epsilon")))
        weights = timestep_weights(str(diffusion.timestep_bias), float(diffusion.timestep_bias_portion),
                                   float(diffusion.timestep_bias_multiplier), scheduler.config.num_train_timesteps)
        uniform = bool((weights == weights[0]).all())
        return cls(scheduler, None if uniform else weights,
                   loss_weights(str(diffusion.loss_weighting), scheduler, float(diffusion.snr_gamma)),
                   float(diffusion.caption_dropout))

    @property
    def num_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if self.timestep_weights is None:
            return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return torch.multinomial(self.timestep_weights, batch_size, replacement=True, generator=generator)

    @staticmethod
    def noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator).to(like.device)

    def dropped(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Which captions of the batch become "" (a bool per sample)."""
        return torch.rand(batch_size, generator=generator) < self.caption_dropout

    def drop_captions(self, captions: list[str], generator: torch.Generator) -> list[str]:
        return ["" if drop else caption for drop, caption in zip(self.dropped(len(captions), generator).tolist(), captions)]

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(clean, noise, timesteps.to(clean.device))

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.scheduler.config.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(clean, noise, timesteps.to(clean.device))
        return noise

    def loss(self, prediction: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        target = self.target(clean, noise, timesteps)
        if self.loss_weight_per_timestep is None:
            return F.mse_loss(prediction.float(), target.float())
        per_sample = ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)
        return (self.loss_weight_per_timestep[timesteps.cpu()].to(per_sample.device) * per_sample).mean()


def caption_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (B, model_max_length) of the captions, padded and truncated to the text encoder's full length, as
    SD's text conditioning is trained and sampled (every diffusion target conditions on captions this way)."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids
