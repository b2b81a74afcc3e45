"""`toy_clip`: the toy world's CLIP (transformers `CLIPModel`), contrastive on fresh (frame, caption) pairs.

Loss: the symmetric InfoNCE loss, with NegCLIP-style hard negatives (each caption again with another shape, and
with another motion) and the 30 shortest captions as extra texts in every batch (`training.toy.clip_texts`).
Trained in two warm-restarted cycles (`trainer.cycles=2`): with the motion-swapped negatives one cycle reached 52 %
zero-shot shape and 35 % direction accuracy, two 80 % and 61 % on the faint trail, 81 % and 44 % on the comet tail.
Every `toy.probe_every` steps rank 0 logs the zero-shot accuracies (the judge's, on held-out frames).
Exported as `<run>/clip`: the model and its CLIPProcessor (the word tokenizer and a 64-px image processor).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ...errors import UserInputError
from .. import toy
from . import Step, TrainingTarget, register

log = logging.getLogger(__name__)


@register
class ToyClip(TrainingTarget):
    name = "toy_clip"
    description = "the toy world's CLIP model, contrastive on fresh (frame, caption) pairs with hard negatives"
    example = "trainer.max_steps=3000 trainer.cycles=2 output_dir=build/toy/clip_run"

    @classmethod
    def check_config(cls, cfg) -> None:
        if int(cfg.toy.probe_every) < 0:
            raise UserInputError(f"toy.probe_every must be >= 0 (0 = never), got {cfg.toy.probe_every}")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        self.tokenizer = toy.word_tokenizer()
        self.clip = toy.toy_clip(self.tokenizer).train().to(device)  # seeded by the factory

    @property
    def model(self):
        return self.clip

    def enable_gradient_checkpointing(self) -> None:
        self.clip.gradient_checkpointing_enable()

    def batch(self, at: Step):
        seed = int(self.cfg.seed)
        pixels, captions, scenes = toy.frame_batch(int(self.cfg.trainer.batch_size), seed, at.step, at.micro, at.rank)
        rng = np.random.default_rng(toy.batch_key(seed, at.step, at.micro, at.rank, stream=1))
        texts, same = toy.clip_texts(captions, scenes, rng)
        input_ids, attention_mask = toy.tokenize(self.tokenizer, texts)
        return {"pixel_values": toy.clip_pixels(pixels), "input_ids": input_ids, "attention_mask": attention_mask,
                "same": same}

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        every = int(self.cfg.toy.probe_every)
        if every and (at.step + 1) % every == 0 and at.micro == 0 and at.rank == 0:
            self.probe(at.step + 1)
        out = model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device),
                    pixel_values=batch["pixel_values"].to(self.device))
        return toy.clip_loss(out.logits_per_image, out.logits_per_text, batch["same"].to(self.device))

    def probe(self, step: int) -> None:
        """Zero-shot accuracies on held-out frames, logged (rank 0; no collective, nothing random of the run)."""
        self.clip.eval()
        try:
            with torch.no_grad():
                log.info("clip step %d zero-shot %s", step, toy.clip_probe(self.clip, self.tokenizer))
        finally:
            self.clip.train()

    # --- weights ------------------------------------------------------------------------------------------

    def save_weights(self, directory: Path, state_dict) -> None:
        toy.save_state(directory, state_dict)

    def load_weights(self, directory: Path) -> None:
        toy.load_state(self.clip, directory)

    def export(self, run_dir: Path, state_dict) -> dict:
        self.clip.load_state_dict(state_dict)
        self.clip.eval().to("cpu")
        self.clip.save_pretrained(str(run_dir / "clip"), safe_serialization=True)
        toy.clip_processor(self.tokenizer).save_pretrained(str(run_dir / "clip"))
        return {"transformers": "clip/"}
