"""Gen-1's sampler against diffusers' own pipelines on identical tiny parts, schedulers and seeds.

  * one frame, structure channels at their zero init and temporal layers inactive: diffusers'
    `StableDiffusionImageVariationPipeline` (CLIP image embedding as the one cross-attention token, zeros as the
    unconditional one) on the same image UNet (its 2-D weights), image encoder and DDIM v-prediction scheduler;
  * ω_t = 1 on a video model with trained-like temporal layers: plain classifier-free guidance, diffusers'
    `TextToVideoSDPipeline` run with the content token as its prompt embedding;
  * masked editing on one frame: the latent blending of `StableDiffusionInpaintPipeline`'s 4-channel UNet branch.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from stylevid.models import gen1 as model
from stylevid.models.tiny import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae
from stylevid.sampling.gen1 import sample_gen1

SIZE, STEPS, SCALE, SEED = 32, 3, 4.0, 0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def parts():
    encoder, processor = model.tiny_image_encoder(0)
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    content = model.content_embeddings(encoder, processor, image[None])
    return dict(unet2d=tiny_unet(0), vae=tiny_vae(0), encoder=encoder, processor=processor, image=image, content=content)


def test_one_frame_without_structure_or_temporal_layers_is_the_image_variation_pipeline(parts):
    from diffusers import StableDiffusionImageVariationPipeline

    pipe = StableDiffusionImageVariationPipeline(
        vae=parts["vae"], image_encoder=parts["encoder"], unet=parts["unet2d"], scheduler=model.gen1_scheduler(),
        safety_checker=None, feature_extractor=parts["processor"], requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    peer = pipe(Image.fromarray(parts["image"]), height=SIZE, width=SIZE, num_inference_steps=STEPS,
                guidance_scale=SCALE, generator=torch.Generator().manual_seed(SEED), output_type="latent").images

    unet = model.build_gen1_unet(parts["unet2d"], structure=True).eval()  # zero-initialised structure channels
    structure = torch.randn(1, model.EXTRA_CHANNELS, 1, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(5))
    ours = sample_gen1(unet, model.gen1_scheduler(), content=parts["content"], structure=structure, steps=STEPS,
                       guidance_scale=SCALE, temporal_guidance=1.0, shape=(1, 4, 1, SIZE // 8, SIZE // 8),
                       generator=torch.Generator().manual_seed(SEED))
    assert (peer - ours[:, :, 0]).abs().max() < 1e-4, (peer - ours[:, :, 0]).abs().max()
    assert peer.abs().mean() > 0.1  # a real sample, not zeros on both sides
    # the content token is what the pipeline's own _encode_image makes (one token, zeros as the unconditional)
    tokens = pipe._encode_image(Image.fromarray(parts["image"]), "cpu", 1, True)
    assert torch.equal(tokens[1:], parts["content"]) and not tokens[:1].any()


def test_temporal_guidance_1_is_classifier_free_guidance_of_the_video_model(parts):
    from diffusers import TextToVideoSDPipeline

    unet = model.build_gen1_unet(parts["unet2d"], structure=False).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # temporal layers as after training, so the video model is not the image model
        for _, parameter in unet.temporal_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    frames = 4
    tokenizer = tiny_tokenizer()
    pipe = TextToVideoSDPipeline(vae=parts["vae"], text_encoder=tiny_text_encoder(0, len(tokenizer)), tokenizer=tokenizer,
                                 unet=unet, scheduler=model.gen1_scheduler())
    pipe.set_progress_bar_config(disable=True)
    peer = pipe(prompt_embeds=parts["content"], negative_prompt_embeds=torch.zeros_like(parts["content"]),
                num_frames=frames, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=SCALE,
                generator=torch.Generator().manual_seed(SEED), output_type="latent").frames
    common = dict(content=parts["content"], structure=None, steps=STEPS, guidance_scale=SCALE,
                  shape=(1, 4, frames, SIZE // 8, SIZE // 8))
    ours = sample_gen1(unet, model.gen1_scheduler(), temporal_guidance=1.0, generator=torch.Generator().manual_seed(SEED),
                       **common)
    assert (peer - ours).abs().max() < 1e-5, (peer - ours).abs().max()
    # ω_t away from 1 brings in the image model: another result
    other = sample_gen1(unet, model.gen1_scheduler(), temporal_guidance=1.5, generator=torch.Generator().manual_seed(SEED),
                        **common)
    assert (other - ours).abs().max() > 1e-3


def test_masked_editing_blends_latents_as_the_inpaint_pipeline_does_for_a_4_channel_unet(parts):
    from diffusers import StableDiffusionInpaintPipeline

    from stylevid.sampling.vae import pixels_from_uint8

    vae, h = parts["vae"], SIZE // 8
    image = np.random.default_rng(2).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 16:] = 255  # white = edit, on whole 8x8 latent cells (so nearest and max-pool downsampling agree)
    noise = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(7))
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=tiny_text_encoder(0, len(tokenizer)), tokenizer=tokenizer,
                                          unet=parts["unet2d"], scheduler=model.gen1_scheduler(), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    peer = pipe(prompt_embeds=parts["content"], negative_prompt_embeds=torch.zeros_like(parts["content"]),
                image=Image.fromarray(image), mask_image=Image.fromarray(mask), height=SIZE, width=SIZE, strength=1.0,
                num_inference_steps=STEPS, guidance_scale=SCALE, generator=torch.Generator().manual_seed(SEED),
                latents=noise, output_type="latent").images

    # the pipeline's known latents: a posterior sample drawn first from its generator (ours take the mean; here the
    # same sample is handed over, so that only the blending is compared)
    with torch.no_grad():
        posterior = vae.encode(pixels_from_uint8(image[None])).latent_dist
        known = posterior.sample(torch.Generator().manual_seed(SEED)) * vae.config.scaling_factor
    edit = torch.nn.functional.max_pool2d(torch.from_numpy(mask > 127).float()[None, None], 8)  # (1, 1, h, w)
    unet = model.build_gen1_unet(parts["unet2d"], structure=False).eval()
    ours = sample_gen1(unet, model.gen1_scheduler(), content=parts["content"], structure=None, steps=STEPS,
                       guidance_scale=SCALE, temporal_guidance=1.0, noise=noise[:, :, None],
                       known_latents=known[:, :, None], mask=edit[:, :, None])[:, :, 0]
    assert (peer - ours).abs().max() < 1e-4, (peer - ours).abs().max()
    keep = edit.expand_as(known) == 0
    assert torch.allclose(ours[keep], known[keep], atol=1e-6)  # outside the edit: the input's latents
    assert (ours[~keep] - known[~keep]).abs().max() > 0.1
