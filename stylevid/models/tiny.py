"""A tiny, seeded, randomly initialised Stable-Diffusion-architecture pipeline.

It has the same classes and geometry as SD 1.5 (a VAE that downsamples 8x into 4 latent channels, a
cross-attention UNet, a CLIP text encoder, a CLIP BPE tokenizer, a DDIM scheduler with SD's betas), only with
very few channels. It is built in memory with no file and no network, so tests and the offline demo can run
every code path that real weights take. It produces noise-like images, not pictures.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_TEXT_DIM = 32


def byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level BPE vocabulary with no merges: one token per byte, plus end-of-word variants.

    Written here (not downloaded) so that a tokenizer exists offline. Every string is tokenizable, one
    token per character, which is all a randomly initialised text encoder needs.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    characters = sorted(ByteLevel.alphabet())
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=model_max_length)


def tiny_text_encoder(seed: int = 0, vocab_size: int = 514) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def sd_geometry_vae(block_out_channels: tuple[int, ...], norm_num_groups: int, seed: int = 0) -> AutoencoderKL:
    """A seeded AutoencoderKL with SD's geometry: four blocks (8x downsampling) into 4 latent channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        layers_per_block=1,
        sample_size=64,
    )


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    # Four blocks, as in SD, so that the VAE downsamples by 8 and the latent geometry matches real weights.
    return sd_geometry_vae((8, 8, 16, 16), norm_num_groups=4, seed=seed).eval()


def sd_ddim_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion 1.x's noise schedule, as its scheduler_config.json sets it."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The whole tiny pipeline; every component is seeded so that two calls give identical weights."""
    tokenizer = tiny_tokenizer()
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(directory: str, seed: int = 0) -> str:
    """Write the tiny pipeline as a diffusers directory (safetensors), loadable by any diffusers tool."""
    tiny_pipeline(seed).save_pretrained(directory, safe_serialization=True)
    return directory


def save_tiny_causal_lm(path, words: list[str], max_positions: int = 512, words_only: bool = False):
    """A random 2-layer Llama with a word-level tokenizer over `words` and a chat template, saved offline to `path`
    (tests and benchmarks of `prompt_refiner=llm llm.path=`). `words_only`: special tokens are never generated, so
    every answer is exactly llm.max_new_tokens words long."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    chat = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>", additional_special_tokens=["<|user|>", "<|assistant|>"],
                                   chat_template=chat)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=2))
    if words_only:
        model.generation_config.suppress_tokens = [0, 1, 2, 3, 4]
    fast.save_pretrained(path)
    model.save_pretrained(path)
    return path
