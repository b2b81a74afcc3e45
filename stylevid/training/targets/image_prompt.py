"""`image_prompt`: the image-prompt method's trained parts (VideoBooth-style paper, Sections 3.1-3.3).

On the frozen AnimateDiff video model (`model=` SD 1.x plus `motion.path=`, inflated as method=animatediff does),
text-image-video items (`data=image_prompt`, a folder from scripts/build_image_prompt_dataset.py, or `data=toy`) train
with the shared diffusion objective on the video: z_t of the clip, c_T the caption with the subject word's rows
replaced by the mapper's tokens, and with the fine stage the crop's latent noised to the same t in the exemplar pass.

Section 3.3's coarse-to-fine strategy, `target.stage`:
  coarse  the mapper and the cross-attention K, V copies (the image encoder, text encoder, UNet and motion
          module stay frozen; no exemplar);
  fine    the exemplar projections, from `target.init=` (the coarse run's export), whose mapper and K, V copies
          now stay frozen;
  joint   all of them at once (the paper's ablation: the injection dominates).
A sample whose caption is dropped (`diffusion.caption_dropout`) is also trained without its image prompt (plain
caption, original K, V, no exemplar): the unconditional branch classifier-free guidance samples.

Weights: the `stylevid.models.image_prompt` layout (mapper/, attention_processors.safetensors, manifest.json with the
stages trained and the base model; the export adds image_encoder/), loadable with `method.weights=`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ... import values
from ...data.image_prompt import collate_image_prompt, image_prompt_dataset
from ...errors import UserInputError
from ...models import image_prompt as ip
from ...models.loading import load_pipeline
from ...models.motion_module import inflate
from ..checkpoint import base_model_record, check_same_base
from ..diffusion import DiffusionObjective, caption_ids
from . import Step, TrainingTarget, register
from .gen1 import load_clip


class _Trainable(torch.nn.Module):
    """The module the loop prepares: the adapter's parameters, its forward the target's prediction (so DDP sees it)."""

    def __init__(self, adapter: ip.ImagePromptAdapter, predict):
        super().__init__()
        self.adapter = adapter
        self._predict = predict

    def forward(self, *args):
        return self._predict(*args)


@register
class ImagePromptTarget(TrainingTarget):
    name = "image_prompt"
    description = "image prompts (VideoBooth-style): mapper + K,V copies (stage=coarse), exemplar injection (stage=fine)"
    example = "data=image_prompt data.folder=ip_data/ target.stage=coarse"
    ddp_find_unused_parameters = True  # a step whose samples all drop the image prompt leaves the adapter unused

    @classmethod
    def check_config(cls, cfg) -> None:
        target = cfg.target
        if target.stage not in ip.STAGES:
            raise UserInputError(f"target.stage must be one of {', '.join(ip.STAGES)}, got {target.stage!r}")
        dropout = values.number(target.get("coarse_dropout", 0.0), "target.coarse_dropout", 0)
        if dropout >= 1:  # the injection would never train beside the coarse tokens it samples with
            raise UserInputError(f"target.coarse_dropout must be a number in [0, 1), got {dropout:g}")
        if dropout and target.stage != "fine":
            raise UserInputError(f"target.coarse_dropout is for target.stage=fine (the exemplar carries the image "
                                 f"where the coarse tokens are dropped), not target.stage={target.stage}")
        if target.get("init"):
            init = Path(str(target.init)).expanduser()
            if not init.is_dir():
                raise UserInputError(f"target.init={target.init} is not a directory (a finished image_prompt run or its weights)")
        elif target.stage == "fine":
            raise UserInputError("target.stage=fine trains the injection on a trained coarse stage: pass "
                                 "target.init=<the coarse run> (or target.stage=joint to train both at once)")
        if cfg.data.name not in ("image_prompt", "toy"):
            raise UserInputError(f"target image_prompt trains on data=image_prompt or data=toy, not data={cfg.data.name}")

    def __init__(self, cfg, device, weight_dtype, rank):
        from ...methods.animatediff import load_motion
        from ...models.gen1 import load_image_encoder, tiny_image_encoder

        super().__init__(cfg, device, weight_dtype, rank)
        target = cfg.target
        self.stage = str(target.stage)
        self.coarse_dropout = float(target.get("coarse_dropout", 0.0))
        self.objective = DiffusionObjective.from_config(cfg.diffusion)
        self.items = image_prompt_dataset(cfg)
        self.init = init_weights(target.get("init"))
        # Frozen: VAE, text encoder, the image UNet inflated with the motion module, the CLIP vision tower.
        pipe = load_pipeline(cfg.model, torch.float32)
        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.base_model = base_model_record(cfg.model, pipe.unet)
        self.unet = inflate(pipe.unet, load_motion(cfg, torch.float32, unet=pipe.unet))
        encoder_source = str(target.image_encoder)
        if self.init is not None:
            self.image_encoder, self.processor = load_image_encoder(self.init / "image_encoder", "target.init")
        elif encoder_source == "tiny":
            self.image_encoder, self.processor = tiny_image_encoder(int(cfg.seed))
        else:  # toy (the toy world's CLIP), a hub id or a directory of a CLIPModel or a CLIP vision tower
            parts = load_clip(encoder_source, "target.image_encoder", vision=True)
            self.image_encoder, self.processor = parts["image_encoder"], parts["feature_extractor"]
        self.encoder_source = encoder_source if self.init is None else str(self.init / "image_encoder")
        for module in (self.vae, self.text_encoder, self.unet, self.image_encoder):
            module.requires_grad_(False)
            module.to(device, weight_dtype).eval()

        # Trained: the mapper (fresh, or the init's), the K, V copies and the exemplar projections.
        if self.init is not None:
            mapper = ip.load_mapper(self.init, "target.init")
        else:
            layers = list(target.clip_layers) if target.get("clip_layers") else \
                ip.default_clip_layers(self.image_encoder.config.num_hidden_layers)
            mapper = ip.ImagePromptMapper(vision_dim=self.image_encoder.config.hidden_size,
                                          text_dim=self.text_encoder.config.hidden_size, clip_layers=layers,
                                          num_tokens=int(target.num_tokens), hidden_dim=int(target.mapper_width))
        self.adapter = ip.ImagePromptAdapter(mapper, self.unet, fine=self.stage != "coarse").float()
        if self.init is not None:
            ip.load_projections(self.init, self.adapter, "target.init")
        self.adapter.requires_grad_(False)
        for parameter in self.adapter.stage_parameters(self.stage):
            parameter.requires_grad_(True)
        self.adapter.to(device)
        self.state = ip.ImagePromptState(position_encoding=bool(target.position_encoding))
        # Persistent processors: they hold the trained projections for the whole run.
        self.unet.set_attn_processor({**self.unet.attn_processors, **self.adapter.processors(self.state)})
        self.trainable = _Trainable(self.adapter, self.predict)

    @property
    def model(self):
        return self.trainable

    def trainable_parameters(self):
        return self.adapter.stage_parameters(self.stage)

    checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """stylevid's checkpointing of the frozen video UNet (`models.checkpointing`: resnets, whole spatial
        transformers, motion modules), through which the trained projections' gradients flow. It acts in train mode
        only, so `predict` runs the main pass in train mode (the UNet has no dropout: the same numbers) and the
        exemplar pass in eval mode: that pass records into the processors' shared state, which a recomputation in
        backward would redo under the main pass's settings. The main pass's recomputations read the exemplar
        features again, so they are kept until the next step rather than dropped when the forward returns."""
        from ...models.checkpointing import enable_gradient_checkpointing

        enable_gradient_checkpointing(self.unet)
        self.checkpointing = True

    # --- data and loss ----------------------------------------------------------------------------------------

    def dataset(self):
        return self.items

    def collate(self, items):
        return collate_image_prompt(items)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        objective, generator, vae = self.objective, at.generator, self.vae
        pixels = batch["pixel_values"].to(self.device)  # (B, F, 3, H, W)
        batch_size, frames, _, height, width = pixels.shape
        with torch.no_grad():
            posterior = vae.encode(pixels.flatten(0, 1).to(vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float() * vae.config.scaling_factor
            latents = latents.unflatten(0, (batch_size, frames)).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
            noise = objective.noise(latents, generator)
            timesteps = objective.timesteps(batch_size, generator)
            kept = ~objective.dropped(batch_size, generator)  # dropped: no caption and no image prompt (CFG's branch)
            composed = kept.clone()  # the coarse tokens with their K, V copies; target.coarse_dropout drops some
            if self.coarse_dropout > 0:  # drawn only then: a run without it keeps its stream of draws
                composed &= torch.rand(batch_size, generator=generator) >= self.coarse_dropout
            noisy = objective.add_noise(latents, noise, timesteps)
            crops = [ip.prepare_image_prompt(crop, None, height, width) for crop in batch["crops"]]
            exemplar = posterior_mean(vae, crops, self.device)
            exemplar_noise = objective.noise(exemplar, generator)
            noisy_exemplar = objective.add_noise(exemplar, exemplar_noise, timesteps)[kept.to(self.device)]
            pixels_clip = self.processor(images=list(batch["crops"]), return_tensors="pt").pixel_values
            features = ip.clip_layer_features(self.image_encoder, pixels_clip.to(self.device, self.image_encoder.dtype),
                                              list(self.adapter.mapper.config.clip_layers)).float()
        captions = [caption if keep else "" for caption, keep in zip(batch["captions"], kept.tolist())]
        prediction = model(noisy, timesteps.to(self.device), captions, list(batch["subjects"]), kept, features[composed],
                           noisy_exemplar, composed)
        return objective.loss(prediction, latents, noise, timesteps)

    def predict(self, noisy, timesteps, captions, subjects, kept, features, noisy_exemplar, composed):
        """ε_θ(z_t, c_T, t) with the image prompt on the kept samples (the forward of the prepared module): the
        coarse tokens on the `composed` ones, the exemplar on every kept one."""
        frames = noisy.shape[2]
        context = self.text_encoder(caption_ids(self.tokenizer, captions).to(self.device))[0].float()
        if bool(composed.any()):
            num_tokens = self.adapter.mapper.config.num_tokens
            prompts = [ip.compose_prompt(self.tokenizer, c, s, num_tokens)
                       for c, s, keep in zip(captions, subjects, composed.tolist()) if keep]
            tokens = self.adapter.mapper(features)
            with_tokens = ip.composed_text_embeddings(self.text_encoder, prompts, tokens.to(self.text_encoder.dtype)).float()
            context = context.clone()
            context[composed.to(self.device)] = with_tokens
        state = self.state
        state.latent_size = tuple(noisy.shape[-2:])
        state.exemplars = {}
        if self.adapter.fine and bool(kept.any()):
            self.unet.eval()  # never checkpointed (see enable_gradient_checkpointing)
            ip.run_exemplar_pass(self.unet, state, noisy_exemplar.to(self.unet.dtype), timesteps[kept.to(timesteps.device)],
                                 context[kept.to(self.device)].to(self.unet.dtype), composed[kept])
        state.conditioned, state.composed = kept.clone(), composed.clone()
        self.unet.train(self.checkpointing)
        try:
            prediction = self.unet(noisy.to(self.unet.dtype), timesteps,
                                   encoder_hidden_states=context.repeat_interleave(frames, dim=0).to(self.unet.dtype)).sample
            if self.adapter.fine and not bool(kept.any()):
                # Every sample dropped its image prompt (caption dropout), so nothing read the exemplar projections:
                # a zero term keeps them in this forward's graph, so the fine stage (which trains nothing else) can
                # run backward, and every DDP rank reduces the same parameters.
                prediction = prediction + 0.0 * sum(p.sum() for p in self.adapter.exemplar.parameters())
            return prediction
        finally:
            if not self.checkpointing:  # else kept for the recomputations in backward (dropped at the next step)
                state.exemplars = {}

    # --- weights ----------------------------------------------------------------------------------------------

    def _manifest(self) -> dict:
        stages = list((ip.read_manifest(self.init, "target.init").get("stages") or [])) if self.init is not None else []
        return {"stages": stages + [self.stage], "base_model": self.base_model,
                "motion": self.cfg.motion.get("path"), "image_encoder": self.encoder_source,
                "position_encoding": bool(self.cfg.target.position_encoding)}

    def _adapter_from(self, state_dict) -> ip.ImagePromptAdapter:
        """A copy of the adapter holding `state_dict` (the gathered or EMA weights), the live one untouched."""
        prefix = "adapter."
        adapter = ip.ImagePromptAdapter(ip.ImagePromptMapper.from_config(self.adapter.mapper.config), self.unet,
                                        fine=self.adapter.fine)
        adapter.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
        return adapter

    def save_weights(self, directory: Path, state_dict) -> None:
        ip.save_image_prompt_weights(directory, self._adapter_from(state_dict), None, None, self._manifest())

    def load_weights(self, directory: Path) -> None:
        mapper = ip.load_mapper(directory, "trainer.resume")
        self.adapter.mapper.load_state_dict(mapper.state_dict())
        ip.load_projections(directory, self.adapter, "trainer.resume")

    def export(self, run_dir: Path, state_dict) -> dict:
        ip.save_image_prompt_weights(run_dir, self._adapter_from(state_dict), self.image_encoder, self.processor,
                                     self._manifest())
        return {"weights": ".", "mapper": "mapper/", "processors": ip.PROCESSORS_FILE, "manifest": ip.MANIFEST}

    # --- records ----------------------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"base_model": self.base_model, "stage": self.stage, "init": str(self.init) if self.init else None,
                "clip_layers": list(self.adapter.mapper.config.clip_layers),
                "num_tokens": int(self.adapter.mapper.config.num_tokens),
                "position_encoding": bool(self.cfg.target.position_encoding)}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        check_same_base(path, recorded.get("base_model"), self.base_model, "target.init=<the checkpoint>")
        super().check_resumable(path, {k: v for k, v in recorded.items() if k != "base_model"}, weights_dir)

    def summary(self) -> dict:
        return {"data": {"name": self.cfg.data.name, "items": len(self.items)}, "stage": self.stage}


def init_weights(init) -> Path | None:
    """target.init: a finished image_prompt run directory (its export is the weights directory itself)."""
    if not init:
        return None
    root = Path(str(init)).expanduser()
    ip.read_manifest(root, "target.init")
    return root


@torch.no_grad()
def posterior_mean(vae, images, device) -> torch.Tensor:
    from ...sampling.vae import encode_images
    import numpy as np

    return encode_images(vae, np.stack(images), device).float()
