"""The one training loop: any target of `training.targets`, on CPU, one GPU, DDP or FSDP, through Hugging Face
Accelerate (as diffusers' own training examples).

What it promises every target:
  * real gradient accumulation (`trainer.grad_accum` micro-batches, gradients synchronised only on the last one),
    clipping, AdamW, diffusers' learning-rate schedules with warm-up (plus `warmup_cosine` and warm restarts,
    `trainer.cycles`), EMA of the trainable weights (exported instead of the live ones);
  * mixed precision by Accelerate (autocast, and a gradient scaler for fp16);
  * `metrics.jsonl` and TensorBoard on rank 0, a progress bar with the loss (mean over ranks) and throughput;
  * atomic checkpoints every `checkpoint_every` steps (`training.checkpoint`), `keep_checkpoints` of them, and
    `trainer.resume`, which repeats the uninterrupted run's losses exactly: every random draw of a micro-batch comes
    from a generator seeded by (seed, step, micro-batch, rank), and the data order from a sampler seeded by
    (seed, epoch) that can start mid-epoch.

Why our own data order instead of `accelerator.prepare(dataloader)` + `skip_first_batches`: skipping re-reads (and
decodes) every skipped video, and the prepared loader's sharding depends on Accelerate's RNG synchronisation; a
seeded DistributedSampler that starts at an offset is exact, cheap and the same under torchrun and
`accelerate launch`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..distributed import Rank, mean_over_ranks, sum_over_ranks
from ..errors import UserInputError
from ..progress import StageReporter
from .checkpoint import check_resume_step, load_checkpoint, save_checkpoint
from .targets import Step, TrainingTarget

log = logging.getLogger(__name__)
STRATEGIES = ("ddp", "fsdp")


class TrainingDiverged(UserInputError):
    """A non-finite loss or weights: the run stops (exit code 2) keeping its last good checkpoint."""


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (seeded shuffle per epoch, one shard per rank) that can start mid-epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def resolve_precision(name: str, device: torch.device) -> str:
    """Accelerate's mixed_precision name: `auto` is bf16 on a CUDA device that has it, else fp16; `no` on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in ("no", "bf16", "fp16"):
        raise UserInputError(f"trainer.mixed_precision must be auto, no, bf16 or fp16; got {name!r}")
    if name != "no" and device.type != "cuda":
        raise UserInputError(f"trainer.mixed_precision={name} needs a CUDA device; use no on the CPU")
    return name


WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def warmup_cosine(warmup: int, steps: int):
    """lr x min(1, (s+1)/warmup) x ½(1 + cos(π s/steps)): warm-up multiplied into a cosine decay (the toy world's
    schedule; diffusers' `cosine` starts its decay after the warm-up instead)."""
    return lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * s / steps))


def make_accelerator(strategy: str, precision: str, device: torch.device, find_unused_parameters: bool = False):
    """Accelerate's Accelerator for this process. Device placement stays ours (`device`: cuda:LOCAL_RANK under
    torchrun, or what the user named), the process group is the one `stylevid.distributed` joined.
    `find_unused_parameters`: DDP's, for a target whose steps may leave trained parameters out of the graph (Gen-1's
    image batches bypass the temporal layers)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    kwargs = {}
    if find_unused_parameters:
        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if strategy == "fsdp":
        if device.type != "cuda":
            raise UserInputError("trainer.strategy=fsdp shards the model over GPUs and needs CUDA; use trainer.strategy=ddp on the CPU")
        from accelerate import FullyShardedDataParallelPlugin

        # use_orig_params: the frozen and trainable parameters of one module share FSDP's flat buffers
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(use_orig_params=True, sync_module_states=True)
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu", device_placement=False, **kwargs)


class Trainer:
    """Runs one target to `trainer.max_steps`; rank 0 alone writes under `run_dir` (None on other ranks)."""

    def __init__(self, cfg, target_cls: type[TrainingTarget], run_dir: Path | None, rank: Rank, device: torch.device,
                 reporter: StageReporter | None = None):
        trainer = cfg.trainer
        self.cfg, self.run_dir, self.ctx, self.device = cfg, run_dir, rank, device
        self.reporter = reporter or StageReporter()
        self.batch_size, self.grad_accum = int(trainer.batch_size), int(trainer.grad_accum)
        self.max_steps, self.seed = int(trainer.max_steps), int(cfg.seed)
        self.cycles = int(trainer.get("cycles", 1))
        self.precision = resolve_precision(str(trainer.mixed_precision), device)
        self.accelerator = make_accelerator(str(trainer.get("strategy", "ddp")), self.precision, device,
                                            target_cls.ddp_find_unused_parameters)
        self.losses: list[float] = []
        self.skipped_total = 0
        self.last_grad_norm = float("nan")

        torch.manual_seed(self.seed)
        self.target = target_cls(cfg, device, WEIGHT_DTYPES[self.precision], rank)
        if trainer.gradient_checkpointing:
            self.target.enable_gradient_checkpointing()
        self.trainable = self.target.trainable_parameters()
        if not self.trainable:
            raise UserInputError(f"target {target_cls.name} has no trainable parameters with these settings")
        self.dataset = self.target.dataset()
        self.sampler = None
        if self.dataset is not None:
            self.sampler = ResumableDistributedSampler(
                self.dataset, num_replicas=rank.world_size, rank=rank.rank, shuffle=True, seed=self.seed, drop_last=True
            )
            self.steps_per_epoch = self.sampler.num_samples // self.batch_size // self.grad_accum
            if self.steps_per_epoch < 1:
                raise UserInputError(
                    f"{len(self.dataset)} training items are too few for batch_size={self.batch_size} x "
                    f"grad_accum={self.grad_accum} x {rank.world_size} rank(s)"
                )
        self.model = self.accelerator.prepare_model(self.target.model, device_placement=False)
        self.new_optimizer()
        self.ema = None
        if trainer.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable, decay=float(trainer.ema_decay))
        self.global_step = 0

    # --- optimizer and schedule ------------------------------------------------------------------------------

    @property
    def steps_per_cycle(self) -> int:
        return math.ceil(self.max_steps / self.cycles)

    def new_optimizer(self) -> None:
        """A fresh AdamW and schedule: at the start, and at each warm restart (`trainer.cycles` > 1)."""
        from diffusers.optimization import get_scheduler

        trainer = self.cfg.trainer
        optimizer = torch.optim.AdamW(
            self.trainable, lr=float(trainer.lr), betas=(float(trainer.adam_beta1), float(trainer.adam_beta2)),
            weight_decay=float(trainer.weight_decay), eps=float(trainer.adam_epsilon),
        )
        self.optimizer = self.accelerator.prepare_optimizer(optimizer, device_placement=False)
        name, warmup = str(trainer.lr_scheduler), int(trainer.warmup_steps)
        if name == "warmup_cosine":
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, warmup_cosine(warmup, self.steps_per_cycle))
        else:
            self.lr_scheduler = get_scheduler(name, self.optimizer.optimizer, num_warmup_steps=warmup,
                                              num_training_steps=self.steps_per_cycle)

    # --- one optimizer step ----------------------------------------------------------------------------------

    def optimizer_step(self, batches) -> tuple[float, int]:
        if self.global_step and self.global_step % self.steps_per_cycle == 0:
            self.new_optimizer()
        total, skipped = 0.0, 0
        for micro in range(self.grad_accum):
            batch = next(batches)
            if isinstance(batch, dict) and "skipped" in batch:
                skipped += int(batch["skipped"])
            at = Step(self.global_step, micro, self.ctx.rank, self.ctx.world_size,
                      step_generator(self.seed, self.global_step, micro, self.ctx.rank))
            # Real accumulation under DDP: gradients are all-reduced only on the last micro-batch.
            last = micro == self.grad_accum - 1
            with nullcontext() if last else self.accelerator.no_sync(self.model):
                loss = self.target.loss(self.model, batch, at)
                self.accelerator.backward(loss / self.grad_accum)
            total += float(loss.detach()) / self.grad_accum
        max_norm = float(self.cfg.trainer.max_grad_norm)
        grad_norm = self.accelerator.clip_grad_norm_(self.trainable, max_norm if max_norm > 0 else float("inf"))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trainable)
        self.global_step += 1
        self.last_grad_norm = float(grad_norm)
        return total, skipped

    def batches(self):
        """Micro-batches from the current position on: the target's own (synthetic data) or the dataset's, epoch
        after epoch, whole optimizer steps only (every epoch starts at a step boundary: what a resume relies on)."""
        if self.dataset is None:
            for step in itertools.count(self.global_step):
                for micro in range(self.grad_accum):
                    yield self.target.batch(Step(step, micro, self.ctx.rank, self.ctx.world_size,
                                                 step_generator(self.seed, step, micro, self.ctx.rank)))
        loader_kwargs = {"batch_size": self.batch_size, "num_workers": int(self.cfg.data.get("num_workers", 0)),
                         "drop_last": True, "collate_fn": self.target.collate, "persistent_workers": False}
        epoch, within = divmod(self.global_step, self.steps_per_epoch)
        while True:
            self.sampler.set_position(epoch, within * self.grad_accum * self.batch_size)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, sampler=self.sampler, **loader_kwargs)
            yield from itertools.islice(loader, (self.steps_per_epoch - within) * self.grad_accum)
            epoch, within = epoch + 1, 0

    # --- state ---------------------------------------------------------------------------------------------

    @contextmanager
    def ema_weights(self):
        """The EMA weights in the trainable parameters while inside (nothing changes without EMA), then the live ones."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.trainable)
        self.ema.copy_to(self.trainable)
        try:
            yield
        finally:
            self.ema.restore(self.trainable)

    def weights(self) -> dict[str, torch.Tensor]:
        """The full state dict of the target's model, gathered from every rank under FSDP (a collective)."""
        return self.accelerator.get_state_dict(self.model)

    def state(self) -> dict:
        return {
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "world_size": self.ctx.world_size,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "target": self.target.name,
            "record": self.target.record(),  # what the weights are for: a resume elsewhere is refused
        }

    def resume(self, path: str, checkpoint: tuple[Path, dict] | None = None) -> None:
        """Continue from checkpoint `path` (its `load_checkpoint` result when already read) exactly where it stopped."""
        weights_dir, state = checkpoint or load_checkpoint(path)
        check_resume_step(path, state, self.max_steps)
        if state.get("target", self.target.name) != self.target.name:
            raise UserInputError(f"trainer.resume={path} is a checkpoint of target {state['target']}, not {self.target.name}")
        self.target.check_resumable(path, state.get("record") or {}, weights_dir)
        if (state["world_size"], state["batch_size"], state["grad_accum"]) != (self.ctx.world_size, self.batch_size, self.grad_accum):
            log.warning("resuming with a different world size / batch size / accumulation: the data order will differ")
        self.target.load_weights(weights_dir)
        self.global_step = int(state["global_step"])
        if self.global_step % self.steps_per_cycle == 0 and self.global_step:
            self.new_optimizer()  # the checkpoint closed a cycle: the next step starts a fresh one anyway
        else:
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])

    # --- the loop ------------------------------------------------------------------------------------------

    def train(self) -> dict:
        trainer = self.cfg.trainer
        writer = self.open_tensorboard() if self.ctx.is_main else None
        metrics_file = (self.run_dir / "metrics.jsonl").open("a") if self.ctx.is_main and self.run_dir else None
        batches = self.batches()
        self.model.train()
        started = time.perf_counter()
        steps_done, step_time = 0, 0.0  # throughput over optimizer steps only (not checkpoints or validation)
        items_per_step = self.batch_size * self.grad_accum * self.ctx.world_size
        every, validation_every = int(trainer.checkpoint_every), int(self.cfg.get("validation", {}).get("every", 0))
        try:
            with self.reporter.stage("training", total=self.max_steps - self.global_step):
                while self.global_step < self.max_steps:
                    step_started = time.perf_counter()
                    loss, skipped = self.optimizer_step(batches)
                    loss = mean_over_ranks(loss, self.ctx)
                    skipped = sum_over_ranks(skipped, self.ctx)
                    self.losses.append(loss)
                    self.skipped_total += skipped
                    steps_done, step_time = steps_done + 1, step_time + time.perf_counter() - step_started
                    if self.ctx.is_main:  # one bar for the run: the loss is already averaged over ranks
                        steps_per_s = steps_done / step_time
                        self.reporter.status({"loss": loss, "steps/s": steps_per_s, "items/s": steps_per_s * items_per_step})
                    self.reporter.advance()
                    if not math.isfinite(loss):
                        self.diverged(f"the loss is {loss} at step {self.global_step}")
                    record = {"step": self.global_step, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
                              "grad_norm": self.last_grad_norm, "skipped_items": skipped,
                              "skipped_items_total": self.skipped_total, "step_s": time.perf_counter() - step_started}
                    if metrics_file and (self.global_step % int(trainer.log_every) == 0 or self.global_step == self.max_steps):
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                        if writer is not None:
                            for key in ("loss", "lr", "grad_norm", "skipped_items_total"):
                                writer.add_scalar(f"train/{key}", record[key], self.global_step)
                    if skipped:
                        log.info("step %d: skipped %d unreadable items", self.global_step, skipped)
                    if every > 0 and self.global_step % every == 0:
                        # A non-finite checkpoint would replace the last good one. Checked on every rank (they hold
                        # the same weights), so that all stop together instead of waiting for rank 0 in a collective.
                        self.check_finite_weights()
                        weights = self.weights()
                        if self.ctx.is_main and self.run_dir:
                            save_checkpoint(self.run_dir / "checkpoints", self.global_step,
                                            lambda directory: self.target.save_weights(directory, weights), self.state(),
                                            keep=int(trainer.keep_checkpoints))
                    if self.ctx.is_main and self.run_dir and validation_every > 0 and self.global_step % validation_every == 0:
                        self.validate()
        finally:
            if metrics_file:
                metrics_file.close()
            if writer is not None:
                writer.close()
        return {"steps": self.global_step, "final_loss": self.losses[-1] if self.losses else None,
                "skipped_items": self.skipped_total, "train_s": time.perf_counter() - started}

    def validate(self) -> None:
        self.model.eval()
        try:
            with torch.no_grad(), self.ema_weights(), self.accelerator.autocast():
                self.target.validate(self.run_dir, self.global_step)
        finally:
            self.model.train()

    def diverged(self, what: str) -> None:
        """Stop on one line naming the step and the last good checkpoint; nothing non-finite is saved, and the run
        gets no result.json, so it does not look finished."""
        last = self.run_dir / "checkpoints" / "last" if self.run_dir else None
        lower = f"a trainer.lr below {float(self.cfg.trainer.lr):g}"
        kept = (f"the last good checkpoint is {last.resolve()} (resume it with trainer.resume= and {lower})"
                if last is not None and last.exists() else f"no checkpoint was written before it; try {lower}")
        raise TrainingDiverged(f"training diverged: {what}; {kept}")

    def check_finite_weights(self) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.trainable):
            self.diverged(f"the {self.target.name} weights are not finite after step {self.global_step}")

    def open_tensorboard(self):
        if not self.cfg.trainer.tensorboard or self.run_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional `tensorboard` package is absent; metrics.jsonl is always written
            log.info("tensorboard is not installed; logging to metrics.jsonl only")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def export(self) -> dict:
        """The finished run's weights, EMA ones when EMA is on (rank 0; the gathering is a collective)."""
        self.check_finite_weights()
        with self.ema_weights():
            weights = self.weights()
        files = self.target.export(self.run_dir, weights) if self.ctx.is_main else {}
        return {**files, "ema": self.ema is not None}
