"""`gen1_prior`: Gen-1's text -> image-embedding prior (paper Section 3.3: "To support text-based editing at
inference, we train a prior model that allows sampling image embeddings from text embeddings"), a diffusers
`PriorTransformer` as DALL-E 2's (unCLIP) and Kandinsky's priors are.

Pairs come from the same clip data as the video model (`data=webvid | folder | toy`, with captions): the caption of
a clip, and the CLIP image embedding of a random frame of it (`models.gen1.content_embeddings`, exactly the content
token the Gen-1 UNet is conditioned on). The caption is encoded by the text tower of the same CLIP
(`gen1_prior.clip`): its projected `text_embeds` (B, D) and its token states (B, L, D) with their mask, as
diffusers' `KandinskyPriorPipeline` feeds the prior; it is dropped to "" with probability `gen1_prior.caption_dropout`
(that pipeline's classifier-free guidance takes "" as its negative prompt).

The objective is unCLIP's: the prior predicts the clean image embedding x_0 itself, not ε (DALL-E 2, Section 2.2:
predicting the unnoised embedding directly works better; Kandinsky's prior and its `UnCLIPScheduler` with
`prediction_type="sample"` do the same). A clean-embedding target weighs every timestep alike in embedding space,
where the sampler's result is judged (an ε-MSE would barely train the noisiest steps, where the embedding is
decided), and the scheduler's `clip_sample` then bounds each step's x_0. Embeddings are standardised per dimension
with the statistics of the data's image embeddings (`gen1_prior.stats_items` clips, every frame): the prior's
`clip_mean` / `clip_std`, which `PriorTransformer.post_process_latents` undoes after sampling. Noise: the squared-
cosine schedule of unCLIP's scheduler, which the export carries, so training and sampling share the same ᾱ_t.

Export `<run>/prior/`: the PriorTransformer (save_pretrained, statistics inside), text_encoder/ and tokenizer/ (the
text tower it reads), scheduler/ (UnCLIPScheduler) and prior.json (the CLIP reference, the objective, the
statistics' source): what `models.gen1.load_prior` and `method=gen1` read. Checkpoints hold the prior alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ... import values
from ...data.depth_clips import uint8_frames
from ...data.sources import check_video_source
from ...data.videos import collate_clips
from ...errors import UserInputError
from ...models.gen1 import content_embeddings
from . import Step, TrainingTarget, register
from .gen1 import clip_reference, load_clip

EXPORT = "prior"
PRIOR_FILE = "prior.json"
# Kandinsky's prior scheduler: unCLIP's squared-cosine betas, x_0 prediction, x_0 clipped to +-10 (standardised units).
SCHEDULER = {"variance_type": "fixed_small_log", "prediction_type": "sample", "num_train_timesteps": 1000,
             "clip_sample": True, "clip_sample_range": 10.0}
RECORD_KEYS = {"clip": "gen1_prior.clip", "num_layers": "gen1_prior.num_layers",
               "num_attention_heads": "gen1_prior.num_attention_heads", "attention_head_dim": "gen1_prior.attention_head_dim"}


def prior_scheduler():
    from diffusers import UnCLIPScheduler

    return UnCLIPScheduler(**SCHEDULER)


@register
class Gen1Prior(TrainingTarget):
    name = "gen1_prior"
    description = "Gen-1's prior: a diffusers PriorTransformer from CLIP text to CLIP image embeddings (x0-prediction, as unCLIP)"
    example = "data=webvid data.csv=results_2M_train.csv data.video_folder=videos/"

    @classmethod
    def check_config(cls, cfg) -> None:
        prior = cfg.gen1_prior
        check_video_source(cfg, cls.name)
        for key in ("num_layers", "num_attention_heads", "attention_head_dim"):
            values.integer(prior.get(key), f"gen1_prior.{key}", 1, None)
        values.integer(prior.stats_items, "gen1_prior.stats_items", 2, None)
        values.number(prior.caption_dropout, "gen1_prior.caption_dropout", 0, 1)
        clip_reference(prior.clip, cfg.model.get("name"), "gen1_prior.clip")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        from diffusers import PriorTransformer

        from ...data.sources import clip_dataset

        settings = cfg.gen1_prior
        self.reference = clip_reference(settings.clip, cfg.model.get("name"), "gen1_prior.clip")
        self.caption_dropout = float(settings.caption_dropout)
        self.videos = clip_dataset(cfg, self.name)  # captions required: they are the prior's input
        clip = load_clip(self.reference, "gen1_prior.clip", vision=True, text=True)
        self.image_encoder, self.feature_extractor = clip["image_encoder"], clip["feature_extractor"]
        self.text_encoder, self.tokenizer = clip["text_encoder"], clip["tokenizer"]
        image_dim = int(self.image_encoder.config.projection_dim)
        text_config = self.text_encoder.config
        if int(text_config.projection_dim) != image_dim or int(text_config.hidden_size) != image_dim:
            # PriorTransformer projects the token states with Linear(embedding_dim, ...): they must be as wide.
            raise UserInputError(
                f"gen1_prior.clip={self.reference}: the text tower is {text_config.hidden_size} wide with {text_config.projection_dim}-d "
                f"projections and the image embeddings {image_dim}-d; the prior needs all three equal (a CLIP such as ViT-L/14)")
        for module in (self.image_encoder, self.text_encoder):
            module.requires_grad_(False)
            module.eval().to(device, weight_dtype)
        self.scheduler = prior_scheduler()

        self.settings = {"num_layers": int(settings.num_layers), "num_attention_heads": int(settings.num_attention_heads),
                         "attention_head_dim": int(settings.attention_head_dim)}
        torch.manual_seed(int(cfg.seed))  # the prior's initialisation does not depend on what ran before
        self.prior = PriorTransformer(embedding_dim=image_dim, num_embeddings=int(self.tokenizer.model_max_length),
                                      additional_embeddings=4, **self.settings)
        self.stats_items = min(int(settings.stats_items), len(self.videos))
        mean, std = self.embedding_statistics(self.stats_items)
        with torch.no_grad():
            self.prior.clip_mean.copy_(mean)
            self.prior.clip_std.copy_(std)
        # The statistics are data, not weights: AdamW (and its weight decay) must not move them.
        self.prior.clip_mean.requires_grad_(False)
        self.prior.clip_std.requires_grad_(False)
        self.prior.train().to(device)

    # --- data ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (N, D) of (N, 3, H, W) pixels in [-1, 1]: Gen-1's content tokens, unstandardised."""
        return content_embeddings(self.image_encoder, self.feature_extractor, uint8_frames(pixels), device=self.device)[:, 0].float()

    @torch.no_grad()
    def embedding_statistics(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std (1, D) of the image embeddings of every frame of clips 0..count-1 (epoch 0):
        the same on every rank and on resume, as they depend on the data and the CLIP only."""
        embeddings = torch.cat([self.image_embeddings(self.videos[index]["pixel_values"]) for index in range(count)])
        mean = embeddings.mean(0, keepdim=True)
        # A dimension constant over the sample would divide by zero; its standardised value is then just centred.
        std = embeddings.std(0, keepdim=True).clamp(min=1e-4)
        if hasattr(self.videos, "set_epoch"):
            self.videos.set_epoch(0)
        return mean.cpu(), std.cpu()

    def dataset(self):
        return self.videos

    def collate(self, items):
        return collate_clips(items)

    @property
    def model(self):
        return self.prior

    def trainable_parameters(self):
        return [p for p in self.prior.parameters() if p.requires_grad]

    # --- the objective ---------------------------------------------------------------------------------------------

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text_embeds (B, D), token states (B, L, D), mask (B, L) bool), as KandinskyPriorPipeline encodes prompts."""
        inputs = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        output = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=inputs.attention_mask.to(self.device))
        return output.text_embeds.float(), output.last_hidden_state.float(), inputs.attention_mask.bool().to(self.device)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        generator = at.generator
        pixels = batch["pixel_values"]  # (B, F, 3, H, W)
        batch_size, frames = pixels.shape[:2]
        with torch.no_grad():
            chosen = torch.randint(0, frames, (batch_size,), generator=generator)  # a random frame of each clip
            embeddings = self.image_embeddings(pixels[torch.arange(batch_size), chosen])
            clean = (embeddings - self.prior.clip_mean.to(self.device)) / self.prior.clip_std.to(self.device)
            dropped = torch.rand(batch_size, generator=generator) < self.caption_dropout
            captions = ["" if drop else caption for drop, caption in zip(dropped.tolist(), batch["captions"])]
            text_embeds, text_states, mask = self.encode_text(captions)
            noise = torch.randn(clean.shape, generator=generator).to(self.device)
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
            noisy = self.scheduler.add_noise(clean, noise, timesteps.to(self.device))
        prediction = model(noisy, timesteps.to(self.device), proj_embedding=text_embeds, encoder_hidden_states=text_states,
                           attention_mask=mask).predicted_image_embedding
        return F.mse_loss(prediction.float(), clean)  # x_0-prediction (unCLIP): the target is the clean embedding

    # --- weights ---------------------------------------------------------------------------------------------------

    def _write_prior(self, directory: Path, state_dict) -> None:
        from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        state = {key.removeprefix("module."): value.detach().to("cpu", torch.float32).contiguous()
                 for key, value in state_dict.items()}
        self.prior.save_config(str(directory))
        save_file(state, str(directory / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    def save_weights(self, directory: Path, state_dict) -> None:
        self._write_prior(Path(directory), state_dict)

    def load_weights(self, directory: Path) -> None:
        from safetensors.torch import load_file

        file = Path(directory) / "diffusion_pytorch_model.safetensors"
        if not file.is_file():
            raise UserInputError(f"trainer.resume: {file} is missing")
        self.prior.load_state_dict(load_file(str(file)), strict=True)

    def export(self, run_dir: Path, state_dict) -> dict:
        directory = run_dir / EXPORT
        self._write_prior(directory, state_dict)
        self.text_encoder.to(torch.float32).save_pretrained(str(directory / "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        self.scheduler.save_pretrained(str(directory / "scheduler"))
        record = {"format": "stylevid-gen1-prior", "clip": self.reference, "objective": "sample",
                  "normalisation": {"what": "per-dimension mean / std of CLIP image embeddings (the prior's clip_mean, "
                                            "clip_std; post_process_latents undoes it)",
                                    "clips": self.stats_items, "data": str(self.cfg.data.name)},
                  "text_max_length": int(self.tokenizer.model_max_length), "embedding_dim": int(self.prior.config.embedding_dim),
                  "caption_dropout": self.caption_dropout}
        (directory / PRIOR_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return {"prior": f"{EXPORT}/"}

    # --- records ---------------------------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"gen1_prior": {"clip": self.reference, **self.settings}}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        here = self.record()["gen1_prior"]
        for key, value in (recorded.get("gen1_prior") or {}).items():
            if here.get(key) != value:
                raise UserInputError(f"trainer.resume={path} was trained with {RECORD_KEYS.get(key, key)}={value}, this run "
                                     f"has {here.get(key)}; pass the checkpoint's settings to resume it")

    def summary(self) -> dict:
        data = self.cfg.data
        return {"data": {"name": data.name, "videos": len(self.videos), "frames": int(data.frames), "size": int(data.size)},
                "gen1_prior": {"clip": self.reference, "stats_clips": self.stats_items, **self.settings}}

