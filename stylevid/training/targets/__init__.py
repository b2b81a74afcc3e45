"""Trainable things: one file per target here, one config in `conf/target/`; the loop in `training.loop` runs any.

A target says what it builds (frozen parts and the module that trains), which parameters train, where its batches
come from, its loss, how its weights are saved (in the ecosystem's own format) for checkpoints and for export, and
what validation writes. Everything else (optimizer, schedules, accumulation, mixed precision, DDP/FSDP through
Accelerate, EMA, clipping, metrics, progress, atomic checkpoints, exact resume) is the loop's, the same for all.

A target registers itself with `@register` in its own module; modules in this package and the `stylevid.targets`
entry-point group are discovered, so `stylevid train --help` and `stylevid train <name>` never list names by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import UserInputError

_TARGETS: dict[str, type["TrainingTarget"]] = {}
_DISCOVERED = False


@dataclass(frozen=True)
class Step:
    """Where a micro-batch sits in the run: what a target's loss and batches are a function of (exact resume)."""

    step: int  # optimizer steps done before this one (0 for the first)
    micro: int  # micro-batch within the optimizer step (gradient accumulation)
    rank: int
    world_size: int
    generator: torch.Generator  # CPU generator seeded by (seed, step, micro, rank): every random draw of the loss


class TrainingTarget:
    """One trainable thing. Subclasses set `name`, `description`, `example` and implement the methods below.

    Constructed by the loop as `Target(cfg, device, weight_dtype, rank)` once the config has been checked; the
    constructor builds everything (frozen parts on `device` at `weight_dtype`, the trainable module in float32).
    """

    name: str = ""
    description: str = ""
    example: str = ""
    # True when a step may leave trained parameters out of the graph (DDP then has to look for them)
    ddp_find_unused_parameters: bool = False
    def __init__(self, cfg, device: torch.device, weight_dtype: torch.dtype, rank):
        self.cfg, self.device, self.weight_dtype, self.rank = cfg, device, weight_dtype, rank

    # --- before anything loads ---------------------------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse in one line (UserInputError naming the key) any target-specific value outside its rule."""

    # --- what trains -------------------------------------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The module the loop prepares (DDP/FSDP) and calls through `loss`; it holds every trainable parameter."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Called when trainer.gradient_checkpointing is on."""

    # --- data ----------------------------------------------------------------------------------------------------

    def dataset(self):
        """A map-style torch Dataset (sharded per rank, shuffled per epoch by the loop), or None when the target
        draws its own batches with `batch` (synthetic data: a fresh batch per step, no epochs)."""
        return None

    def collate(self, items: list):
        return torch.utils.data.default_collate(items)

    def batch(self, at: Step):
        """The micro-batch at `at` when `dataset()` is None: a function of (seed, step, micro, rank) only."""
        raise NotImplementedError

    # --- the objective -----------------------------------------------------------------------------------------

    def loss(self, model: torch.nn.Module, batch, at: Step) -> torch.Tensor:
        """The scalar loss of one micro-batch; `model` is the prepared (possibly wrapped) `self.model`."""
        raise NotImplementedError

    # --- weights -------------------------------------------------------------------------------------------------

    def save_weights(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """Write the trainable weights (`state_dict` of `self.model`, gathered when sharded) into `directory` in
        the ecosystem's format; what `load_weights` reads back on resume."""
        raise NotImplementedError

    def load_weights(self, directory: Path) -> None:
        """Load what `save_weights` wrote into `self.model` (resume)."""
        raise NotImplementedError

    def export(self, run_dir: Path, state_dict: dict[str, torch.Tensor]) -> dict:
        """The finished run's weights (EMA ones when EMA is on) under `run_dir`; returns {what: relative path}."""
        raise NotImplementedError

    def validate(self, run_dir: Path, step: int) -> None:
        """Validation outputs at `step` (rank 0, model in eval mode, EMA weights in place when on)."""

    # --- records ---------------------------------------------------------------------------------------------------

    def record(self) -> dict:
        """What the weights depend on (base model, geometry, settings), stored in every checkpoint; a resume whose
        record differs is refused by `check_resumable`."""
        return {}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        """One line when checkpoint `path` was trained for other settings than this run's (`record`)."""
        here = self.record()
        for key, value in recorded.items():
            if here.get(key) != value:
                raise UserInputError(
                    f"trainer.resume={path} was trained with {key}={value}, this run has {here.get(key)}; "
                    "pass the checkpoint's settings to resume it"
                )

    def summary(self) -> dict:
        """Extra fields for the run's result.json (e.g. how many videos the data held)."""
        return {}


def register(cls: type[TrainingTarget]) -> type[TrainingTarget]:
    if not cls.name or not cls.description:
        raise TypeError(f"{cls.__name__} needs a name and a one-line description")
    _TARGETS[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__name__}.{module.name}")
    from importlib.metadata import entry_points

    for entry in entry_points(group="stylevid.targets"):
        entry.load()


def registered_targets() -> dict[str, type[TrainingTarget]]:
    _discover()
    return dict(sorted(_TARGETS.items()))


def get_target(name: str) -> type[TrainingTarget]:
    targets = registered_targets()
    if name not in targets:
        raise UserInputError(f"unknown training target {name!r}; choose one of {', '.join(targets)}")
    return targets[name]
