"""`gen1`: Gen-1's structure- and content-guided video diffusion model, trained in the stages of paper Section 3.4.

  * `content`: SD's UNet (`model=`), inflated (`models.gen1.build_gen1_unet`), its conditioning changed "from CLIP
    text embeddings to CLIP image embeddings" and fine-tuned "on images only": every frame of a batch's clips is an
    image through the image model (temporal layers bypassed and frozen), conditioned on its own CLIP embedding;
  * `temporal`: from the content stage (`gen1.init`), the temporal layers (the identity at the start) train too,
    "jointly on images and videos": a share `gen1.image_batch_share` of the optimizer steps (12.5 %, "we sample
    image batches with a probability of 12.5%") are image batches, the rest video batches;
  * `structure`: from the temporal stage, the 8 structure channels (depth latent + t_s embedding) added at zero
    (`models.gen1.add_structure`), t_s = 0;
  * `structure_ts`: from the structure stage, t_s uniform in {0, ..., `gen1.max_ts`} per clip.

A video batch: every frame VAE-encoded (the target z_0); content c = the CLIP image embedding of a random frame of
the clip ("we encode a random frame in each input video with CLIP"), one cross-attention token; structure s = the
clip's depth (data=toy: the toy world's ground truth; real clips: `gen1.depth_model`, MiDaS DPT-Large in the paper;
either normalised once per clip as the depth annotator's maps are at inference: the toy truth's background 0.25 and
objects 0.9 would otherwise meet maps in [0, 1] at sampling), t_s-blurred, VAE-encoded, with t_s's sinusoidal channels (`models.gen1.structure_condition`). An image batch: the
same frames, each its own image with its own content embedding, through the image model (the image half of the
temporal guidance of eq. 8). Content and structure are each dropped (content to the zero token, as the sampler's
unconditional ∅ and diffusers' image-variation pipeline; structure to zero channels, what a model without the
structure channels sees) with probabilities `gen1.content_dropout` / `gen1.structure_dropout`, independently, as
VideoComposer drops its conditions, so classifier-free guidance works on either. Loss: eq. (6) under
v-parameterisation, the MSE to v = sqrt(ᾱ) ε - sqrt(1-ᾱ) z_0 (`conf/diffusion/gen1.yaml`).

Customization (Section 4.4, `experiment=gen1_customize`): a trained model fine-tuned on a folder of subject images
(`data.subject`), "half of the batch elements are of the subject and the other half belong to the original training
dataset": each batch holds `trainer.batch_size` subject images (image model, their own content embeddings and
estimated depth) beside as many clips of `data=`, and the loss is the mean of the two halves.

Weights: checkpoints (`checkpoints/step_N/weights/`) and the export (`<run>/unet/`) are `models.gen1.save_gen1`
directories (VideoUNet save_pretrained + `gen1.json`: stage, base model, image encoder, schedule, prediction), what
the next stage's `gen1.init=<run>` and `method=gen1` load; the export also writes `<run>/image_encoder/` (the CLIP
vision tower and its processor), so a run directory is method=gen1's weights layout for image content.

DDP note: an image batch leaves the temporal parameters out of the graph. All ranks draw the same kind of batch in a
step (the draw is a function of seed and step only), so globally they are unused together; the target asks the loop
for DDP's `find_unused_parameters` (`ddp_find_unused_parameters`), so they get no gradient and AdamW leaves them as
a single process does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from ... import values
from ...conditions.depth import normalize_depth_per_clip
from ...data.depth_clips import batch_depth, clip_depth, load_depth_annotator, uint8_frames
from ...data.sources import check_video_source
from ...data.videos import collate_clips
from ...errors import UserInputError
from ...models.gen1 import (
    MAX_TS,
    add_structure,
    build_gen1_unet,
    check_content_dim,
    content_embeddings,
    depth_from_maps,
    has_structure,
    load_gen1,
    read_gen1_info,
    resolve_gen1_dir,
    save_gen1,
    structure_condition,
)
from ...models.inflate import VideoUNet
from ..checkpoint import base_model_record, check_same_base, describe_model
from ..diffusion import DiffusionObjective
from . import Step, TrainingTarget, register

log = logging.getLogger(__name__)

STAGES = ("content", "temporal", "structure", "structure_ts")
# The stage names of gen1.json (models.gen1.STAGES) for this target's gen1.stage values.
INFO_STAGE = {"content": "content", "temporal": "temporal", "structure": "structure", "structure_ts": "ts"}
# Which trained stage (gen1.json "stage") each stage starts from: the one before it, or its own (training further).
STARTS_FROM = {"temporal": ("content", "temporal"), "structure": ("temporal", "structure"),
               "structure_ts": ("structure", "ts")}
PREVIOUS = {"temporal": "content", "structure": "temporal", "structure_ts": "structure"}
EXPORT = "unet"
IMAGE_ENCODER_EXPORT = "image_encoder"
# The CLIP whose image embeddings condition SD 1.x (768-d, SD's cross_attention_dim), as SD image variations does.
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"
DEFAULT_DEPTH_MODEL = "Intel/dpt-large"  # Section 3.3: "the MiDaS DPT-Large model"
IMAGE_DRAW_STREAM = 0x6E31  # separates the image/video draw from every other stream seeded by (seed, step)
RECORD_KEYS = {"stage": "gen1.stage", "init": "gen1.init", "image_encoder": "gen1.image_encoder",
               "subject": "data.subject"}


# --- the CLIP towers -------------------------------------------------------------------------------------------------


def clip_reference(source, model_name: str | None, key: str = "gen1.image_encoder") -> str:
    """What `gen1.image_encoder` / `gen1_prior.clip` (`key`) names, `auto` resolved by the base model: `tiny` and
    `toy` pair with their own models (model=tiny, model=toy), anything else with ViT-L/14 (SD 1.x's width); a local
    path as an absolute path, so a record compares equal wherever the run started. A value that is neither a hub id
    nor an existing path is refused here, before anything loads."""
    from ...models.components import is_hub_id

    text = str(source if source is not None else "").strip()
    if not text:
        raise UserInputError(f"{key} is not set; pass {key}=<hub id | local directory | tiny | toy | auto>")
    if text == "auto":
        return model_name if model_name in ("tiny", "toy") else DEFAULT_IMAGE_ENCODER
    if text in ("tiny", "toy"):
        return text
    local = Path(text).expanduser()
    if local.exists():
        return str(local.resolve())
    if not is_hub_id(text):
        raise UserInputError(f"{key}={text} does not exist; pass a local CLIP directory, a hub id, tiny, toy or auto")
    return text


def _towers_of(clip_model, vision: bool, text: bool) -> tuple:
    """The vision / text towers with their projections out of a `CLIPModel`, as standalone
    `CLIPVisionModelWithProjection` / `CLIPTextModelWithProjection`.

    Why by hand: a CLIPModel checkpoint keeps the projection width in its top-level `projection_dim`, while
    `CLIP*ModelWithProjection.from_pretrained` reads the sub-config's, which can differ (the toy CLIP: 64 against 512)
    and then refuses the weights. The towers' keys are the CLIPModel's own, so the state dict loads strictly."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    state = clip_model.state_dict()
    parts = []
    for wanted, cls, config in ((vision, CLIPVisionModelWithProjection, clip_model.config.vision_config),
                                (text, CLIPTextModelWithProjection, clip_model.config.text_config)):
        if not wanted:
            parts.append(None)
            continue
        config = config.__class__.from_dict(config.to_dict())
        config.projection_dim = clip_model.config.projection_dim
        tower = cls(config)
        tower.load_state_dict({key: state[key] for key in tower.state_dict()}, strict=True)
        parts.append(tower.eval())
    return tuple(parts)


def load_clip(reference: str, key: str, *, vision: bool = True, text: bool = False, tiny_dim: int | None = None) -> dict:
    """{"image_encoder", "feature_extractor", "text_encoder", "tokenizer"} of the CLIP `reference` names (the parts not
    asked for are None): `tiny` (seeded random towers of `models.gen1`, `tiny_dim` wide), `toy` (the toy world's
    CLIP), or a hub id / local directory holding a `CLIPModel` (both towers) or a `CLIPVisionModelWithProjection`
    (vision only). Every failure is one line naming `key`."""
    from transformers import AutoConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer, CLIPVisionModelWithProjection

    from ...models.components import load_component
    from ...models.gen1 import default_feature_extractor, tiny_image_encoder, tiny_prior

    parts = {"image_encoder": None, "feature_extractor": None, "text_encoder": None, "tokenizer": None}
    if reference == "tiny":
        if vision:
            parts["image_encoder"], parts["feature_extractor"] = tiny_image_encoder(0, embed_dim=tiny_dim)
        if text:
            _, parts["text_encoder"], parts["tokenizer"], _ = tiny_prior(0, embed_dim=tiny_dim)
        return parts
    if reference == "toy":
        from ...toy import toy_path

        reference = str(toy_path("clip"))
    config = load_component(reference, key=key, pretrained=AutoConfig.from_pretrained, what="a CLIP model")
    if config.model_type == "clip":
        model = load_component(reference, key=key, pretrained=CLIPModel.from_pretrained, what="a CLIPModel")
        parts["image_encoder"], parts["text_encoder"] = _towers_of(model, vision, text)
    elif config.model_type == "clip_vision_model" and not text:
        parts["image_encoder"] = load_component(reference, key=key, pretrained=CLIPVisionModelWithProjection.from_pretrained,
                                                what="a CLIPVisionModelWithProjection").eval()
    else:
        wanted = "a CLIPModel (text and vision towers)" if text else "a CLIPModel or CLIPVisionModelWithProjection"
        raise UserInputError(f"{key}={reference} is a {config.model_type} model, not {wanted}")
    if vision:
        # The checkpoint's own preprocessing when it has one (PIL: transformers' default needs torchvision).
        try:
            parts["feature_extractor"] = load_component(reference, key=key, pretrained=CLIPImageProcessorPil.from_pretrained,
                                                        required_file=None, what="a CLIP image processor")
        except (UserInputError, OSError, ValueError):
            parts["feature_extractor"] = default_feature_extractor(parts["image_encoder"])
    if text:
        parts["tokenizer"] = load_component(reference, key=key, pretrained=CLIPTokenizer.from_pretrained,
                                            required_file="tokenizer_config.json", what="a CLIP tokenizer")
    return parts


# --- customization data ------------------------------------------------------------------------------------------------


class SubjectMix(Dataset):
    """The original clips, each item paired with one subject image (Section 4.4: half of every batch is the subject).

    As long as the clip data; subject image `index mod len(subject)` goes with clip `index`, so every subject image
    recurs once per pass over its count, in the sampler's shuffled order, and an item is a function of its index."""

    def __init__(self, clips: Dataset, subject_files: list[Path], size: int, flip: bool, seed: int):
        self.clips, self.files, self.size, self.flip, self.seed = clips, list(subject_files), int(size), bool(flip), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.clips, "set_epoch"):
            self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        from ...data.images import load_pixels

        item = dict(self.clips[index])
        flip = self.flip and bool(np.random.default_rng([self.seed, self.epoch, index, 1]).random() < 0.5)
        item["subject_pixel_values"] = load_pixels(self.files[index % len(self.files)], self.size, flip)
        return item


def collate_gen1(items: list[dict]) -> dict:
    """`collate_clips` plus the clips' depth maps (B, F, H, W) and the subject images (B, 3, H, W) when present."""
    batch = collate_clips(items)
    if "depth" in items[0]:
        batch["depth"] = torch.stack([item["depth"] for item in items])
    if "subject_pixel_values" in items[0]:
        batch["subject_pixel_values"] = torch.stack([item["subject_pixel_values"] for item in items])
        batch["subjects"] = len(items)
    return batch


def image_batch_drawn(seed: int, step: int, share: float) -> bool:
    """Whether optimizer step `step` is an image batch: a draw of probability `share` from a generator seeded by
    (seed, step) only. Not from the micro-batch's generator (seeded by rank and micro-batch too): every rank and every
    micro-batch of a step must train the same kind of batch (an image batch's global batch is all images, and DDP
    needs the ranks to use the same parameters); a resumed run repeats the draw."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    state = np.random.SeedSequence([int(seed), int(step), IMAGE_DRAW_STREAM]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return bool(torch.rand((), generator=generator) < share)


def ts_distribution(weights, max_ts: int) -> torch.Tensor | None:
    """`gen1.ts_weights` as the probabilities of t_s = 0, ..., max_ts; None (unset) is the paper's uniform draw."""
    if weights is None:
        return None
    key = "gen1.ts_weights"
    if isinstance(weights, (str, int, float)) or not hasattr(weights, "__len__"):
        raise UserInputError(f"{key} must be a list of {max_ts + 1} weights (t_s = 0..gen1.max_ts), got {weights!r}")
    if len(weights) != max_ts + 1:
        raise UserInputError(f"{key} holds {len(weights)} weights; gen1.max_ts={max_ts} takes {max_ts + 1} (t_s = 0..{max_ts})")
    probabilities = torch.tensor([values.number(w, f"{key}[{i}]", 0, None) for i, w in enumerate(weights)], dtype=torch.float64)
    if probabilities.sum() <= 0:
        raise UserInputError(f"{key} has no positive weight")
    return probabilities / probabilities.sum()


# --- the target ------------------------------------------------------------------------------------------------------


@register
class Gen1(TrainingTarget):
    name = "gen1"
    description = "Gen-1's depth-structure + CLIP-content video model, stage by stage (content, temporal, structure, structure_ts)"
    example = "gen1.stage=content data=webvid data.csv=results_2M_train.csv data.video_folder=videos/"
    ddp_find_unused_parameters = True  # image batches bypass the temporal layers (module docstring)

    # --- before anything loads -----------------------------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg) -> None:
        gen1, data = cfg.gen1, cfg.data
        if OmegaConf.is_missing(data, "subject"):  # experiment=gen1_customize asks for it
            raise UserInputError("data.subject is required by customization: pass data.subject=<a folder of 15-30 subject images>")
        stage = gen1.get("stage")
        if stage not in STAGES:
            raise UserInputError(f"gen1.stage must be one of {', '.join(STAGES)}, got {stage!r}")
        check_video_source(cfg, cls.name)
        values.number(gen1.image_batch_share, "gen1.image_batch_share", 0, 1)
        values.number(gen1.content_dropout, "gen1.content_dropout", 0, 1)
        values.number(gen1.structure_dropout, "gen1.structure_dropout", 0, 1)
        max_ts = values.integer(gen1.max_ts, "gen1.max_ts", 0, MAX_TS)
        if ts_distribution(gen1.get("ts_weights"), max_ts) is not None and stage != "structure_ts":
            raise UserInputError(f"gen1.ts_weights is for gen1.stage=structure_ts (the stages before it train at t_s = 0), "
                                 f"not gen1.stage={stage}")
        if not isinstance(gen1.frame_position_encoding, bool):
            raise UserInputError(f"gen1.frame_position_encoding must be true or false, got {gen1.frame_position_encoding!r}")
        max_frames = values.integer(gen1.max_frames, "gen1.max_frames", 1, None)
        if stage == "content" and gen1.frame_position_encoding and int(data.frames) > max_frames:
            raise UserInputError(f"data.frames={data.frames} exceeds gen1.max_frames={max_frames}")
        reference = clip_reference(gen1.image_encoder, cfg.model.get("name"))
        if needs_annotator(cfg) and not str(gen1.get("depth_model") or "").strip():
            raise UserInputError("gen1.depth_model is not set; the structure stages estimate the depth of real clips "
                                 "and subject images with it (e.g. gen1.depth_model=Intel/dpt-large)")
        subject = data.get("subject")
        if subject:
            from ...data.images import image_files

            if stage == "content" or not gen1.get("init"):
                raise UserInputError("data.subject (customization) fine-tunes a trained Gen-1 model: pass gen1.init=<its run> "
                                     "and a gen1.stage after content")
            if not image_files(subject, "data.subject"):
                raise UserInputError(f"data.subject={subject} holds no images (png, jpg, jpeg or webp)")
        if stage == "content":
            if gen1.get("init"):
                raise UserInputError("gen1.init is for the stages after content; the content stage starts from the SD UNet of "
                                     "model= (continue a content run with trainer.resume=)")
            return
        if not gen1.get("init"):
            raise UserInputError(f"gen1.stage={stage} needs gen1.init=<the trained {PREVIOUS[stage]} stage: its run "
                                 "directory, unet/ or a checkpoint>")
        init_dir = resolve_gen1_dir(gen1.init, "gen1.init")
        info = read_gen1_info(init_dir, "gen1.init")
        if info["stage"] not in STARTS_FROM[stage]:
            raise UserInputError(f"gen1.init={init_dir} is a {info['stage']} model; gen1.stage={stage} starts from the "
                                 f"{PREVIOUS[stage]} stage (or its own)")
        if info.get("image_encoder") not in (None, reference):
            raise UserInputError(f"gen1.init={init_dir} was trained on the content embeddings of "
                                 f"gen1.image_encoder={info['image_encoder']}, this run's is {reference}; pass that encoder")

    # --- construction --------------------------------------------------------------------------------------------

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        from ...data.sources import clip_dataset
        from ...models.loading import load_pipeline

        gen1, data = cfg.gen1, cfg.data
        self.stage = str(gen1.stage)
        self.objective = DiffusionObjective.from_config(cfg.diffusion)
        self.image_batch_share = 1.0 if self.stage == "content" else float(gen1.image_batch_share)
        self.content_dropout, self.structure_dropout = float(gen1.content_dropout), float(gen1.structure_dropout)
        self.max_ts = int(gen1.max_ts) if self.stage == "structure_ts" else 0
        self.ts_weights = ts_distribution(gen1.get("ts_weights"), self.max_ts) if self.stage == "structure_ts" else None
        self.structure = self.stage in ("structure", "structure_ts")
        self.image_encoder_ref = clip_reference(gen1.image_encoder, cfg.model.get("name"))
        self.init_dir = resolve_gen1_dir(gen1.init, "gen1.init") if self.stage != "content" else None
        self.subject_files = []
        if data.get("subject"):
            from ...data.images import image_files

            self.subject_files = image_files(data.subject, "data.subject")
            if not 15 <= len(self.subject_files) <= 30:
                log.info("data.subject holds %d images; the paper customizes on 15-30", len(self.subject_files))

        # The clips: with ground-truth depth on the toy world, estimated depth (in the step) on real clips.
        if data.name == "toy":
            from ...data.toy_clips import toy_clip_dataset

            clips = toy_clip_dataset(data, int(cfg.seed), depth=self.structure)
        else:
            clips = clip_dataset(cfg, self.name, captions=False)  # Gen-1 trains on uncaptioned video (Section 3.3)
        self.videos = clips
        self.items = SubjectMix(clips, self.subject_files, int(data.size), bool(data.get("flip", False)), int(cfg.seed)) \
            if self.subject_files else clips

        # Frozen parts: SD's VAE (latents of frames and of depth maps), the CLIP vision tower, the depth annotator.
        pipe = load_pipeline(cfg.model, torch.float32)
        self.vae = pipe.vae
        self.base_model = base_model_record(cfg.model, pipe.unet)
        clip = load_clip(self.image_encoder_ref, "gen1.image_encoder", vision=True,
                         tiny_dim=int(pipe.unet.config.cross_attention_dim))
        self.image_encoder, self.feature_extractor = clip["image_encoder"], clip["feature_extractor"]
        embed_dim = int(self.image_encoder.config.projection_dim)
        self.annotator = load_depth_annotator(str(gen1.depth_model), device) if needs_annotator(cfg) else None

        # The widest blur the weights have been trained on: this run's, or its init's when that is wider (structure_ts
        # at gen1.max_ts=0 from a ts model keeps what the model learnt of t_s > 0; method=gen1 warns beyond it).
        self.trained_max_ts = self.max_ts
        if self.stage == "content":
            self.unet = build_gen1_unet(pipe.unet, structure=False, frame_position_encoding=bool(gen1.frame_position_encoding),
                                        max_frames=int(gen1.max_frames), image_embed_dim=embed_dim)
        else:
            below, info = load_gen1(self.init_dir, "gen1.init")
            recorded = info.get("base_model")
            if recorded and (describe_model(recorded) != describe_model(self.base_model)
                             or recorded.get("unet") != self.base_model["unet"]):
                raise UserInputError(
                    f"gen1.init={self.init_dir} was trained on base model {describe_model(recorded)}, this run's model is "
                    f"{describe_model(self.base_model)}: its latents come from that model's VAE; pass that model")
            check_content_dim(below, embed_dim, "gen1.image_encoder")
            if self.structure:
                recorded_max_ts = info.get("trained_max_ts", MAX_TS if info.get("stage") == "ts" else 0)
                self.trained_max_ts = max(self.max_ts, int(recorded_max_ts))
            # Section 3.4: "We then add conditioning on structure s": 8 zero input channels on the trained model.
            self.unet = add_structure(below) if self.structure and not has_structure(below) else below
            if has_structure(self.unet) != self.structure:
                raise UserInputError(f"gen1.init={self.init_dir} takes the structure channels; gen1.stage={self.stage} "
                                     "trains a model without them")
        del pipe
        frames = int(data.frames)
        if self.unet.config.frame_position_encoding and frames > self.unet.config.max_frames:
            raise UserInputError(f"data.frames={frames} exceeds the model's max_frames={self.unet.config.max_frames}")

        for module in (self.vae, self.image_encoder):
            module.requires_grad_(False)
            module.eval().to(device, weight_dtype)
        self.unet.train().to(device)
        # content: the image model alone trains (the temporal layers are bypassed, so they would get no gradient);
        # later stages train every weight (Section 3.4 trains the model as a whole at every stage).
        trainable = {name for name, _ in (self.unet.spatial_parameters() if self.stage == "content"
                                          else self.unet.named_parameters())}
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(name in trainable)
            if not parameter.requires_grad:
                parameter.data = parameter.data.to(weight_dtype)

    @property
    def model(self) -> VideoUNet:
        return self.unet

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()  # VideoUNet's own (UNet3DConditionModel has none)

    # --- data ------------------------------------------------------------------------------------------------------

    def dataset(self):
        return self.items

    def collate(self, items):
        return collate_gen1(items)

    def is_image_batch(self, step: int) -> bool:
        return image_batch_drawn(int(self.cfg.seed), step, self.image_batch_share)

    # --- conditions ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) pixels -> scaled latents (N, 4, H/8, W/8), a posterior sample (SD's training)."""
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return posterior.sample(generator=generator).float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def content(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (N, 1, D) of (N, 3, H, W) pixels, as the sampler computes them from an image."""
        return content_embeddings(self.image_encoder, self.feature_extractor, uint8_frames(pixels), device=self.device).float()

    @torch.no_grad()
    def structure_input(self, depth: np.ndarray, ts: list[int]) -> torch.Tensor:
        """(B, 8, F, h, w) structure channels of B clips' depth (B, F, H, W) in [0, 1] at their t_s."""
        conditions = [structure_condition(self.vae, clip, int(level), device=self.device) for clip, level in zip(depth, ts)]
        return torch.stack(conditions).permute(0, 2, 1, 3, 4).float()

    def clip_depth(self, batch) -> np.ndarray:
        """(B, F, H, W) in [0, 1]: the toy world's ground truth or the annotator's estimate, either way normalised
        once per clip and quantised as the annotator's maps are, which is what the sampler gives the model."""
        if "depth" in batch:
            return np.stack([depth_from_maps(normalize_depth_per_clip(clip)) for clip in batch["depth"].numpy()])
        return batch_depth(self.annotator, batch["pixel_values"])

    def conditions(self, pixels: torch.Tensor, depth: np.ndarray | None, image_batch: bool, generator: torch.Generator):
        """(latents, content, structure) of a batch of clips (B, F, 3, H, W), as images (N = B*F: (N, 4, h, w),
        (N, 1, D), (N, 8, h, w)) or as videos ((B, 4, F, h, w), (B, 1, D), (B, 8, F, h, w)); dropped conditions are
        zeros. The same draws in the same order in both modes."""
        batch_size, frames = pixels.shape[:2]
        latents = self.encode(pixels.flatten(0, 1), generator)  # (B*F, 4, h, w)
        chosen = torch.randint(0, frames, (batch_size,), generator=generator)  # "a random frame in each input video"
        if image_batch:  # an image is its own content
            content = self.content(pixels.flatten(0, 1))
        else:
            content = self.content(pixels[torch.arange(batch_size), chosen])
            latents = latents.unflatten(0, (batch_size, frames)).permute(0, 2, 1, 3, 4)
        count = content.shape[0]
        keep_content = (torch.rand(count, generator=generator) >= self.content_dropout).to(self.device)
        content = content * keep_content.view(-1, 1, 1)
        if self.ts_weights is None:  # the paper: uniform
            ts = torch.randint(0, self.max_ts + 1, (batch_size,), generator=generator)
        else:
            ts = torch.multinomial(self.ts_weights, batch_size, replacement=True, generator=generator)
        keep_structure = (torch.rand(count, generator=generator) >= self.structure_dropout).to(self.device)
        structure = None
        if self.structure:
            structure = self.structure_input(depth, ts.tolist())  # (B, 8, F, h, w)
            if image_batch:
                structure = structure.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*F, 8, h, w)
            structure = structure * keep_structure.view(-1, *([1] * (structure.ndim - 1)))
        return latents, content, structure

    # --- the objective ---------------------------------------------------------------------------------------------

    def denoising_loss(self, model, latents, content, structure, image_batch: bool, generator) -> torch.Tensor:
        """Eq. (6) with the v-target (or ε, `diffusion.prediction`) on clean latents and their conditions."""
        objective = self.objective
        with torch.no_grad():
            noise = objective.noise(latents, generator)
            timesteps = objective.timesteps(latents.shape[0], generator)
            noisy = objective.add_noise(latents, noise, timesteps)
            # The temporal convs' dropout (diffusers' TemporalConvLayer) draws from torch's global generator: seeded
            # from this micro-batch's generator, its masks are a function of (seed, step, micro, rank) (exact resume).
            dropout_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(dropout_seed)
            prediction = model(noisy, timesteps.to(self.device), encoder_hidden_states=content, extra_input=structure,
                               image_mode=image_batch).sample
        return objective.loss(prediction, latents, noise, timesteps)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        generator = at.generator
        image_batch = self.is_image_batch(at.step)
        pixels = batch["pixel_values"]  # (B, F, 3, H, W)
        depth = self.clip_depth(batch) if self.structure else None
        latents, content, structure = self.conditions(pixels, depth, image_batch, generator)
        loss = self.denoising_loss(model, latents, content, structure, image_batch, generator)
        if "subject_pixel_values" not in batch:
            return loss
        # Section 4.4: the other half of the batch, the subject's images, through the image model.
        subject = batch["subject_pixel_values"][:, None]  # (S, 1, 3, H, W): each image a one-frame clip
        subject_depth = None
        if self.structure:
            subject_depth = np.stack([clip_depth(self.annotator, frames) for frames in uint8_frames(subject)])
        latents, content, structure = self.conditions(subject, subject_depth, True, generator)
        return 0.5 * (loss + self.denoising_loss(model, latents, content, structure, True, generator))

    # --- weights ---------------------------------------------------------------------------------------------------

    def info(self) -> dict:
        diffusion = self.cfg.diffusion
        return {"stage": INFO_STAGE[self.stage], "base_model": self.base_model, "image_encoder": self.image_encoder_ref,
                "schedule": str(diffusion.schedule), "prediction": str(diffusion.get("prediction", "epsilon")),
                "max_ts": MAX_TS, "trained_max_ts": self.trained_max_ts, "init": str(self.init_dir.resolve()) if self.init_dir else None,
                "customized_on": str(Path(str(self.cfg.data.subject)).expanduser().resolve()) if self.subject_files else None,
                "size": int(self.cfg.data.size), "frames": int(self.cfg.data.frames)}

    def save_weights(self, directory: Path, state_dict) -> None:
        save_gen1(directory, self.unet, self.info(), state_dict)

    def load_weights(self, directory: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(resolve_gen1_dir(directory, "trainer.resume") / "diffusion_pytorch_model.safetensors"))
        self.unet.load_state_dict(state, strict=True)

    def export(self, run_dir: Path, state_dict) -> dict:
        """`<run>/unet/` and, beside it, `<run>/image_encoder/` (the frozen CLIP vision tower and its processor, whose
        embeddings the UNet learned to read): the two parts of method=gen1's weights directory that training makes
        (the prior/ part comes from `stylevid train gen1_prior`)."""
        save_gen1(run_dir / EXPORT, self.unet, self.info(), state_dict)
        encoder_dir = run_dir / IMAGE_ENCODER_EXPORT
        self.image_encoder.to(torch.float32).save_pretrained(str(encoder_dir), safe_serialization=True)
        self.feature_extractor.save_pretrained(str(encoder_dir))
        return {"gen1_unet": f"{EXPORT}/", "image_encoder": f"{IMAGE_ENCODER_EXPORT}/"}

    # --- records ---------------------------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"base_model": self.base_model,
                "gen1": {"stage": self.stage, "init": str(self.init_dir.resolve()) if self.init_dir else None,
                         "image_encoder": self.image_encoder_ref,
                         "subject": str(Path(str(self.cfg.data.subject)).expanduser().resolve()) if self.subject_files else None},
                "unet": {"in_channels": int(self.unet.config.in_channels),
                         "frame_position_encoding": bool(self.unet.config.frame_position_encoding)}}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        """One line naming the setting when the checkpoint is of another base model, stage, init, image encoder or
        subject (another stage is another model and another trainable set, which the optimizer state cannot take)."""
        check_same_base(path, recorded.get("base_model"), self.base_model, f"gen1.init={weights_dir}")
        here = self.record()
        for section, names in (("gen1", RECORD_KEYS), ("unet", {})):
            for key, value in (recorded.get(section) or {}).items():
                if here[section].get(key) != value:
                    setting = names.get(key, f"the model's {key}")
                    raise UserInputError(f"trainer.resume={path} was trained with {setting}={value}, this run has "
                                         f"{here[section].get(key)}; pass the checkpoint's settings to resume it")

    def summary(self) -> dict:
        data = self.cfg.data
        return {"data": {"name": data.name, "videos": len(self.videos), "frames": int(data.frames), "size": int(data.size),
                         "subject_images": len(self.subject_files)},
                "gen1": {"stage": self.stage, "init": str(self.init_dir) if self.init_dir else None,
                         "image_encoder": self.image_encoder_ref, "image_batch_share": self.image_batch_share,
                         "max_ts": self.max_ts,
                         "ts_weights": None if self.ts_weights is None else [round(float(p), 6) for p in self.ts_weights],
                         "depth": ("toy ground truth" if self.annotator is None and self.structure
                                   else str(self.cfg.gen1.depth_model) if self.structure else None)}}


def needs_annotator(cfg) -> bool:
    """Whether a run estimates depth: a structure stage on real clips, or with subject images (no ground truth)."""
    return cfg.gen1.get("stage") in ("structure", "structure_ts") and (cfg.data.get("name") != "toy" or bool(cfg.data.get("subject")))

