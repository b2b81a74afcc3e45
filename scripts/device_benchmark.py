"""stylevid against diffusers at Stable Diffusion 1.5 scale on a GPU, side by side in one process.

Speed and memory do not depend on the weights' values, so every component is randomly initialised with SD 1.5's
exact configs (UNet 860M, VAE, CLIP ViT-L/14 text encoder, ControlNet, MotionAdapter v1-5-2, CLIP ViT-L/14 vision
tower, the image-prompt mapper), built directly on the device: no download, no CPU initialisation of 860M
parameters.

Rows (`--rows`, in this order; a row that does not fit `--time-budget` is skipped and says so):
  t2v_zero               stylevid t2v_zero vs diffusers' TextToVideoZeroPipeline: 512², 8 frames, 50 steps
  animatediff            stylevid animatediff vs diffusers' AnimateDiffPipeline: 512², 16 frames, 25 steps
  train_motion_module    one optimizer step of `stylevid train motion_module` at 16x256², batch 1, gradient
                         checkpointing off vs stylevid's
  long_video             animatediff at 64 frames (FreeNoise windows of 16, stride 4) vs 16 frames: peak memory
  stylet2v0              stylevid stylet2v0 (both sharing presets) vs t2v_zero, t2v_zero's work
  animatediff_controlnet animatediff with one ControlNet vs diffusers' AnimateDiffControlNetPipeline
  train_videogen_base    one optimizer step of VideoGen's base stage (16x128², its resolution), checkpointing off/on
  train_videogen_sr      ... of its first super-resolution stage (16x256²)
  train_gen1             ... of Gen-1's structure stage (8x256², content + structure), checkpointing off/on
  image_prompt           stylevid image_prompt (fine stage and position encodings on: the image prompt's CLIP layers,
                         mapper and VAE latent, an exemplar UNet pass per step, the injection in every spatial
                         self-attention) vs stylevid animatediff on the same prompt, 512², 16 frames, 25 steps
  train_image_prompt     one optimizer step of `stylevid train image_prompt` target.stage=joint (mapper, K, V copies
                         and exemplar projections: the stage with the most trained parameters) at 16x256², batch 1,
                         checkpointing off vs the target's switch

Every generation row also times the bare model loop: the model calls the stylevid run made (recorded with forward
hooks during its warm-up: the same number, the same batch shapes, CFG doubling and ControlNet included), replayed on
ready-made random inputs with a scheduler step after each UNet call and nothing else. stylevid / bare loop is then the
pipeline's overhead, and "same model calls" checks that stylevid and its peer did identical work. (image_prompt's
bare loop replays its video and exemplar UNet calls with the UNet's plain attention: what the injection's attention,
the image-prompt encoding and the pipeline add to the same calls.)

Method: each run once as warm-up (`--compile`: twice, so compilation stays out of the figures; the first-call
times are kept in the JSON), then `--repeats` rounds alternating the runs of a row, median time. Peak memory is
torch.cuda.max_memory_allocated over what was allocated before the run (weights excluded; n/a on the CPU).
Training rows time what `stylevid train` does in one optimizer step: the target's own loss (VAE encode, text or
image encoder, the forward process, the UNet), backward, gradient clipping, AdamW.

    python scripts/device_benchmark.py                          # CUDA: SD 1.5 scale, fp16, under 8 minutes
    python scripts/device_benchmark.py --rows animatediff --compile   # one or two rows: each distinct UNet call
                                                                      # compiles once (about a minute on a GPU)
    python scripts/device_benchmark.py --smoke                  # the same code path on the CPU, tiny configs, seconds

Writes --out (device_benchmark.json) after every row: GPU name, versions, options and every figure.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from scripts.benchmark_t2v import style_image, sync  # noqa: E402
from stylevid.errors import UserInputError  # noqa: E402

# --- SD 1.5's component configs (runwayml/stable-diffusion-v1-5, openai/clip-vit-large-patch14,
# guoyww/animatediff-motion-adapter-v1-5-2, lllyasviel/sd-controlnet-*), as their config.json files set them -----------

SD15 = {
    "unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        downsample_padding=1, mid_block_scale_factor=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215,
    ),
    "text_encoder": dict(  # CLIP ViT-L/14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    ),
    "motion_adapter": dict(  # v1-5-2: the SD 1.5 module with a mid block and a 32-frame window
        block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
    ),
    "controlnet": dict(conditioning_embedding_out_channels=(16, 32, 96, 256)),  # ControlNetModel.from_unet's rest
    "image_encoder": dict(  # CLIP ViT-L/14's vision tower (Gen-1's content embeddings)
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    ),
    # The image-prompt mapper as `stylevid train image_prompt` makes it (conf/target/image_prompt.yaml: mapper_width,
    # num_tokens); it reads five CLIP layers of the vision tower above, its width and the text encoder's set the rest.
    "image_prompt_mapper": dict(hidden_dim=1024, num_tokens=1),
}


def smoke_configs() -> dict:
    """The same components at the sizes of stylevid's tiny models (`stylevid.models.tiny`), read off those models so
    that the smoke run follows them when they change."""
    from stylevid.methods.image_prompt import TINY_MAPPER_WIDTH
    from stylevid.models.gen1 import tiny_image_encoder
    from stylevid.models.motion_module import tiny_motion_adapter
    from stylevid.models.tiny import TINY_TEXT_DIM, tiny_text_encoder, tiny_unet, tiny_vae

    return {
        "unet": dict(tiny_unet().config),
        "vae": dict(tiny_vae().config),
        "text_encoder": tiny_text_encoder().config.to_dict(),
        "motion_adapter": dict(tiny_motion_adapter().config),
        "controlnet": dict(conditioning_embedding_out_channels=(8, 16, 32, 32)),  # as models.controlnet.tiny_controlnet
        "image_encoder": tiny_image_encoder(embed_dim=TINY_TEXT_DIM)[0].config.to_dict(),
        "image_prompt_mapper": dict(hidden_dim=TINY_MAPPER_WIDTH, num_tokens=1),  # model=tiny's random mapper
    }


# The work of each row: (frame side in pixels, frames, steps); training rows: (side, frames, batch).
WORK = {
    "sd15": {
        "t2v": (512, 8, 50), "animatediff": (512, 16, 25),
        # Peak memory does not grow with the number of steps: 3 are enough to see the 64-frame peak.
        "long_video": (512, 64, 3), "long_context": (16, 4),  # FreeNoise window and stride (the method's defaults)
        "train_motion_module": (256, 16, 1), "train_videogen_base": (128, 16, 1), "train_videogen_sr": (256, 16, 1),
        "train_gen1": (256, 8, 1), "train_image_prompt": (256, 16, 1),
    },
    "smoke": {
        "t2v": (64, 3, 4), "animatediff": (64, 4, 2), "long_video": (64, 16, 2), "long_context": (4, 2),
        "train_motion_module": (64, 4, 1), "train_videogen_base": (32, 4, 1), "train_videogen_sr": (64, 4, 1),
        "train_gen1": (64, 4, 1), "train_image_prompt": (64, 4, 1),
    },
}
PROMPT = "a panda surfing on a wave"
SUBJECT = "panda"  # the prompt's word an image prompt replaces
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class Skip(Exception):
    """A row that cannot be measured here (a missing feature or peer, or no time left); the message says why."""


# --- the components, built once on the device ---------------------------------------------------------------------


class Components:
    """The random SD 1.5-architecture parts the rows share, each built on first use (a row not asked for costs
    nothing), on the device directly, in the benchmark's dtype, frozen."""

    def __init__(self, configs: dict, device: torch.device, dtype: torch.dtype, channels_last: bool, compile_unet: bool):
        self.configs, self.device, self.dtype = configs, device, dtype
        self.channels_last, self.compile_unet = channels_last, compile_unet

    def built(self, make: Callable[[], object], convolutional: bool = True, unet: bool = False):
        """`make()` under the device context (parameters are created there, not on the CPU), then cast and frozen."""
        torch.manual_seed(0)
        with torch.device(self.device):
            module = make()
        return self.finished(module, convolutional, unet)

    def finished(self, module: torch.nn.Module, convolutional: bool = True, unet: bool = False) -> torch.nn.Module:
        module.to(dtype=self.dtype).eval().requires_grad_(False)  # in place: a pipeline's own module stays its own
        if self.channels_last and convolutional:
            module.to(memory_format=torch.channels_last)
        if self.compile_unet and unet:
            # The forward, not the module: the forward hooks that count model calls stay outside the compiled graph,
            # so adding and removing them does not recompile it.
            module.forward = torch.compile(module.forward)
        return module

    @functools.cached_property
    def pipe(self):
        """The image pipeline every method starts from (what `stylevid.models.loading.load_pipeline` returns)."""
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from stylevid.models.tiny import sd_ddim_scheduler, tiny_tokenizer

        # No tokenizer can be downloaded: the byte-level one of the tiny models pads every prompt to the same 77
        # tokens as CLIP's BPE does, which is all the text encoder's cost depends on.
        tokenizer = tiny_tokenizer()
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
        text_config = CLIPTextConfig(**{**self.configs["text_encoder"], **special})
        return StableDiffusionPipeline(
            vae=self.built(lambda: AutoencoderKL.from_config(self.configs["vae"])),
            text_encoder=self.built(lambda: CLIPTextModel(text_config), convolutional=False),
            tokenizer=tokenizer,
            unet=self.built(lambda: UNet2DConditionModel.from_config(self.configs["unet"]), unet=True),
            scheduler=sd_ddim_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    @functools.cached_property
    def animatediff(self):
        """stylevid's AnimateDiff pipeline as `AnimateDiff.load` assembles it (`animatediff_pipeline`: the image UNet
        inflated with the motion module, the module registered, DDIM on the module's linear betas)."""
        from diffusers import MotionAdapter

        from stylevid.methods.animatediff import animatediff_pipeline

        adapter = self.built(lambda: MotionAdapter.from_config(self.configs["motion_adapter"]), convolutional=False)
        with torch.device(self.device):
            video_pipe = animatediff_pipeline(self.pipe, adapter, beta_schedule="linear")
        self.finished(video_pipe.unet, unet=True)
        return video_pipe

    @functools.cached_property
    def controlnet(self):
        from diffusers import ControlNetModel

        return self.built(lambda: ControlNetModel.from_unet(self.pipe.unet, **self.configs["controlnet"]))

    @functools.cached_property
    def image_encoder(self):
        """Gen-1's CLIP vision tower and its preprocessing."""
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from stylevid.models.gen1 import default_feature_extractor

        config = CLIPVisionConfig(**self.configs["image_encoder"])
        encoder = self.built(lambda: CLIPVisionModelWithProjection(config), convolutional=False)
        return encoder, default_feature_extractor(encoder)

    def image_prompt_adapter(self, unet) -> torch.nn.Module:
        """A fresh `ImagePromptAdapter` for the AnimateDiff `unet` (rows do not share one: a training row trains
        its own): the mapper reading the image encoder's default CLIP layers, as `stylevid train image_prompt` makes
        it, and copies of the spatial attention layers' K, V projections (fine stage included), frozen."""
        from stylevid.models.image_prompt import ImagePromptAdapter, ImagePromptMapper, default_clip_layers

        encoder, _ = self.image_encoder
        mapper = self.built(lambda: ImagePromptMapper(
            vision_dim=encoder.config.hidden_size, text_dim=self.pipe.text_encoder.config.hidden_size,
            clip_layers=default_clip_layers(encoder.config.num_hidden_layers), **self.configs["image_prompt_mapper"]),
            convolutional=False)
        with torch.device(self.device):
            adapter = ImagePromptAdapter(mapper, unet, fine=True)
        return self.finished(adapter, convolutional=False)


# --- recording and replaying model calls -------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """What a model call's tensor argument was: enough to make another of the same cost (values do not matter,
    except single numbers: timesteps)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    value: float | None = None


def spec_of(value):
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype, str(value.device), value.item() if value.numel() == 1 else None)
    if isinstance(value, (list, tuple)):
        return type(value)(spec_of(item) for item in value)
    if isinstance(value, dict):
        return {key: spec_of(item) for key, item in value.items()}
    return value


def tensor_for(spec: TensorSpec) -> torch.Tensor:
    if spec.value is not None:
        return torch.full(spec.shape, spec.value, dtype=spec.dtype, device=spec.device)
    if spec.dtype.is_floating_point:
        return torch.randn(spec.shape, dtype=spec.dtype, device=spec.device)
    return torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)


def materialize(value, made: dict):
    """A spec tree as tensors; equal specs share one tensor (`made`), so replay inputs cost one copy per shape."""
    if isinstance(value, TensorSpec):
        if value not in made:
            made[value] = tensor_for(value)
        return made[value]
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(item, made) for item in value)
    if isinstance(value, dict):
        return {key: materialize(item, made) for key, item in value.items()}
    return value


@dataclass
class Call:
    model: str  # the name a run gives the module: "unet", "controlnet"
    args: tuple
    kwargs: dict
    bound: dict  # argument name -> spec, by the forward's signature (positional or keyword alike)

    def work(self) -> tuple:
        """What the call costs, comparable between callers: every tensor argument's shape, and single numbers."""
        def shapes(value):
            if isinstance(value, TensorSpec):
                return (value.shape, None if value.value is None else round(float(value.value), 3))
            if isinstance(value, (list, tuple)):
                return tuple(shapes(item) for item in value)
            if isinstance(value, dict):
                return tuple(sorted((key, shapes(item)) for key, item in value.items()))
            return None
        return (self.model, tuple(sorted((name, shapes(value)) for name, value in self.bound.items()
                                         if shapes(value) not in (None, ()))))


class recorded_calls:
    """Context manager: every forward call of `models` (name -> module) while it is open, in order."""

    def __init__(self, models: dict[str, torch.nn.Module]):
        self.models, self.calls, self.handles = models, [], []

    def __enter__(self) -> list[Call]:
        for name, module in self.models.items():
            signature = inspect.signature(type(module).forward)

            def hook(module, args, kwargs, name=name, signature=signature):
                args, kwargs = spec_of(args), spec_of(kwargs)
                bound = signature.bind(module, *args, **kwargs).arguments
                bound.pop(next(iter(signature.parameters)))  # self
                self.calls.append(Call(name, args, kwargs, dict(bound)))

            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self.calls

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


class BareLoop:
    """The model calls another run made, replayed back to back on ready-made random inputs, a DDIM step after each
    UNet call: what the row's work costs with no pipeline around it. The step takes the UNet's whole output (CFG
    rows included), a little more than a pipeline steps, so the measured overhead errs low, not high."""

    def __init__(self, models: dict[str, torch.nn.Module], source: "Run", scheduler_config):
        from diffusers import DDIMScheduler

        self.models, self.source = models, source
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.replay = None

    def prepare(self) -> None:
        calls, made = self.source.calls, {}
        if not calls:
            raise RuntimeError(f"{self.source.name} made no model call to replay")
        self.scheduler.set_timesteps(max(1, sum(call.model == "unet" for call in calls)))
        self.replay = [(self.models[call.model], materialize(call.args, made), materialize(call.kwargs, made),
                        call.model == "unet", materialize(call.bound.get("sample"), made),
                        materialize(call.bound.get("timestep"), made)) for call in calls]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.replay is None:
            self.prepare()
        for module, args, kwargs, is_unet, sample, timestep in self.replay:
            output = module(*args, **kwargs)
            if is_unet:
                prediction = output[0] if isinstance(output, tuple) else output.sample
                self.scheduler.step(prediction, timestep, sample)


# --- rows: what runs, what is compared ----------------------------------------------------------------------------


@dataclass
class Run:
    """One contender of a row."""

    name: str
    call: Callable[[], object]
    models: dict[str, torch.nn.Module] = field(default_factory=dict)  # whose calls are counted (and replayed)
    prepare: Callable[[], None] | None = None  # untimed, before every call (e.g. switching checkpointing on)
    # Stages of the call's own timings (a VideoOutput's, from its StageReporter) to report per timed run: only
    # stages that end in a device sync (a .cpu()), or their time would be the host's alone.
    stages: tuple[str, ...] = ()
    calls: list[Call] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    peaks_mib: list[float] = field(default_factory=list)
    stages_s: dict[str, list[float]] = field(default_factory=dict)

    def record(self) -> dict:
        counts = {}
        for call in self.calls:
            counts[call.model] = counts.get(call.model, 0) + 1
        work = repr([call.work() for call in self.calls]).encode()
        record = {
            "time_s": statistics.median(self.times_s) if self.times_s else None,
            "times_s": self.times_s,
            "warmup_s": self.warmup_s,
            "peak_mib": max(self.peaks_mib) if self.peaks_mib else None,
            "model_calls": counts,
            "work_digest": hashlib.sha1(work).hexdigest()[:16] if self.calls else None,
        }
        if self.stages:
            record["stages_s"] = {name: statistics.median(times) if times else None
                                  for name, times in ((name, self.stages_s.get(name, [])) for name in self.stages)}
        return record


@dataclass
class Check:
    """numerator / denominator of a quantity of two runs, against `value <= limit` when there is a target."""

    name: str
    numerator: str
    denominator: str
    quantity: str = "time_s"  # or "peak_mib"
    limit: float | None = None
    target: str = ""

    def record(self, runs: dict[str, dict]) -> dict:
        top, bottom = runs[self.numerator][self.quantity], runs[self.denominator][self.quantity]
        value = top / bottom if top is not None and bottom else None
        passed = None if value is None or self.limit is None else value <= self.limit
        return {"name": self.name, "numerator": self.numerator, "denominator": self.denominator,
                "quantity": self.quantity, "value": value, "target": self.target, "limit": self.limit, "pass": passed}


@dataclass
class Plan:
    work: dict
    runs: list[Run]
    checks: list[Check]
    same_work: list[tuple[str, str]] = field(default_factory=list)  # pairs that must make identical model calls
    repeats: int | None = None  # None: --repeats
    alternate: bool = True  # False: each run's warm-up and repeats back to back (see long_video_row)
    teardown: Callable[[], None] | None = None


@dataclass
class Context:
    components: Components
    work: dict
    device: torch.device
    dtype: torch.dtype
    repeats: int
    warmups: int
    deadline: float

    def rounds(self, wanted: int, cost_s: float) -> int:
        """How many timed rounds of `cost_s` fit before the deadline, at most `wanted`; none is a skip."""
        left = self.deadline - time.perf_counter()
        fitting = min(wanted, int(left // max(cost_s, 1e-9)))
        if fitting < 1:
            raise Skip(f"a timed round (~{cost_s:.0f} s by the warm-up) does not fit the {max(left, 0):.0f} s left of --time-budget")
        return fitting


def measured(call: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """Seconds of one call, and its peak CUDA memory over what was allocated before it (MiB; None on the CPU, where
    a process-wide peak cannot be reset between runs)."""
    sync(str(device))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    call()
    sync(str(device))
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None


def warm_up(run: Run, ctx: Context) -> None:
    for index in range(ctx.warmups):
        if run.prepare:
            run.prepare()
        if index == 0:  # the first warm-up counts the model calls (hooks cost a little: never in a timed run)
            with recorded_calls(run.models) as calls:
                seconds, _ = measured(run.call, ctx.device)
            run.calls = calls
        else:
            seconds, _ = measured(run.call, ctx.device)
        run.warmup_s.append(seconds)


def time_once(run: Run, ctx: Context) -> None:
    if run.prepare:
        run.prepare()
    outputs = []
    seconds, peak = measured(lambda: outputs.append(run.call()), ctx.device)
    run.times_s.append(seconds)
    if peak is not None:
        run.peaks_mib.append(peak)
    for stage in run.stages:
        run.stages_s.setdefault(stage, []).append(outputs[0].timings[stage])


def measure(plan: Plan, ctx: Context) -> dict:
    repeats = plan.repeats or ctx.repeats
    if plan.alternate:
        for run in plan.runs:
            warm_up(run, ctx)
        for _ in range(ctx.rounds(repeats, sum(run.warmup_s[-1] for run in plan.runs))):
            for run in plan.runs:  # alternating, so that drift in clocks or load hits every run alike
                time_once(run, ctx)
    else:
        for run in plan.runs:
            warm_up(run, ctx)
            for _ in range(ctx.rounds(repeats, run.warmup_s[-1])):
                time_once(run, ctx)
    runs = {run.name: run.record() for run in plan.runs}
    checks = [check.record(runs) for check in plan.checks]
    for first, second in plan.same_work:
        same = runs[first]["work_digest"] is not None and runs[first]["work_digest"] == runs[second]["work_digest"]
        checks.append({"name": f"same model calls: {second}", "numerator": first, "denominator": second,
                       "quantity": "work_digest", "value": None, "target": "identical", "limit": None, "pass": same})
    return {"work": plan.work, "repeats": repeats, "runs": runs, "checks": checks}


def overhead_checks(stylevid: str, peer: str | None, bare: str, limit: float | None = None) -> list[Check]:
    checks = [Check(f"{stylevid} / bare loop: pipeline overhead", stylevid, bare, limit=limit,
                    target=f"<= {limit:.2f}" if limit else "")]
    if peer:
        checks.append(Check(f"{peer} / bare loop", peer, bare))
    return checks


# --- generation rows ------------------------------------------------------------------------------------------------


def generate_settings(method: str, size: int, frames: int, steps: int, *overrides: str):
    """The settings `stylevid generate method=<method> ...` composes and checks (its defaults: guidance 7.5, t0/t1,
    chunk_size, FreeNoise windows...)."""
    from hydra import compose, initialize_config_module

    from stylevid.methods.base import get_method

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("generate", overrides=[f"method={method}", "model=tiny", f"prompt='{PROMPT}'", f"frames={frames}",
                                             f"steps={steps}", f"height={size}", f"width={size}", "seed=0", *overrides])
    return get_method(method), get_method(method).settings(cfg)


def generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)  # as stylevid: CPU noise


def t2v_zero_row(ctx: Context) -> Plan:
    try:
        from diffusers import TextToVideoZeroPipeline
    except ImportError:
        raise Skip("this diffusers has no TextToVideoZeroPipeline") from None
    from stylevid.methods.t2v_zero import ZeroShotModels
    from stylevid.progress import StageReporter

    size, frames, steps = ctx.work["t2v"]
    pipe = ctx.components.pipe
    method, settings = generate_settings("t2v_zero", size, frames, steps)
    peer = TextToVideoZeroPipeline(**{k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    peer.set_progress_bar_config(disable=True)
    models = {"unet": pipe.unet}
    diffusers_run = Run("diffusers TextToVideoZeroPipeline", lambda: peer(
        prompt=settings.prompt, video_length=frames, height=size, width=size, num_inference_steps=steps,
        guidance_scale=settings.guidance_scale, t0=settings.t0, t1=settings.t1, generator=generator(settings.seed),
        output_type="np"), models)
    stylevid_run = Run("stylevid t2v_zero", lambda: method.generate(ZeroShotModels(pipe, None), settings, StageReporter()), models)
    bare = Run("bare loop (t2v_zero's calls)", BareLoop(models, stylevid_run, pipe.scheduler.config), models)
    return Plan(
        work={"size": size, "frames": frames, "steps": steps, "t0": settings.t0, "t1": settings.t1,
              "chunk_size": settings.chunk_size, "guidance_scale": settings.guidance_scale},
        runs=[diffusers_run, stylevid_run, bare],
        checks=[Check("stylevid t2v_zero / diffusers", stylevid_run.name, diffusers_run.name, limit=1.02, target="<= 1.02"),
                Check("peak memory: stylevid / diffusers", stylevid_run.name, diffusers_run.name, "peak_mib"),
                *overhead_checks(stylevid_run.name, diffusers_run.name, bare.name, limit=1.05)],
        same_work=[(stylevid_run.name, diffusers_run.name), (stylevid_run.name, bare.name)],
    )


def stylet2v0_row(ctx: Context) -> Plan:
    from stylevid.methods.t2v_zero import ZeroShotModels
    from stylevid.progress import StageReporter

    size, frames, steps = ctx.work["t2v"]
    pipe = ctx.components.pipe
    style = style_image(Path(tempfile.mkdtemp(prefix="device_benchmark_")) / "style.png")
    runs = []
    t2v_method, t2v_settings = generate_settings("t2v_zero", size, frames, steps)
    runs.append(Run("stylevid t2v_zero", lambda: t2v_method.generate(ZeroShotModels(pipe, None), t2v_settings, StageReporter()),
                    {"unet": pipe.unet}))
    for sharing in ("paper", "aligned"):  # eqs. 7-9 as written (inverted reference), and the default
        method, settings = generate_settings("stylet2v0", size, frames, steps, f"style={style}", f"method.sharing={sharing}")
        runs.append(Run(f"stylevid stylet2v0 sharing={sharing}",
                        functools.partial(method.generate, ZeroShotModels(pipe, None), settings, StageReporter()),
                        {"unet": pipe.unet}))
    default = runs[-1]
    bare = Run("bare loop (stylet2v0's calls)", BareLoop(default.models, default, pipe.scheduler.config), default.models)
    checks = [Check(f"{run.name} / t2v_zero", run.name, runs[0].name, limit=1.3, target="<= 1.30") for run in runs[1:]]
    return Plan(work={"size": size, "frames": frames, "steps": steps, "presets": ["paper", "aligned"]},
                runs=[*runs, bare], checks=[*checks, *overhead_checks(default.name, None, bare.name)],
                same_work=[(default.name, bare.name)])


def animatediff_pipe(ctx: Context, settings, controlnet=None):
    """The shared AnimateDiff pipeline; with a ControlNet, stylevid's AnimateDiffControlNetPipeline on its UNet."""
    from stylevid.methods.animatediff import animatediff_pipeline

    video_pipe = ctx.components.animatediff
    video_pipe.set_progress_bar_config(disable=True)  # stylevid's `configure` does it too: bars cost both alike
    if settings.beta_schedule != "linear":
        raise RuntimeError(f"the shared pipeline samples on linear betas, the settings ask for {settings.beta_schedule}")
    if controlnet is None:
        return video_pipe
    controlled = animatediff_pipeline(ctx.components.pipe, None, settings.beta_schedule, video_unet=video_pipe.unet,
                                      controlnet=controlnet)
    controlled.set_progress_bar_config(disable=True)
    return controlled


def animatediff_peer_call(video_pipe, settings, **extra):
    return lambda: video_pipe(
        prompt=settings.prompt, num_frames=settings.frames, height=settings.height, width=settings.width,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale, generator=generator(settings.seed),
        output_type="np", decode_chunk_size=settings.frames_per_decode, **extra)


def animatediff_row(ctx: Context) -> Plan:
    from stylevid.methods.animatediff import AnimateDiffModels
    from stylevid.progress import StageReporter

    size, frames, steps = ctx.work["animatediff"]
    method, settings = generate_settings("animatediff", size, frames, steps)
    video_pipe = animatediff_pipe(ctx, settings)
    models = {"unet": video_pipe.unet}
    # The peer is diffusers' AnimateDiffPipeline called directly on the very same pipeline object: stylevid adds the
    # settings, the progress callback, CPU noise and its own decoding around it.
    stylevid_run = Run("stylevid animatediff", lambda: method.generate(AnimateDiffModels(video_pipe, None), settings,
                                                                        StageReporter()), models)
    diffusers_run = Run("diffusers AnimateDiffPipeline", animatediff_peer_call(video_pipe, settings), models)
    bare = Run("bare loop (animatediff's calls)", BareLoop(models, stylevid_run, video_pipe.scheduler.config), models)
    return Plan(
        work={"size": size, "frames": frames, "steps": steps, "guidance_scale": settings.guidance_scale,
              "beta_schedule": settings.beta_schedule},
        runs=[diffusers_run, stylevid_run, bare],
        checks=[Check("stylevid animatediff / diffusers", stylevid_run.name, diffusers_run.name, limit=1.02, target="<= 1.02"),
                Check("peak memory: stylevid / diffusers", stylevid_run.name, diffusers_run.name, "peak_mib"),
                *overhead_checks(stylevid_run.name, diffusers_run.name, bare.name, limit=1.05)],
        same_work=[(stylevid_run.name, diffusers_run.name), (stylevid_run.name, bare.name)],
    )


def animatediff_controlnet_row(ctx: Context) -> Plan:
    try:
        from diffusers import AnimateDiffControlNetPipeline  # noqa: F401
    except ImportError:
        raise Skip("this diffusers has no AnimateDiffControlNetPipeline") from None
    from stylevid.conditions.control import Control
    from stylevid.methods.animatediff import AnimateDiff, AnimateDiffModels, control_inputs
    from stylevid.progress import StageReporter

    if "condition" not in AnimateDiff.supports:
        raise Skip("stylevid's animatediff does not take condition= (ControlNet) yet")
    size, frames, steps = ctx.work["animatediff"]
    method, settings = generate_settings("animatediff", size, frames, steps)
    controlnet = ctx.components.controlnet
    # Condition maps as an annotator leaves them (uint8 values); their content does not change the cost.
    maps = (torch.rand(frames, 3, size, size, generator=generator(0)) * 255).round() / 255
    control = Control(controlnet=controlnet, images=[maps], scales=[1.0])
    video_pipe = animatediff_pipe(ctx, settings, controlnet)
    models = {"unet": video_pipe.unet, "controlnet": controlnet}
    stylevid_run = Run("stylevid animatediff + ControlNet", lambda: method.generate(
        AnimateDiffModels(video_pipe, control), settings, StageReporter()), models)
    diffusers_run = Run("diffusers AnimateDiffControlNetPipeline", animatediff_peer_call(
        video_pipe, settings, **control_inputs(control)), models)  # the same PIL frames, made once, untimed
    bare = Run("bare loop (animatediff + ControlNet's calls)", BareLoop(models, stylevid_run, video_pipe.scheduler.config), models)
    return Plan(
        work={"size": size, "frames": frames, "steps": steps, "controlnets": 1},
        runs=[diffusers_run, stylevid_run, bare],
        checks=[Check("stylevid / diffusers", stylevid_run.name, diffusers_run.name, limit=1.02, target="<= 1.02"),
                *overhead_checks(stylevid_run.name, diffusers_run.name, bare.name)],
        same_work=[(stylevid_run.name, diffusers_run.name), (stylevid_run.name, bare.name)],
    )


def long_video_row(ctx: Context) -> Plan:
    from stylevid.methods.animatediff import AnimateDiffModels
    from stylevid.progress import StageReporter

    size, long_frames, steps = ctx.work["long_video"]
    context, stride = ctx.work["long_context"]
    short_method, short = generate_settings("animatediff", size, context, steps)
    long_method, long = generate_settings("animatediff", size, long_frames, steps, "method.free_noise=true",
                                          f"method.context_length={context}", f"method.context_stride={stride}")
    video_pipe = animatediff_pipe(ctx, short)
    models = {"unet": video_pipe.unet}
    short_run = Run(f"stylevid animatediff {context} frames", lambda: short_method.generate(
        AnimateDiffModels(video_pipe, None), short, StageReporter()), models)
    long_run = Run(f"stylevid animatediff {long_frames} frames, FreeNoise {context}/{stride}", lambda: long_method.generate(
        AnimateDiffModels(video_pipe, None), long, StageReporter()), models)

    def teardown():
        # FreeNoise replaces the shared UNet's motion blocks in place: put the plain ones back for later rows.
        if video_pipe.free_noise_enabled:
            video_pipe.disable_free_noise()

    return Plan(
        work={"size": size, "frames": [context, long_frames], "steps": steps, "context_length": context,
              "context_stride": stride, "frames_per_decode": long.frames_per_decode},
        runs=[short_run, long_run],
        checks=[Check(f"peak memory: {long_frames} / {context} frames", long_run.name, short_run.name, "peak_mib",
                      limit=1.2, target="<= 1.20"),
                Check(f"time: {long_frames} / {context} frames", long_run.name, short_run.name)],
        # Memory does not drift, and switching FreeNoise on and off rebuilds the motion blocks (on the CPU, in
        # diffusers), which would land in the timed runs: one run after the other, one timed repeat each.
        repeats=1, alternate=False, teardown=teardown,
    )


# --- training rows --------------------------------------------------------------------------------------------------


def train_config(target: str, *overrides: str):
    """The config `stylevid train <target>` composes: its diffusion objective, trainer and target keys."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=[f"target={target}", "model=tiny", *overrides])


def target_for_step(target_cls, cfg, ctx: Context, **parts):
    """A training target holding `parts` built here, on the device, instead of what its constructor loads (the base
    model in float32 on the CPU, a dataset): its own `loss`, `trainable_parameters` and `enable_gradient_checkpointing`
    then run as in `stylevid train`. The smoke test runs this, so a target that starts to need another attribute fails
    there, not on a lent GPU."""
    from stylevid.training.targets import TrainingTarget

    target = target_cls.__new__(target_cls)
    TrainingTarget.__init__(target, cfg, ctx.device, ctx.dtype, 0)
    vars(target).update(parts)
    return target


def training_plan(name: str, ctx: Context, cfg, target, batch: dict, work: dict,
                  checkpointed: torch.nn.Module | None = None, teardown: Callable[[], None] | None = None) -> Plan:
    """One optimizer step of `target` on `batch`, gradient checkpointing off against the target's own switch.

    `checkpointed`: the UNet the switch acts on, when it is not `target.model` (a target whose trained module is an
    adapter beside a frozen UNet); `teardown`: what the row undoes after it, besides the optimizer's state."""
    from stylevid.models.checkpointing import disable_gradient_checkpointing
    from stylevid.training.targets import Step, TrainingTarget

    checkpointed = target.model if checkpointed is None else checkpointed

    # The trainer's precision (as every target's constructor sets it): frozen weights in the low dtype, trained
    # ones in float32, under autocast.
    target.model.train()
    for parameter in target.model.parameters():
        parameter.data = parameter.data.to(torch.float32 if parameter.requires_grad else ctx.dtype)
    trainable = target.trainable_parameters()
    optimizer = torch.optim.AdamW(trainable, lr=float(cfg.trainer.lr), weight_decay=float(cfg.trainer.weight_decay))
    autocast = torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=ctx.dtype != torch.float32)
    max_norm = float(cfg.trainer.max_grad_norm)

    def step():
        # What Trainer.optimizer_step does for one micro-batch (its fp16 gradient scaler aside: no measurable cost).
        at = Step(0, 0, 0, 1, torch.Generator().manual_seed(0))
        with autocast:
            loss = target.loss(target.model, batch, at)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_norm if max_norm > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # stylevid's disable undoes both its own wraps and diffusers' flags, whichever the target's switch set.
    off = Run("gradient checkpointing off", step, prepare=lambda: disable_gradient_checkpointing(checkpointed))
    on = Run("gradient checkpointing on (the target's)", step, prepare=target.enable_gradient_checkpointing)
    trained = sum(p.numel() for p in trainable)
    # A target without its own switch inherits TrainingTarget's no-op: `trainer.gradient_checkpointing=true` then
    # changes nothing, and "on" measures the same step as "off" (the memory check misses, as it should).
    switch = type(target).enable_gradient_checkpointing is not TrainingTarget.enable_gradient_checkpointing

    def finish():
        optimizer.state.clear()
        if teardown:
            teardown()

    return Plan(work={**work, "trained_parameters": trained, "optimizer": "AdamW", "target": name,
                      "checkpointing_switch": "the target's own" if switch else "none (TrainingTarget's no-op: on = off)"},
                runs=[off, on],
                checks=[Check("peak memory: on / off", on.name, off.name, "peak_mib", limit=0.6, target="<= 0.60 (>= 40 % lower)"),
                        Check("step time: on / off", on.name, off.name)],
                teardown=finish)


def clip_batch(ctx: Context, key: str, captions: bool = True) -> dict:
    size, frames, batch = ctx.work[key]
    pixels = torch.rand(batch, frames, 3, size, size, generator=generator(0)) * 2 - 1  # (B, F, 3, H, W) in [-1, 1]
    items = {"pixel_values": pixels}
    if captions:
        items["captions"] = [PROMPT] * batch
    return items


def train_motion_module_row(ctx: Context) -> Plan:
    from stylevid.models.motion_module import inflate, motion_adapter_for_unet
    from stylevid.training.diffusion import DiffusionObjective
    from stylevid.training.targets.motion_module import MotionModule

    cfg = train_config("motion_module")
    pipe, motion = ctx.components.pipe, cfg.motion
    with torch.device(ctx.device):  # the module the target trains: fresh, zero-initialised output projections
        adapter = motion_adapter_for_unet(pipe.unet, num_attention_heads=int(motion.num_attention_heads),
                                          max_seq_length=int(motion.max_seq_length),
                                          transformer_layers_per_block=int(motion.transformer_layers_per_block), seed=0)
        unet = inflate(pipe.unet, adapter)
    unet.freeze_unet2d_params()
    target = target_for_step(MotionModule, cfg, ctx, objective=DiffusionObjective.from_config(cfg.diffusion),
                             vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet)
    size, frames, batch = ctx.work["train_motion_module"]
    return training_plan("motion_module", ctx, cfg, target, clip_batch(ctx, "train_motion_module"),
                         {"size": size, "frames": frames, "batch": batch})


def videogen_row(ctx: Context, kind: str) -> Plan:
    from stylevid.models.videogen import build_stage, super_resolution_from
    from stylevid.training.diffusion import DiffusionObjective
    from stylevid.training.targets.videogen import VideoGenBase, VideoGenSR

    name = f"videogen_{kind}"
    key = f"train_{name}"
    cfg = train_config(name, *(("videogen.stage=2",) if kind == "sr" else ()))
    base = train_config("videogen_base").videogen  # the super-resolution stage starts as the base stage, widened
    videogen, pipe = cfg.videogen, ctx.components.pipe
    with torch.device(ctx.device):
        unet = build_stage(pipe.unet, stage="base", frame_position_encoding=bool(base.frame_position_encoding),
                           max_frames=int(base.max_frames))
        if kind == "sr":
            unet = super_resolution_from(unet)
    size, frames, batch = ctx.work[key]
    parts = dict(objective=DiffusionObjective.from_config(cfg.diffusion), vae=pipe.vae, text_encoder=pipe.text_encoder,
                 tokenizer=pipe.tokenizer, unet=unet, reference_dropout=float(videogen.reference_dropout),
                 index=int(videogen.stage), size=size, frames=frames)
    if kind == "sr":
        parts["max_noise_level"] = int(videogen.max_noise_level)
    target = target_for_step(VideoGenSR if kind == "sr" else VideoGenBase, cfg, ctx, **parts)
    trainable = target._trainable_names(str(videogen.trainable))  # all (Section 3.5) or the temporal layers
    for parameter_name, parameter in unet.named_parameters():
        parameter.requires_grad_(parameter_name in trainable)
    items = {**clip_batch(ctx, key), "fps": torch.full((batch,), 8.0)}
    return training_plan(name, ctx, cfg, target, items,
                         {"size": size, "frames": frames, "batch": batch, "trainable": str(videogen.trainable)})


def train_gen1_row(ctx: Context) -> Plan:
    from stylevid.models.gen1 import build_gen1_unet
    from stylevid.training.diffusion import DiffusionObjective
    from stylevid.training.targets.gen1 import Gen1

    cfg = train_config("gen1", "gen1.stage=structure")
    gen1, pipe = cfg.gen1, ctx.components.pipe
    encoder, feature_extractor = ctx.components.image_encoder
    with torch.device(ctx.device):  # the structure stage's model: content, temporal layers and 8 structure channels
        unet = build_gen1_unet(pipe.unet, structure=True, frame_position_encoding=bool(gen1.frame_position_encoding),
                               max_frames=int(gen1.max_frames), image_embed_dim=int(encoder.config.projection_dim))
    # Video batches only (the 12.5 % image batches skip the temporal layers, so they are cheaper); the clips' depth
    # is given, as the toy data gives it: the depth annotator's cost is left out.
    target = target_for_step(
        Gen1, cfg, ctx, stage="structure", objective=DiffusionObjective.from_config(cfg.diffusion),
        image_batch_share=0.0, content_dropout=float(gen1.content_dropout), structure_dropout=float(gen1.structure_dropout),
        max_ts=0, ts_weights=None, structure=True, vae=pipe.vae, image_encoder=encoder, feature_extractor=feature_extractor,
        annotator=None, unet=unet)
    size, frames, batch = ctx.work["train_gen1"]
    items = {**clip_batch(ctx, "train_gen1", captions=False),
             "depth": torch.rand(batch, frames, size, size, generator=generator(1))}
    return training_plan("gen1 (structure stage)", ctx, cfg, target, items,
                         {"size": size, "frames": frames, "batch": batch, "stage": "structure"})


def train_image_prompt_row(ctx: Context) -> Plan:
    from stylevid.models.checkpointing import disable_gradient_checkpointing
    from stylevid.models.image_prompt import ImagePromptState
    from stylevid.training.diffusion import DiffusionObjective
    from stylevid.training.targets.image_prompt import ImagePromptTarget, _Trainable

    # joint: coarse's mapper and K, V copies plus fine's exemplar projections, the stage with the most trained
    # parameters and the costliest backward (through the text encoder, and through the exemplar pass, which reads
    # the K, V copies). Caption dropout off: a dropped sample trains without its image prompt (no mapper, no
    # exemplar), the cheap step; the row times the one with it (as the Gen-1 row times video batches only).
    stage = "joint"
    cfg = train_config("image_prompt", f"target.stage={stage}", "diffusion.caption_dropout=0")
    pipe = ctx.components.pipe
    unet = ctx.components.animatediff.unet  # the frozen AnimateDiff model: shared, the target trains none of it
    encoder, processor = ctx.components.image_encoder
    adapter = ctx.components.image_prompt_adapter(unet)  # fresh, as the target's constructor makes it
    adapter.requires_grad_(False)
    for parameter in adapter.stage_parameters(stage):
        parameter.requires_grad_(True)
    state = ImagePromptState(position_encoding=bool(cfg.target.position_encoding))
    original = unet.attn_processors
    unet.set_attn_processor({**original, **adapter.processors(state)})  # persistent, as the target sets them
    target = target_for_step(
        ImagePromptTarget, cfg, ctx, stage=stage, objective=DiffusionObjective.from_config(cfg.diffusion), coarse_dropout=0.0,
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet, image_encoder=encoder,
        processor=processor, adapter=adapter, state=state)
    target.trainable = _Trainable(adapter, target.predict)
    size, frames, batch = ctx.work["train_image_prompt"]
    # Subject crops as the dataset gives them (uint8 (h, w, 3), any size: padded and resized to the frame, and to
    # CLIP's input, in the loss).
    crops = [(torch.rand(size // 2, size // 2, 3, generator=generator(1)) * 255).to(torch.uint8).numpy()] * batch
    items = {**clip_batch(ctx, "train_image_prompt"), "subjects": [SUBJECT] * batch, "crops": crops}

    def teardown():  # the shared UNet as the other rows use it
        disable_gradient_checkpointing(unet)
        unet.set_attn_processor(original)
        unet.eval()

    return training_plan(f"image_prompt (stage={stage})", ctx, cfg, target, items,
                         {"size": size, "frames": frames, "batch": batch, "stage": stage, "caption_dropout": 0.0,
                          "clip_layers": list(adapter.mapper.config.clip_layers),
                          "mapper_width": int(adapter.mapper.config.hidden_dim)},
                         checkpointed=unet, teardown=teardown)


def image_prompt_row(ctx: Context) -> Plan:
    from stylevid.methods.animatediff import AnimateDiffModels
    from stylevid.methods.image_prompt import ImagePromptModels
    from stylevid.progress import StageReporter

    size, frames, steps = ctx.work["animatediff"]
    image = style_image(Path(tempfile.mkdtemp(prefix="device_benchmark_")) / "subject.png")
    base_method, base = generate_settings("animatediff", size, frames, steps)
    method, settings = generate_settings("image_prompt", size, frames, steps, f"image_prompt={image}",
                                         f"subject={SUBJECT}", "method.fine=true", "method.position_encoding=true")
    video_pipe = animatediff_pipe(ctx, settings)
    encoder, processor = ctx.components.image_encoder
    # The method's parts at this scale (what `ImagePrompt.load` returns): the shared AnimateDiff pipeline, a random
    # mapper + K, V copies + exemplar projections, the CLIP ViT-L/14 vision tower. `generate` installs the adapter's
    # processors on the shared UNet and puts the originals back after every video.
    loaded = ImagePromptModels(video_pipe, ctx.components.image_prompt_adapter(video_pipe.unet), encoder, processor)
    models = {"unet": video_pipe.unet}  # the exemplar passes are UNet calls too (one frame, the conditional video)
    animatediff_run = Run("stylevid animatediff", lambda: base_method.generate(
        AnimateDiffModels(video_pipe, None), base, StageReporter()), models)
    # Its "image prompt" stage (CLIP layers, mapper, composed text, the exemplar's VAE latent) ends in a .cpu().
    image_prompt_run = Run("stylevid image_prompt", lambda: method.generate(loaded, settings, StageReporter()), models,
                           stages=("image prompt",))
    bare = Run("bare loop (image_prompt's calls, plain attention)",
               BareLoop(models, image_prompt_run, video_pipe.scheduler.config), models)
    mapper = loaded.adapter.mapper.config
    return Plan(
        work={"size": size, "frames": frames, "steps": steps, "guidance_scale": settings.guidance_scale,
              "beta_schedule": settings.beta_schedule, "subject": SUBJECT, "fine": settings.fine,
              "position_encoding": settings.position_encoding, "clip_layers": list(mapper.clip_layers),
              "num_tokens": int(mapper.num_tokens), "mapper_width": int(mapper.hidden_dim)},
        runs=[animatediff_run, image_prompt_run, bare],
        checks=[Check("stylevid image_prompt / animatediff", image_prompt_run.name, animatediff_run.name, limit=1.3,
                      target="<= 1.30"),
                Check("peak memory: image_prompt / animatediff", image_prompt_run.name, animatediff_run.name, "peak_mib"),
                Check("stylevid image_prompt / bare loop: injection + encoding + pipeline", image_prompt_run.name, bare.name)],
        same_work=[(image_prompt_run.name, bare.name)],
    )


ROWS: dict[str, Callable[[Context], Plan]] = {
    "t2v_zero": t2v_zero_row,
    "animatediff": animatediff_row,
    "train_motion_module": train_motion_module_row,
    "long_video": long_video_row,
    "stylet2v0": stylet2v0_row,
    "animatediff_controlnet": animatediff_controlnet_row,
    "train_videogen_base": functools.partial(videogen_row, kind="base"),
    "train_videogen_sr": functools.partial(videogen_row, kind="sr"),
    "train_gen1": train_gen1_row,
    "image_prompt": image_prompt_row,
    "train_image_prompt": train_image_prompt_row,
}


# --- the report -------------------------------------------------------------------------------------------------------


def _number(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(result: dict) -> str:
    options = result["options"]
    lines = [
        f"## stylevid device benchmark: {result['gpu']}, {options['preset']}, {options['dtype']}, {result['date']}",
        "",
        f"torch {result['versions']['torch']}, diffusers {result['versions']['diffusers']}; attention: SDPA; "
        f"compile: {options['compile']}; channels_last: {options['channels_last']}; median of up to {options['repeats']} "
        "alternating runs after warm-up" + (" (compile time excluded: first calls in the JSON's warmup_s)" if options["compile"] else ""),
        "",
        "| row | run | time (s) | peak (MiB) | model calls | ratio | target | result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    verdicts = {True: "pass", False: "**miss**", None: ""}
    for row in result["rows"]:
        if row["status"] != "measured":
            lines.append(f"| {row['name']} | {row['status']}: {row['reason']} | | | | | | |")
            continue
        for name, run in row["runs"].items():
            calls = ", ".join(f"{model} {count}" for model, count in run["model_calls"].items())
            lines.append(f"| {row['name']} | {name} | {_number(run['time_s'], 3)} | {_number(run['peak_mib'], 0)} | {calls} | | | |")
            for stage, seconds in run.get("stages_s", {}).items():
                lines.append(f"| {row['name']} | {name}: its {stage} stage | {_number(seconds, 3)} | | | | | |")
        for check in row["checks"]:
            value = "" if check["quantity"] == "work_digest" else _number(check["value"], 3)
            lines.append(f"| {row['name']} | {check['name']} | | | | {value} | {check['target']} | {verdicts[check['pass']]} |")
    return "\n".join(lines)


def versions() -> dict:
    import diffusers
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "stylevid_commit": commit or None}


# --- the command ------------------------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserInputError(message)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU, few steps: the code path in seconds")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), metavar="ROW",
                        help=f"rows to measure (default: all): {', '.join(ROWS)}")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on CUDA, fp32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNets' forward (compile time excluded)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last UNets, VAE and ControlNet")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 3; 2 with --smoke)")
    parser.add_argument("--time-budget", type=float, default=420.0,
                        help="seconds of measuring; later rows are skipped, repeats shrink to fit (default 420)")
    parser.add_argument("--out", type=Path, default=Path("device_benchmark.json"))
    args = parser.parse_args(argv)
    args.rows = [name for item in args.rows for name in item.split(",") if name]
    unknown = [name for name in args.rows if name not in ROWS]
    if unknown:
        raise UserInputError(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    if args.repeats is not None and args.repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.time_budget <= 0:
        raise UserInputError(f"--time-budget must be positive, got {args.time_budget}")
    try:
        args.device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    except RuntimeError:
        raise UserInputError(f"--device {args.device!r} is not a torch device") from None
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("no CUDA device here: the SD 1.5-scale benchmark needs a GPU (--smoke runs the code path on the CPU)")
    if args.device.type != "cuda" and not args.smoke:
        raise UserInputError(f"SD 1.5 scale on {args.device} would take hours; use a CUDA device, or --smoke")
    args.dtype = args.dtype or ("fp16" if args.device.type == "cuda" else "fp32")
    return args


def run(args: argparse.Namespace) -> dict:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the deprecated-pipeline and progress chatter is not the table
    if args.compile:
        # Every distinct UNet call compiles once: batch sizes (frame 1 alone, all frames, a style row), the attention
        # processors each method installs (stylevid's and diffusers' differ in class), keyword sets. Past dynamo's
        # default limit of 8 it would silently run eagerly, and the figures would not be compiled ones.
        torch._dynamo.config.recompile_limit = 64
    preset = "smoke" if args.smoke else "sd15"
    started = time.perf_counter()
    dtype = DTYPES[args.dtype]
    components = Components(smoke_configs() if args.smoke else SD15, args.device, dtype, args.channels_last, args.compile)
    ctx = Context(components, WORK[preset], args.device, dtype, args.repeats or (2 if args.smoke else 3),
                  warmups=2 if args.compile else 1, deadline=started + args.time_budget)
    result = {
        "benchmark": "scripts/device_benchmark.py",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
        "versions": versions(),
        "options": {"preset": preset, "device": str(args.device), "dtype": args.dtype, "compile": args.compile,
                    "channels_last": args.channels_last, "repeats": ctx.repeats, "warmups": ctx.warmups,
                    "time_budget_s": args.time_budget, "rows": args.rows, "attention": "sdpa",
                    "threads": torch.get_num_threads()},
        "rows": [],
    }
    for name in args.rows:
        row = {"name": name, "status": "measured", "reason": None}
        row_started = time.perf_counter()
        plan = None
        try:
            if time.perf_counter() > ctx.deadline:
                raise Skip(f"--time-budget {args.time_budget:.0f} s used up")
            plan = ROWS[name](ctx)
            row.update(measure(plan, ctx))
        except Skip as skip:
            row.update(status="skipped", reason=str(skip))
        except Exception as error:  # noqa: BLE001 - one broken row must not lose the others' figures on a lent GPU
            import traceback

            traceback.print_exc()
            first = (str(error).strip().splitlines() or [""])[0][:200]
            row.update(status="failed", reason=f"{type(error).__name__}: {first}")
        finally:
            if plan is not None and plan.teardown:
                plan.teardown()
            plan = None
            gc.collect()
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
        row["row_s"] = time.perf_counter() - row_started
        result["rows"].append(row)
        result["elapsed_s"] = time.perf_counter() - started
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")  # after every row: a kill keeps the figures
        print(f"[{result['elapsed_s']:.0f} s] {name}: {row['status']}" + (f" ({row['reason']})" if row["reason"] else ""),
              file=sys.stderr, flush=True)
    print(table(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    try:
        return run(parse(argv))
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # diffusers' and torch's deprecation notes, once per run
    main()
