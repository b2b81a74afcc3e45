"""Training AnimateDiff's motion module (paper Section 3.3.3, setup of Section 4.1.1).

Video clips z^0_{1:N} are encoded frame by frame by the frozen VAE, noised by the forward process
z^t = sqrt(ᾱ_t) z^0 + sqrt(1 - ᾱ_t) ε, and the UNet inflated with the motion module predicts ε from z^t,
the caption embedding (replaced by the empty caption with probability `text_dropout`) and t:
L = E ||ε - ε_θ(z^t, c, t)||² (optionally weighted per timestep: `loss_weights`). The VAE, text encoder and image
UNet stay frozen; only motion parameters train.

Reproducibility: every random draw of an optimizer step (VAE posterior sample, ε, t, caption dropout)
comes from a CPU generator seeded by (seed, step, micro-batch, rank), and the data order from a sampler
seeded by (seed, epoch) that can start mid-epoch, so a resumed run repeats the uninterrupted run's losses.
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
import torch.nn.functional as F
from diffusers import DDPMScheduler, MotionAdapter
from torch.utils.data import DataLoader, DistributedSampler

from ..data.videos import ClipSpec, VideoClipDataset, collate_clips, folder_records, webvid_records
from ..errors import UserInputError
from ..models.loading import load_pipeline
from ..models.motion_module import (
    adapter_from_unet,
    check_fits,
    export_original,
    inflate,
    load_motion_adapter,
    motion_adapter_for_unet,
    motion_parameters,
    save_motion_adapter,
    zero_init_output_projections,
)
from ..progress import StageReporter
from .checkpoint import (
    MOTION_ESSENTIALS,
    UNET_ESSENTIALS,
    base_model_record,
    check_resume_step,
    describe_model,
    load_checkpoint,
    motion_record,
    save_checkpoint,
)
from ..distributed import Rank, mean_over_ranks, sum_over_ranks

log = logging.getLogger(__name__)

# Paper Table 2. B (linear 0.00085-0.012) is AnimateDiff's choice; A is SD's own pre-training schedule.
SCHEDULES = {
    "A": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "B": {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012},
    "C": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
}


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


def noise_schedule(name: str) -> DDPMScheduler:
    if name not in SCHEDULES:
        raise UserInputError(f"schedule must be one of {', '.join(SCHEDULES)} (paper Table 2), got {name!r}")
    return DDPMScheduler(num_train_timesteps=1000, clip_sample=False, **SCHEDULES[name])


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def timestep_weights(strategy: str, portion: float, multiplier: float, num_timesteps: int = 1000) -> torch.Tensor:
    """Sampling weights over the training timesteps: uniform, or `multiplier` times heavier on the noisiest
    (`later`) or cleanest (`earlier`) `portion` of them (the strategy of diffusers' SDXL training example).

    Why offer it: under the ε-loss an error in the clean video at t=900 weighs ᾱ/(1-ᾱ) = 0.005 (schedule B), so the
    noisiest steps, where the layout of the whole clip is decided, train least; drawing them more often trains
    them more. On the toy models (`scripts/build_toy_world.py`) it did not teach the motion module the prompt's
    direction: 1,000 fine-tuning steps with `later` (portion 0.5 x4 or 0.2 x20) left the loss gap between the true
    and the direction-swapped caption at zero, as without it.
    """
    if strategy not in ("none", "later", "earlier"):
        raise UserInputError(f"trainer.timestep_bias must be none, later or earlier; got {strategy!r}")
    if not 0 < portion <= 1 or multiplier <= 0:
        raise UserInputError(f"trainer.timestep_bias_portion must be in (0, 1] and the multiplier > 0; got {portion}, {multiplier}")
    weights = torch.ones(num_timesteps)
    favoured = max(1, round(portion * num_timesteps))
    if strategy == "later":
        weights[-favoured:] *= multiplier
    elif strategy == "earlier":
        weights[:favoured] *= multiplier
    return weights / weights.sum()


LOSS_WEIGHTINGS = ("epsilon", "v", "min_snr")


def loss_weights(weighting: str, scheduler: DDPMScheduler, snr_gamma: float = 5.0) -> torch.Tensor | None:
    """The ε-MSE's weight at each training timestep, indexed by t (None: plain ε-loss, the paper's).

    `v`: 1/ᾱ_t = 1 + 1/SNR, which makes the ε-MSE equal to the v-prediction MSE (Salimans & Ho, 2022) and keeps a
    clean-video error at t=900 from weighing only ᾱ/(1-ᾱ) = 0.005 (schedule B): the noisiest steps, where a clip's
    layout is decided, train as much as the rest. `min_snr`: min(SNR, γ)/SNR (Hang et al., 2023; diffusers'
    `--snr_gamma`), which lowers the nearly clean steps instead. On the toy world (README) `v` taught a module
    fine-tuned on videos that all move right to draw rightward motion from pure noise, which the ε-loss did not.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise UserInputError(f"trainer.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {weighting!r}")
    if weighting == "epsilon":
        return None
    if weighting == "min_snr" and snr_gamma <= 0:
        raise UserInputError(f"trainer.snr_gamma must be > 0; got {snr_gamma}")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, torch.arange(scheduler.config.num_train_timesteps))
    if weighting == "v":
        return 1 + 1 / snr
    return snr.clamp(max=snr_gamma) / snr


def build_dataset(cfg) -> VideoClipDataset:
    data = cfg.data
    spec = ClipSpec(frames=int(data.frames), stride=int(data.stride), size=int(data.size), flip=bool(data.flip))
    if spec.size % 8:
        raise UserInputError(f"data.size must be a multiple of 8, got {spec.size}")
    if data.name == "webvid":
        records = webvid_records(data.csv, data.video_folder)
    elif data.name == "folder":
        records = folder_records(data.video_folder, data.get("captions"))
    else:
        raise UserInputError(f"unknown data {data.name!r}; choose webvid or folder")
    dataset = VideoClipDataset(records, spec, seed=int(cfg.seed), max_skips=int(data.get("max_skips", 16)))
    if dataset.first_readable() is None:
        raise UserInputError(
            f"none of the {len(records)} videos for data.video_folder={data.video_folder} can be read as a clip of "
            f"{spec.frames} frames every {spec.stride} ({spec.span} source frames): all unreadable or too short"
        )
    return dataset


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full float32."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in choices:
        raise UserInputError(f"trainer.mixed_precision must be auto, no, bf16 or fp16; got {name!r}")
    if choices[name] is not None and device.type != "cuda":
        raise UserInputError(f"trainer.mixed_precision={name} needs a CUDA device; use no on the CPU")
    return choices[name]


class TrainingDiverged(UserInputError):
    """A non-finite loss or weights: the run stops (exit code 2) keeping its last good checkpoint."""


class MotionTrainer:
    def __init__(self, cfg, run_dir: Path | None, ctx: Rank, device: torch.device, reporter: StageReporter | None = None):
        from .settings import check_train_config

        check_train_config(cfg)  # every key, before anything loads
        self.cfg, self.run_dir, self.ctx, self.device = cfg, run_dir, ctx, device
        self.reporter = reporter or StageReporter()
        trainer = cfg.trainer
        self.batch_size, self.grad_accum = int(trainer.batch_size), int(trainer.grad_accum)
        self.max_steps, self.seed = int(trainer.max_steps), int(cfg.seed)
        self.text_dropout = float(cfg.text_dropout)
        self.autocast_dtype = resolve_precision(str(trainer.mixed_precision), device)
        self.noise_scheduler = noise_schedule(str(cfg.schedule))  # checked before anything slow is loaded
        weights = timestep_weights(
            str(trainer.timestep_bias), float(trainer.timestep_bias_portion), float(trainer.timestep_bias_multiplier),
            self.noise_scheduler.config.num_train_timesteps,
        )
        # None when uniform: then timesteps are drawn as before the option existed, so old seeds and resumes repeat.
        self.timestep_weights = None if bool((weights == weights[0]).all()) else weights
        self.loss_weight_per_timestep = loss_weights(str(trainer.loss_weighting), self.noise_scheduler, float(trainer.snr_gamma))
        self.losses: list[float] = []
        self.skipped_total = 0

        torch.manual_seed(self.seed)
        self.dataset = build_dataset(cfg)
        self.sampler = ResumableDistributedSampler(
            self.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=self.seed, drop_last=True
        )
        micro_per_epoch = self.sampler.num_samples // self.batch_size
        self.steps_per_epoch = micro_per_epoch // self.grad_accum
        if self.steps_per_epoch < 1:
            raise UserInputError(
                f"{len(self.dataset)} videos are too few for batch_size={self.batch_size} x grad_accum={self.grad_accum} "
                f"x {ctx.world_size} rank(s)"
            )

        motion = cfg.motion
        if motion.get("init_path"):  # before the base model: a bad file is refused without waiting for it
            self.adapter_template = load_motion_adapter(
                str(motion.init_path), allow_pickle=bool(motion.get("allow_pickle", False)),
                num_attention_heads=int(motion.num_attention_heads), key="motion.init_path",
            )
        # Frozen parts (Section 3.3.3): VAE, text encoder, image UNet.
        pipe = load_pipeline(cfg.model, torch.float32)
        self.pipe = pipe
        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.base_model = base_model_record(cfg.model, pipe.unet)
        if not motion.get("init_path"):
            self.adapter_template = motion_adapter_for_unet(
                pipe.unet,
                num_attention_heads=int(motion.num_attention_heads),
                max_seq_length=int(motion.max_seq_length),
                transformer_layers_per_block=int(motion.transformer_layers_per_block),
                seed=self.seed,
            )
        if self.dataset.spec.frames > self.adapter_template.config.motion_max_seq_length:
            raise UserInputError(f"data.frames={self.dataset.spec.frames} exceeds motion.max_seq_length")
        self.unet = inflate(pipe.unet, self.adapter_template)
        self.unet.freeze_unet2d_params()
        if trainer.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
        weight_dtype = self.autocast_dtype or torch.float32
        self.vae.to(device, weight_dtype)
        self.text_encoder.to(device, weight_dtype)
        self.unet.to(device)
        for _, parameter in self.unet.named_parameters():
            if not parameter.requires_grad:  # frozen image weights at the low precision, motion weights stay fp32
                parameter.data = parameter.data.to(weight_dtype)
        self.trainable = [p for _, p in motion_parameters(self.unet)]
        self.model = self.unet
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.unet, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )

        from diffusers.optimization import get_scheduler

        self.optimizer = torch.optim.AdamW(
            self.trainable,
            lr=float(trainer.lr),
            betas=(float(trainer.adam_beta1), float(trainer.adam_beta2)),
            weight_decay=float(trainer.weight_decay),
            eps=float(trainer.adam_epsilon),
        )
        self.lr_scheduler = get_scheduler(
            str(trainer.lr_scheduler), self.optimizer, num_warmup_steps=int(trainer.warmup_steps), num_training_steps=self.max_steps
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.ema = None
        if trainer.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable, decay=float(trainer.ema_decay))
        self.global_step = 0
        self.empty_ids = self.tokenize([""])

    # --- one optimizer step ----------------------------------------------------------------------------------

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(
            captions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids

    def draw_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if self.timestep_weights is None:
            return torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        return torch.multinomial(self.timestep_weights, batch_size, replacement=True, generator=generator)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        pixels = batch["pixel_values"].to(self.device)  # (B, F, 3, H, W)
        batch_size, frames = pixels.shape[:2]
        with torch.no_grad():
            posterior = self.vae.encode(pixels.flatten(0, 1).to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float() * self.vae.config.scaling_factor
            latents = latents.unflatten(0, (batch_size, frames)).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
            noise = torch.randn(latents.shape, generator=generator).to(self.device)
            timesteps = self.draw_timesteps(batch_size, generator)
            dropped = torch.rand(batch_size, generator=generator) < self.text_dropout
            captions = ["" if drop else caption for drop, caption in zip(dropped.tolist(), batch["captions"])]
            text = self.text_encoder(self.tokenize(captions).to(self.device))[0]
            text = text.repeat_interleave(frames, dim=0)  # one caption embedding per frame (image layers)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps.to(self.device))
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        )
        with autocast:
            prediction = self.model(noisy, timesteps.to(self.device), encoder_hidden_states=text).sample
        if self.loss_weight_per_timestep is None:
            return F.mse_loss(prediction.float(), noise.float())  # ε-prediction, L2 (Section 3.3.3)
        per_sample = ((prediction.float() - noise.float()) ** 2).flatten(1).mean(1)
        return (self.loss_weight_per_timestep[timesteps].to(per_sample.device) * per_sample).mean()

    def optimizer_step(self, batches) -> tuple[float, int]:
        total, skipped = 0.0, 0
        for micro in range(self.grad_accum):
            batch = next(batches)
            skipped += int(batch["skipped"])
            generator = step_generator(self.seed, self.global_step, micro, self.ctx.rank)
            # Real accumulation under DDP: gradients are all-reduced only on the last micro-batch.
            sync = nullcontext() if (not self.ctx.enabled or micro == self.grad_accum - 1) else self.model.no_sync()
            with sync:
                loss = self.loss(batch, generator)
                self.scaler.scale(loss / self.grad_accum).backward()
            total += float(loss.detach()) / self.grad_accum
        self.scaler.unscale_(self.optimizer)
        max_norm = float(self.cfg.trainer.max_grad_norm)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm if max_norm > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trainable)
        self.global_step += 1
        self.last_grad_norm = float(grad_norm)
        return total, skipped

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

    def current_adapter(self, use_ema: bool = False) -> MotionAdapter:
        with self.ema_weights() if use_ema else nullcontext():
            return adapter_from_unet(self.unet, self.adapter_template)

    def state(self) -> dict:
        return {
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "world_size": self.ctx.world_size,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            # what the weights are for, so that a resume on another base or other motion settings is refused
            "base_model": self.base_model,
            "motion": motion_record(self.adapter_template.config),
        }

    def check_resumable(self, path: str, motion_dir: Path, state: dict) -> None:
        """One line when the checkpoint was trained on another base model or with other motion settings."""
        here = self.base_model
        recorded = state.get("base_model")
        if recorded is not None:
            # Another geometry cannot take these weights; another model of the same geometry could, but would not
            # continue the same run (what a resume promises): both are refused, and motion.init_path offered.
            differs = [key for key in UNET_ESSENTIALS if recorded["unet"].get(key) != here["unet"].get(key)]
            if differs or describe_model(recorded) != describe_model(here):
                detail = (f" ({differs[0]}={recorded['unet'].get(differs[0])} there, {here['unet'].get(differs[0])} here)"
                          if differs else "")
                raise UserInputError(
                    f"trainer.resume={path} was trained on base model {describe_model(recorded)}, this run's model is "
                    f"{describe_model(here)}{detail}; resume with that model, or start a new run from its weights with "
                    f"motion.init_path={motion_dir}"
                )
        motion = state.get("motion")
        if motion is None:  # a checkpoint from before the record: its module's own config says the same
            try:
                motion = motion_record(json.loads((motion_dir / "config.json").read_text()))
            except (OSError, ValueError):
                raise UserInputError(f"trainer.resume={path}: {motion_dir / 'config.json'} is missing or not JSON") from None
        wanted = motion_record(self.adapter_template.config)
        for key, setting in MOTION_ESSENTIALS.items():
            if motion.get(key) != wanted[key]:
                raise UserInputError(
                    f"trainer.resume={path} was trained with {setting}={motion.get(key)} ({key}), this run has {wanted[key]}; "
                    "pass the checkpoint's settings to resume it"
                )

    def resume(self, path: str, checkpoint: tuple[Path, dict] | None = None) -> None:
        """Continue from checkpoint `path` (its `load_checkpoint` result when already read) exactly where it stopped."""
        motion_dir, state = checkpoint or load_checkpoint(path)
        check_resume_step(path, state, self.max_steps)
        self.check_resumable(path, motion_dir, state)
        if (state["world_size"], state["batch_size"], state["grad_accum"]) != (self.ctx.world_size, self.batch_size, self.grad_accum):
            log.warning("resuming with a different world size / batch size / accumulation: the data order will differ")
        adapter = load_motion_adapter(str(motion_dir), key="trainer.resume")
        check_fits(self.pipe.unet, adapter)  # a checkpoint from before the base-model record
        self.unet.load_motion_modules(adapter.to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.global_step = int(state["global_step"])

    # --- the loop ------------------------------------------------------------------------------------------

    def batches(self):
        """Micro-batches from the current position on, epoch after epoch."""
        loader_kwargs = {"batch_size": self.batch_size, "num_workers": int(self.cfg.data.num_workers), "drop_last": True,
                         "collate_fn": collate_clips, "persistent_workers": False}
        epoch, within = divmod(self.global_step, self.steps_per_epoch)
        while True:
            self.sampler.set_position(epoch, within * self.grad_accum * self.batch_size)
            self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, sampler=self.sampler, **loader_kwargs)
            # Whole optimizer steps only: micro-batches left over at the end of an epoch are not used, so
            # that every epoch starts at a step boundary (what a resume relies on).
            yield from itertools.islice(loader, (self.steps_per_epoch - within) * self.grad_accum)
            epoch, within = epoch + 1, 0

    def train(self) -> dict:
        trainer = self.cfg.trainer
        writer = self.open_tensorboard() if self.ctx.is_main else None
        metrics_file = (self.run_dir / "metrics.jsonl").open("a") if self.ctx.is_main and self.run_dir else None
        batches = self.batches()
        self.model.train()
        started = time.perf_counter()
        steps_done, step_time = 0, 0.0  # throughput over optimizer steps only (not checkpoints or validation)
        clips_per_step = self.batch_size * self.grad_accum * self.ctx.world_size
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
                        self.reporter.status({"loss": loss, "steps/s": steps_per_s, "clips/s": steps_per_s * clips_per_step})
                    self.reporter.advance()
                    if not math.isfinite(loss):
                        self.diverged(f"the loss is {loss} at step {self.global_step}")
                    record = {"step": self.global_step, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
                              "grad_norm": self.last_grad_norm, "skipped_clips": skipped,
                              "skipped_clips_total": self.skipped_total, "step_s": time.perf_counter() - step_started}
                    if metrics_file and (self.global_step % int(trainer.log_every) == 0 or self.global_step == self.max_steps):
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                        if writer is not None:
                            for key in ("loss", "lr", "grad_norm", "skipped_clips_total"):
                                writer.add_scalar(f"train/{key}", record[key], self.global_step)
                    if skipped:
                        log.info("step %d: skipped %d unreadable or short clips", self.global_step, skipped)
                    every = int(trainer.checkpoint_every)
                    if every > 0 and self.global_step % every == 0:
                        # A non-finite checkpoint would replace the last good one. Checked on every rank (they hold
                        # the same weights), so that all stop together instead of waiting for rank 0 in a collective.
                        self.check_finite_weights()
                    if self.ctx.is_main and self.run_dir and every > 0 and self.global_step % every == 0:
                        save_checkpoint(self.run_dir / "checkpoints", self.global_step, self.current_adapter(), self.state(),
                                        keep=int(trainer.keep_checkpoints))
                    validation_every = int(self.cfg.validation.every)
                    if self.ctx.is_main and self.run_dir and validation_every > 0 and self.global_step % validation_every == 0:
                        self.validate()
        finally:
            if metrics_file:
                metrics_file.close()
            if writer is not None:
                writer.close()
        return {"steps": self.global_step, "final_loss": self.losses[-1] if self.losses else None,
                "skipped_clips": self.skipped_total, "train_s": time.perf_counter() - started}

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
            self.diverged(f"the motion weights are not finite after step {self.global_step}")

    def open_tensorboard(self):
        if not self.cfg.trainer.tensorboard or self.run_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional `tensorboard` package is absent; metrics.jsonl is always written
            log.info("tensorboard is not installed; logging to metrics.jsonl only")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    @torch.no_grad()
    def validate(self) -> None:
        """Validation videos sampled with the trainer's own inflated UNet (EMA weights when on), on its device.

        Not a fresh inflation of `pipe.unet`: that image UNet never leaves the CPU, and a second UNet would
        cost memory. The UNet's frozen weights may be bf16/fp16 beside fp32 motion weights, hence autocast.
        """
        from ..io.video import write_video
        from ..methods import animatediff

        validation = self.cfg.validation
        folder = self.run_dir / "validation"
        folder.mkdir(exist_ok=True)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        self.model.eval()
        try:
            with self.ema_weights(), autocast:
                for index, prompt in enumerate(validation.prompts):
                    settings = animatediff.AnimateDiffSettings(
                        prompt=str(prompt), frames=int(self.cfg.data.frames), height=int(self.cfg.data.size),
                        width=int(self.cfg.data.size), steps=int(validation.steps),
                        guidance_scale=float(validation.guidance_scale), seed=self.seed,
                        beta_schedule=SCHEDULES[str(self.cfg.schedule)]["beta_schedule"],
                    )
                    output = animatediff.generate(self.pipe, None, settings, StageReporter(), video_unet=self.unet)
                    write_video(folder / f"step_{self.global_step:07d}_{index}.mp4", output.frames, fps=float(validation.fps))
        finally:
            self.model.train()

    def save_final(self) -> dict:
        self.check_finite_weights()
        adapter = self.current_adapter(use_ema=True)
        save_motion_adapter(adapter, self.run_dir / "motion_module")
        export_original(adapter, self.run_dir / "motion_module.safetensors")
        return {"diffusers": "motion_module/", "original": "motion_module.safetensors", "ema": self.ema is not None}


__all__ = ["MotionTrainer", "SCHEDULES", "noise_schedule", "timestep_weights", "zero_init_output_projections"]
