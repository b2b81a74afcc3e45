"""Every value a user types for `stylevid train`, checked before a run directory exists or a model loads.

Without this, `trainer.batch_size=0` or `data.stride=0` ended in a traceback deep in torch, `trainer.max_steps=0`
"trained" and wrote a finished run, and `trainer.lr=nan` trained on NaNs. Each key has one rule here; a value
that breaks it is a one-line `UserInputError` naming the key (exit code 2 from the CLI).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from .. import values
from ..errors import UserInputError

# Each rule applies when the composed config has the key (a target without videos has no data.frames).
# key: (minimum, maximum) of an integer
INTEGERS = {
    "trainer.batch_size": (1, None),
    "trainer.grad_accum": (1, None),
    "trainer.max_steps": (1, None),
    "trainer.warmup_steps": (0, None),
    "trainer.log_every": (1, None),
    "trainer.checkpoint_every": (0, None),  # 0: no checkpoints
    "trainer.keep_checkpoints": (0, None),  # 0: keep all
    "trainer.cycles": (1, None),
    "data.frames": (1, None),
    "data.stride": (1, None),
    "data.size": (8, 4096),  # a frame is decoded at this size before any check could see it is too large
    "data.num_workers": (0, None),
    "data.max_skips": (0, None),
    "motion.num_attention_heads": (1, None),
    "motion.max_seq_length": (1, None),
    "motion.transformer_layers_per_block": (1, None),
    "validation.every": (0, None),  # 0: never
    "validation.steps": (1, 1000),  # DDIM steps over the 1000 training timesteps
}
# Integers that data=toy (rendered clips) also takes as a list, drawing one value per clip.
PER_CLIP_LISTS = ("data.stride",)
# key: keyword arguments of values.number (every number must also be finite)
NUMBERS = {
    "trainer.lr": {"above": 0},
    "trainer.weight_decay": {"minimum": 0},
    "trainer.adam_beta1": {"minimum": 0, "maximum": 0.999999},  # torch.optim.AdamW: 0 <= beta < 1
    "trainer.adam_beta2": {"minimum": 0, "maximum": 0.999999},
    "trainer.adam_epsilon": {"above": 0},  # 0 divides 0 by 0 for a parameter whose gradient is still zero
    "trainer.max_grad_norm": {"minimum": 0},  # 0: no clipping
    "diffusion.timestep_bias_portion": {"above": 0, "maximum": 1},
    "diffusion.timestep_bias_multiplier": {"above": 0},
    "diffusion.snr_gamma": {"above": 0},
    "diffusion.caption_dropout": {"minimum": 0, "maximum": 1},
    "trainer.ema_decay": {"minimum": 0, "maximum": 1},
    "validation.guidance_scale": {"minimum": 0},
    "validation.fps": {"above": 0},
}
FLAGS = ("trainer.gradient_checkpointing", "trainer.ema", "trainer.tensorboard", "data.flip", "motion.allow_pickle")
CHOICES = {
    "diffusion.timestep_bias": ("none", "later", "earlier"),
    "diffusion.loss_weighting": ("epsilon", "v", "min_snr"),
    "diffusion.prediction": ("epsilon", "v_prediction"),
    "trainer.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "trainer.strategy": ("ddp", "fsdp"),
}


def check_train_config(cfg) -> None:
    """Refuse, in one line naming the key, any value of `cfg` (the composed train config) outside its rule; then
    the target's own rules (`TrainingTarget.check_config`)."""
    from diffusers.optimization import SchedulerType

    from .diffusion import SCHEDULES
    from .targets import get_target

    target = get_target(str(cfg.target.name))
    present = lambda key: OmegaConf.select(cfg, key, default=None) is not None  # noqa: E731
    for key, (minimum, maximum) in INTEGERS.items():
        if present(key):
            value = OmegaConf.select(cfg, key)
            if OmegaConf.is_list(value) and key in PER_CLIP_LISTS and OmegaConf.select(cfg, "data.name") == "toy":
                if not len(value):
                    raise UserInputError(f"{key} is an empty list")
                for index, item in enumerate(value):  # data=toy draws one per clip
                    values.integer(item, f"{key}[{index}]", minimum, maximum)
            else:
                values.integer(value, key, minimum, maximum)
    for key, bounds in NUMBERS.items():
        if present(key):
            values.number(OmegaConf.select(cfg, key), key, **bounds)
    values.seed(cfg.get("seed"), "seed")
    if OmegaConf.select(cfg, "model.seed") is not None:
        values.seed(cfg.model.seed, "model.seed")
    for key in FLAGS:
        value = OmegaConf.select(cfg, key, default=False)
        if not isinstance(value, bool):
            raise UserInputError(f"{key} must be true or false, got {value!r}")
    # piecewise_constant needs step rules, which train.yaml does not offer
    schedulers = (*(s.value for s in SchedulerType if s.value != "piecewise_constant"), "warmup_cosine")
    choices = {**CHOICES, "diffusion.schedule": tuple(SCHEDULES), "trainer.lr_scheduler": schedulers}
    for key, options in choices.items():
        if not present(key):
            continue
        value = OmegaConf.select(cfg, key)
        if value not in options:
            raise UserInputError(f"{key} must be one of {', '.join(options)}; got {value!r}")
    if present("data.size") and int(cfg.data.size) % 8:
        raise UserInputError(f"data.size must be a multiple of 8 (the VAE downsamples 8x), got {cfg.data.size}")
    if present("validation"):
        prompts = OmegaConf.select(cfg, "validation.prompts")
        if not OmegaConf.is_list(prompts) or not all(isinstance(p, str) and p for p in prompts):
            raise UserInputError(f"validation.prompts must be a list of prompts, e.g. validation.prompts='[a dog,a cat]'; got {prompts!r}")
        if int(cfg.validation.every) > 0 and not prompts:
            raise UserInputError("validation.every > 0 needs at least one of validation.prompts")
    target.check_config(cfg)
