"""The keys every generation method reads from the composed config, checked once (one-line errors, exit 2)."""

from __future__ import annotations

from .. import values
from ..errors import UserInputError

# Frame sides above this are refused before anything loads: at 4096 px an SD UNet's first self-attention already
# spans 262,144 tokens per frame, and larger sizes end in an allocation failure minutes later.
MAX_SIDE = 4096
# Stable Diffusion-class schedulers are trained on 1000 timesteps; sampling cannot take more steps than that
# (the model's own scheduler is checked again once it is loaded: `check_steps_fit`).
MAX_STEPS = 1000


def common_settings(cfg) -> dict:
    """prompt, negative prompt, frames, size, steps, guidance scale and seed as the methods' settings take them."""
    height = values.integer(cfg.height, "height", 8, MAX_SIDE)
    width = values.integer(cfg.width, "width", 8, MAX_SIDE)
    if height % 8 or width % 8:
        raise UserInputError(f"height and width must be multiples of 8, got {height}x{width}")
    return dict(
        prompt=str(cfg.prompt),
        negative_prompt=str(cfg.get("negative_prompt") or ""),
        frames=values.integer(cfg.frames, "frames", 1),
        height=height,
        width=width,
        steps=values.integer(cfg.steps, "steps", 1, MAX_STEPS),
        guidance_scale=values.number(cfg.guidance_scale, "guidance_scale", 0),
        seed=values.seed(cfg.seed),
    )


def check_steps_fit(steps: int, scheduler) -> None:
    trained = int(scheduler.config.num_train_timesteps)
    if steps > trained:
        raise UserInputError(f"steps={steps} is more than the model's scheduler was trained on ({trained} timesteps)")
