"""Gradient checkpointing for the inflated video UNet that also reaches the temporal transformers.

What diffusers 0.42.1's `UNetMotionModel.enable_gradient_checkpointing()` covers: it sets the
`gradient_checkpointing` flag on every submodule that has one, which is
  * the down/up blocks (`DownBlockMotion`, `CrossAttnDownBlockMotion`, `UpBlockMotion`,
    `CrossAttnUpBlockMotion`): their forward checkpoints each *resnet* and nothing else;
  * the mid block (`UNetMidBlockCrossAttnMotion`): its motion modules and `resnets[1:]` (not `resnets[0]`);
  * each spatial `Transformer2DModel`: its `BasicTransformerBlock`s one by one (not its group norm,
    `proj_in`, `proj_out`, whose activations at the 32x32 level are 3 of the 4 tensors it keeps).
What it leaves out: the temporal transformers (`AnimateDiffTransformer3D`, the motion modules) of every
down and up block, i.e. the very modules that are trained. Each keeps its whole graph for backward: group
norm, two temporal self-attentions, a GEGLU feed-forward whose hidden layer is 8x the channels, about 33
full-resolution tensors (134 MiB per module at the 32x32 level of a 16-frame 256-px clip, 64 channels).
They held about 1.3 of the 1.5 GiB still saved after diffusers' checkpointing in `benchmark_train.py`'s
`small` preset, which is why diffusers' own saved only ~25 % of the step's peak.

`enable_gradient_checkpointing(unet)` here:
  * reuses diffusers' flags for what they do well (resnets of the down/up blocks, the mid block's motion
    modules and resnets), passing a checkpoint function that is non-reentrant and train-mode only;
  * wraps, with `torch.utils.checkpoint.checkpoint(use_reentrant=False)`, every module diffusers misses:
    each down/up block's motion modules, each spatial transformer *as a whole* (its own per-block flag is
    then turned off, so nothing is checkpointed twice), the mid block's first resnet, and the
    down/up samplers. Between segments only the segment inputs stay alive.
The wrap is an instance-level `forward` (a bound method, so `copy.deepcopy` of the model stays correct);
`disable_gradient_checkpointing(unet)` removes it and diffusers' flags; enabling twice changes nothing.

Checkpointing happens only when the module is in train mode and grad is enabled; in eval mode (or under
`torch.no_grad()`) the modules run as before, with no extra forward.

Frozen image weights: the first segments of the UNet (conv_in, the first resnet and spatial transformer)
have inputs and weights that do not require grad, so autograd records nothing for them; later image
segments have frozen weights but inputs that do (they come from a motion module), and their backward is
needed for the gradients of the motion modules upstream. Non-reentrant checkpointing recomputes a
segment whenever any of its saved tensors is needed, regardless of whether its inputs require grad,
so both cases are right (the reentrant variant would silently drop gradients of segments whose tensor
inputs do not require grad).
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

_MARK = "_stylevid_checkpointed"


def checkpoint_if_training(function: Callable, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, through non-reentrant activation checkpointing if `module` trains with grad on."""
    if module.training and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    return function(*args, **kwargs)


def _diffusers_checkpointing_func(module: torch.nn.Module, *args: Any) -> Any:
    """What diffusers' blocks call as `self._gradient_checkpointing_func(module, *args)`, made train-mode only."""
    return checkpoint_if_training(module.__call__, module, *args)


def _checkpointed_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    # The class's own forward, not self.__call__: the module's hooks have run once already, outside.
    return checkpoint_if_training(type(self).forward.__get__(self), self, *args, **kwargs)


def wrap(module: torch.nn.Module) -> bool:
    """Checkpoint `module`'s forward in train mode; False if it was already wrapped."""
    if getattr(module, _MARK, False):
        return False
    module.forward = types.MethodType(_checkpointed_forward, module)
    setattr(module, _MARK, True)
    return True


def unwrap(module: torch.nn.Module) -> bool:
    if not getattr(module, _MARK, False):
        return False
    del module.forward
    delattr(module, _MARK)
    return True


def modules_to_wrap(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) that diffusers' flags leave out and `enable_gradient_checkpointing` wraps itself."""
    chosen = []
    for kind in ("down_blocks", "up_blocks"):
        for index, block in enumerate(getattr(unet, kind, ())):
            for part in ("motion_modules", "attentions", "downsamplers", "upsamplers"):
                for number, module in enumerate(getattr(block, part, None) or ()):
                    chosen.append((f"{kind}.{index}.{part}.{number}", module))
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for number, module in enumerate(getattr(mid, "attentions", None) or ()):
            chosen.append((f"mid_block.attentions.{number}", module))
        if getattr(mid, "resnets", None):
            chosen.append(("mid_block.resnets.0", mid.resnets[0]))  # diffusers checkpoints resnets[1:] only
        if not hasattr(mid, "gradient_checkpointing"):  # a mid block without diffusers' flag: do it all here
            chosen += [(f"mid_block.motion_modules.{n}", m) for n, m in enumerate(getattr(mid, "motion_modules", None) or ())]
            chosen += [(f"mid_block.resnets.{n}", m) for n, m in enumerate(mid.resnets[1:], 1)]
    return chosen


def enable_gradient_checkpointing(unet: torch.nn.Module) -> list[str]:
    """Checkpoint the resnets, the spatial transformers and the temporal transformers (motion modules) of a
    diffusers `UNetMotionModel`, in train mode only; returns the names of the modules wrapped here (the rest is
    diffusers' flags). Idempotent; undo with `disable_gradient_checkpointing`.
    """
    # diffusers' mechanism: flags on the down/up/mid blocks and on each Transformer2DModel, with our function.
    unet.enable_gradient_checkpointing(gradient_checkpointing_func=_diffusers_checkpointing_func)
    names = []
    for name, module in modules_to_wrap(unet):
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = False  # a Transformer2DModel: checkpointed whole, not block by block
        wrap(module)
        names.append(name)
    return names


def disable_gradient_checkpointing(unet: torch.nn.Module) -> None:
    """Undo `enable_gradient_checkpointing` (and diffusers' own): every module runs its plain forward again."""
    for module in unet.modules():
        unwrap(module)
    unet.disable_gradient_checkpointing()


def checkpointed(unet: torch.nn.Module) -> list[str]:
    """Names of the modules wrapped by `enable_gradient_checkpointing` (for logs and tests)."""
    return [name for name, module in unet.named_modules() if getattr(module, _MARK, False)]
