"""Gen-1 (paper 002): its model and conditions (models/gen1.py), the eq. 8 sampler (sampling/gen1.py) and
method=gen1 end to end on tiny random parts (model=tiny), through the CLI's own entry."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_stylevid
from stylevid.data.toy import write_toy_videos
from stylevid.errors import UserInputError
from stylevid.models import gen1 as model
from stylevid.sampling import gen1 as sampling
from stylevid.sampling.guidance import classifier_free, guide

FRAMES, SIZE = 4, 32
TINY = ["model=tiny", "steps=2", "method.window=2", "method.window_overlap=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen1_input")
    write_toy_videos(folder, count=1, frames=FRAMES, size=SIZE)
    return folder / "toy_00.mp4"


@pytest.fixture(scope="module")
def content_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen1_content") / "content.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def generate(tmp_path, capsys, clip, *overrides, name="run"):
    run_dir = tmp_path / name
    code, _, err = run_stylevid(["generate", "method=gen1", f"input={clip}", *TINY, f"output_dir={run_dir}",
                                 "save_frames=true", *overrides], capsys)
    assert code == 0, err
    return run_dir, json.loads((run_dir / "result.json").read_text())


def frames_of(run_dir):
    return np.stack([np.asarray(Image.open(path)) for path in sorted((run_dir / "frames").glob("*.png"))])


def perturb_temporal(unet, seed=1, scale=0.05):
    """Random temporal weights, as after training: the video model then differs from the image model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in unet.temporal_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return unet


# --- end to end ------------------------------------------------------------------------------------------------


def test_text_content_through_the_prior_with_temporal_guidance_and_windows(tmp_path, capsys, clip, content_png):
    run_dir, result = generate(tmp_path, capsys, clip, "prompt=a blue square", "method.temporal_guidance=1.5",
                               "method.ts=2")
    video = frames_of(run_dir)
    assert video.shape == (FRAMES, SIZE, SIZE, 3) and result["input_frames"] == FRAMES
    assert result["fps"] == 8.0  # the input's own rate
    gen1 = result["gen1"]
    assert (gen1["ts"], gen1["temporal_guidance"], gen1["guidance_scale"]) == (2, 1.5, 7.5)
    assert gen1["content"]["source"] == "prompt" and gen1["content"]["prompt"] == "a blue square"
    assert gen1["windows"] == {"window": 2, "overlap": 1, "spans": [[0, 2], [1, 3], [2, 4]]}
    assert gen1["structure"]["annotator"] == "tiny" and gen1["mask"] is None
    assert gen1["weights"]["prediction"] == "v_prediction"
    assert {"reading input", "structure", "content", "sampling", "decoding"} <= set(result["timings_s"])
    structure = np.asarray(Image.open(run_dir / "structure.png"))
    assert structure.shape == (SIZE, SIZE, 3) and result["files"]["structure"] == "structure.png"

    # content from an image instead: another content token, another video; both: the weighted sum is recorded
    image_dir, image = generate(tmp_path, capsys, clip, f"content_image={content_png}", "method.temporal_guidance=1.5",
                                "method.ts=2", name="image")
    assert image["gen1"]["content"]["source"] == "image"
    assert np.abs(frames_of(image_dir).astype(int) - video.astype(int)).max() > 0
    _, both = generate(tmp_path, capsys, clip, "prompt=a blue square", f"content_image={content_png}",
                       "method.content_mix=0.25", name="both")
    assert both["gen1"]["content"]["source"] == "prompt+image" and both["gen1"]["content"]["mix"] == 0.25


def test_a_ts_past_the_one_pixel_blur_is_named_in_one_warning(tmp_path, capsys, clip):
    """32-px depth is one pixel from t_s = 5 on: t_s = 7 runs and says so; t_s = 5 does not warn."""
    for ts, warned in ((7, True), (5, False)):
        code, _, err = run_stylevid(["generate", "method=gen1", f"input={clip}", *TINY, f"output_dir={tmp_path / str(ts)}",
                                     "prompt=a blue square", f"method.ts={ts}"], capsys)
        assert code == 0, err
        assert ("method.ts=7 blurs 32x32 depth to one pixel, as t_s=5 does" in err) == warned, err


def test_outside_an_empty_edit_region_the_output_is_the_input_or_its_vae_round_trip(tmp_path, capsys, clip):
    """Masked editing keeps the input's latents outside the edited region: with nothing to edit (an all-black mask,
    edit_region=foreground) the whole output is the input encoded and decoded by the VAE (keep_outside=latents), or
    the input's own frames (keep_outside=pixels, the default)."""
    from stylevid.io.video_input import read_frames
    from stylevid.models.tiny import tiny_vae
    from stylevid.sampling.vae import decode_to_uint8, encode_images

    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "mask.png")
    vae = tiny_vae(0)
    frames = read_frames(clip, FRAMES, height=SIZE, width=SIZE)
    round_trip = decode_to_uint8(vae, encode_images(vae, frames), 8)
    run_dir, result = generate(tmp_path, capsys, clip, "prompt=x", f"mask={tmp_path / 'mask.png'}",
                               "method.keep_outside=latents", name="latents")
    assert result["gen1"]["mask"] == {"path": str(tmp_path / "mask.png"), "edit_region": "foreground",
                                      "keep_outside": "latents", "feather": None}
    assert np.array_equal(frames_of(run_dir), round_trip)
    run_dir, result = generate(tmp_path, capsys, clip, "prompt=x", f"mask={tmp_path / 'mask.png'}", name="pixels")
    assert result["gen1"]["mask"]["keep_outside"] == "pixels" and result["gen1"]["mask"]["feather"] == 2
    assert np.array_equal(frames_of(run_dir), frames) and not np.array_equal(frames, round_trip)


def test_pasting_the_input_outside_keeps_every_resampled_pixel_and_blends_over_the_feather():
    """paste_outside: the decoded edit in every pixel of a resampled latent cell, the input exactly from `feather`
    pixels past it on, a blend of the two in between (and a hard seam at feather=0)."""
    from stylevid.methods.gen1 import paste_outside

    rng = np.random.default_rng(0)
    decoded, frames = (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    mask = torch.zeros(1, 1, 2, 4, 4)
    mask[..., 1, 1] = 1  # pixels 8-15 in both directions
    pasted = paste_outside(decoded, frames, mask, feather=3)
    assert np.array_equal(pasted[:, 8:16, 8:16], decoded[:, 8:16, 8:16])
    far = np.ones((32, 32), bool)
    far[8 - 3:16 + 3, 8 - 3:16 + 3] = False
    assert np.array_equal(pasted[:, far], frames[:, far])
    ring = pasted[:, 6, 10].astype(int)  # 2 px outside the cell: between the two
    low, high = np.minimum(decoded[:, 6, 10], frames[:, 6, 10]), np.maximum(decoded[:, 6, 10], frames[:, 6, 10])
    assert ((ring >= low) & (ring <= high)).all() and not np.array_equal(pasted[:, 6, 10], frames[:, 6, 10])
    hard = paste_outside(decoded, frames, mask, feather=0)
    inside = np.zeros((32, 32), bool)
    inside[8:16, 8:16] = True
    assert np.array_equal(hard[:, inside], decoded[:, inside]) and np.array_equal(hard[:, ~inside], frames[:, ~inside])


def test_a_masked_edit_keeps_the_input_latents_outside_the_region_and_changes_them_inside(tmp_path, clip):
    from hydra import compose, initialize_config_module

    from stylevid.io.video_input import read_frames
    from stylevid.methods.gen1 import Gen1, encode_frames
    from stylevid.progress import StageReporter

    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[:, :16] = 255  # the left half is the foreground (two latent columns of four)
    Image.fromarray(mask).save(tmp_path / "half.png")
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["method=gen1", f"input={clip}", *TINY, "prompt=x",
                                             f"mask={tmp_path / 'half.png'}", "method.edit_region=background"])
    method = Gen1()
    settings = method.settings(cfg)
    loaded = method.load(cfg, settings, torch.device("cpu"), torch.float32, None)
    output = method.generate(loaded, settings, StageReporter())
    latents = output.latents.permute(1, 0, 2, 3)[None]  # (1, 4, F, h, w)
    known = encode_frames(loaded.vae, read_frames(clip, FRAMES, height=SIZE, width=SIZE), torch.device("cpu"))
    assert torch.equal(latents[..., :2], known[..., :2])  # the kept foreground, exactly
    assert (latents[..., 2:] - known[..., 2:]).abs().amax() > 0.1  # the edited background


def test_a_written_weights_directory_gives_the_in_memory_parts_video(tmp_path, capsys, clip):
    """The tiny parts saved in the weights layout (unet/ + gen1.json, image_encoder/, prior/, manifest.json) load
    through method.weights= and make the same video as model=tiny's parts built in memory."""
    from stylevid.models.tiny import TINY_TEXT_DIM

    unet = model.tiny_gen1_unet(0)
    encoder, processor = model.tiny_image_encoder(0)
    prior, text_encoder, tokenizer, scheduler = model.tiny_prior(0)
    weights = model.save_gen1_weights(tmp_path / "weights", unet=unet, info=model.gen1_info("ts", unet),
                                      image_encoder=encoder, feature_extractor=processor, prior=prior,
                                      prior_text_encoder=text_encoder, prior_tokenizer=tokenizer, prior_scheduler=scheduler,
                                      manifest={"depth_annotator": "tiny"})
    assert json.loads((weights / "manifest.json").read_text())["format"] == model.WEIGHTS_FORMAT
    assert encoder.config.projection_dim == TINY_TEXT_DIM
    memory_dir, _ = generate(tmp_path, capsys, clip, "prompt=a blue square", name="memory")
    disk_dir, disk = generate(tmp_path, capsys, clip, "prompt=a blue square", f"method.weights={weights}", name="disk")
    assert disk["gen1"]["weights"]["stage"] == "ts" and disk["gen1"]["weights"]["path"] == str(weights)
    assert disk["gen1"]["structure"]["annotator"] == "tiny"  # the manifest's depth model
    assert np.abs(frames_of(disk_dir).astype(int) - frames_of(memory_dir).astype(int)).max() <= 1


def test_the_weights_name_their_vae_and_guidance_scale_and_method_settings_win(tmp_path, capsys, clip):
    """A weights directory may carry a VAE whose decoder was fine-tuned on model's latents (the encoder is model's) and
    the guidance scale it recommends (manifest "vae", "guidance_scale"): method=gen1 decodes with that VAE and samples
    at that scale unless method.vae / method.guidance_scale say otherwise. The latents are the same whichever decoder
    runs; a VAE that encodes otherwise is refused in one line."""
    from stylevid.models.tiny import tiny_vae

    unet = model.tiny_gen1_unet(0)
    encoder, processor = model.tiny_image_encoder(0)
    weights = model.save_gen1_weights(tmp_path / "weights", unet=unet, info=model.gen1_info("ts", unet),
                                      image_encoder=encoder, feature_extractor=processor,
                                      manifest={"depth_annotator": "tiny", "vae": "vae", "guidance_scale": 3.0})
    tuned = tiny_vae(0)  # model=tiny's VAE with another decoder
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in tuned.decoder.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    tuned.save_pretrained(str(weights / "vae"))
    tiny_vae(0).save_pretrained(str(tmp_path / "model_vae"))
    tiny_vae(1).save_pretrained(str(tmp_path / "other_vae"))
    content = f"content_image={tmp_path / 'content.png'}"
    Image.fromarray(np.full((32, 32, 3), (40, 90, 200), np.uint8)).save(tmp_path / "content.png")

    tuned_dir, tuned_run = generate(tmp_path, capsys, clip, content, f"method.weights={weights}", name="tuned")
    assert (tuned_run["gen1"]["guidance_scale"], tuned_run["gen1"]["guidance_scale_from"]) == (3.0, "weights")
    # A top-level guidance_scale= typed by the user wins over the recommendation, as method.guidance_scale= does.
    _, typed_run = generate(tmp_path, capsys, clip, content, f"method.weights={weights}", "guidance_scale=5",
                            name="typed")
    assert (typed_run["gen1"]["guidance_scale"], typed_run["gen1"]["guidance_scale_from"]) == (5.0, "guidance_scale")
    assert tuned_run["gen1"]["vae"] == str(weights / "vae")
    model_dir, model_run = generate(tmp_path, capsys, clip, content, f"method.weights={weights}",
                                    f"method.vae={tmp_path / 'model_vae'}", name="with_model_vae")
    assert model_run["gen1"]["vae"] == str(tmp_path / "model_vae")
    # The weights' VAE changes the pictures only.
    assert np.abs(frames_of(tuned_dir).astype(int) - frames_of(model_dir).astype(int)).max() > 20
    manifest = json.loads((weights / "manifest.json").read_text())
    for key in ("vae", "guidance_scale"):
        del manifest[key]
    (weights / "manifest.json").write_text(json.dumps(manifest))
    plain_dir, plain_run = generate(tmp_path, capsys, clip, content, f"method.weights={weights}",
                                    "method.guidance_scale=3", name="plain")
    assert (plain_run["gen1"]["guidance_scale_from"], plain_run["gen1"]["vae"]) == ("method.guidance_scale", "model")
    assert np.abs(frames_of(plain_dir).astype(int) - frames_of(model_dir).astype(int)).max() <= 1
    _, default_run = generate(tmp_path, capsys, clip, content, f"method.weights={weights}", name="default")
    assert (default_run["gen1"]["guidance_scale"], default_run["gen1"]["guidance_scale_from"]) == (7.5, "default")
    code, _, err = run_stylevid(["generate", "method=gen1", f"input={clip}", *TINY, content, f"method.weights={weights}",
                                 f"method.vae={tmp_path / 'other_vae'}", f"output_dir={tmp_path / 'refused'}"], capsys)
    assert code == 2 and "its encoder is not model's VAE's" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "refused").exists()


# --- the structure condition ---------------------------------------------------------------------------------------


def test_structure_condition_layout_is_the_blurred_depth_latent_then_the_ts_embedding():
    from stylevid.models.tiny import tiny_vae

    vae = tiny_vae(0)
    depth = np.random.default_rng(0).random((3, SIZE, SIZE)).astype(np.float32)
    structure = model.structure_condition(vae, depth, 3)
    assert structure.shape == (3, model.EXTRA_CHANNELS, SIZE // 8, SIZE // 8)
    assert torch.equal(structure[:, :4], model.encode_depth(vae, model.blur_structure(depth, 3)))
    assert torch.equal(structure[:, 4:], model.ts_embedding(3, 3, SIZE // 8, SIZE // 8))
    # the t_s channels are constant over space and frames, and every level has its own embedding
    assert torch.equal(structure[:, 4:], structure[:1, 4:, :1, :1].expand(3, -1, 4, 4))
    levels = torch.stack([model.ts_embedding(ts, 1, 1, 1).flatten() for ts in range(model.MAX_TS + 1)])
    assert torch.cdist(levels, levels).add(torch.eye(8) * 9).min() > 0.1
    # the depth latent is SD's encoding of the map as a grey image in [-1, 1] (posterior mean x scaling factor)
    grey = torch.from_numpy(depth[:1] * 2 - 1)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = vae.encode(grey).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(model.structure_condition(vae, depth[:1], 0)[:, :4], expected, atol=1e-6)


def test_blur_keeps_the_depth_at_ts_0_and_removes_more_high_frequencies_as_ts_grows():
    depth = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    assert np.array_equal(model.blur_structure(depth, 0), depth)

    def high_frequency_energy(maps):
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(maps - maps.mean(axis=(1, 2), keepdims=True))))
        y, x = np.mgrid[-32:32, -32:32]
        return float(spectrum[:, np.hypot(y, x) > 8].sum())

    energies = [high_frequency_energy(model.blur_structure(depth, ts)) for ts in range(model.MAX_TS + 1)]
    assert all(later < earlier for earlier, later in zip(energies[:4], energies[1:5]))  # strictly less up to 4
    assert energies[4] < 0.01 * energies[0]
    blurred = model.blur_structure(depth, 3)
    assert blurred.shape == depth.shape and abs(blurred.mean() - depth.mean()) < 0.01  # the level is kept
    with pytest.raises(UserInputError, match=r"ts must be an integer in \[0, 7\]"):
        model.blur_structure(depth, 8)


def test_the_blur_reaches_one_pixel_where_single_pixel_ts_says():
    """From `single_pixel_ts` on the blurred map is one constant pixel, the same at every later t_s (64 px: 6 and 7,
    which method=gen1 warns of); one level before it still varies. 256 px keeps 2 pixels at t_s = 7."""
    assert (model.single_pixel_ts(64, 64), model.single_pixel_ts(256, 448), model.single_pixel_ts(48, 80)) == (6, 9, 7)
    depth = np.random.default_rng(1).random((1, 48, 80)).astype(np.float32)
    flat = model.single_pixel_ts(48, 80)
    assert np.ptp(model.blur_structure(depth, flat - 1)) > 1e-4 and np.ptp(model.blur_structure(depth, flat)) < 1e-6
    square = np.random.default_rng(2).random((1, 64, 64)).astype(np.float32)
    assert np.array_equal(model.blur_structure(square, 6), model.blur_structure(square, 7))


# --- the model ---------------------------------------------------------------------------------------------------------


def test_added_structure_channels_change_nothing_and_a_saved_model_loads_exactly(tmp_path):
    content = model.tiny_gen1_unet(0, structure=False)
    perturb_temporal(content)
    grown = model.add_structure(content)
    assert grown.config.extra_in_channels == model.EXTRA_CHANNELS and grown.config.in_channels == 12
    generator = torch.Generator().manual_seed(0)
    latents, token = torch.randn(1, 4, 3, 4, 4, generator=generator), torch.randn(1, 1, 32, generator=generator)
    structure = torch.randn(1, 8, 3, 4, 4, generator=generator)
    with torch.no_grad():
        before = content(latents, 500, token).sample
        after = grown(latents, 500, token, extra_input=structure).sample
    assert torch.allclose(before, after, atol=1e-6)
    model.save_gen1(tmp_path / "unet", grown, {"stage": "structure"})
    loaded, info = model.load_gen1(tmp_path / "unet", "gen1.init")
    assert info["stage"] == "structure" and info["prediction"] == "v_prediction" and info["structure"] is True
    with torch.no_grad():
        assert torch.equal(loaded(latents, 500, token, extra_input=structure).sample, after)
    with pytest.raises(UserInputError, match="already takes the structure channels"):
        model.add_structure(grown)
    assert model.load_gen1(tmp_path, "gen1.init")[1] == info  # a weights directory: its unet/
    (tmp_path / "other").mkdir()
    with pytest.raises(UserInputError, match=r"^gen1.init=\S+other is not a Gen-1 UNet \(no gen1.json"):
        model.load_gen1(tmp_path / "other", "gen1.init")


def test_the_content_width_must_be_the_cross_attention_width():
    from stylevid.models.tiny import tiny_unet

    with pytest.raises(UserInputError, match="CLIP image embeddings are 768-dimensional but the UNet's cross_attention_dim is 32"):
        model.build_gen1_unet(tiny_unet(0), structure=True, image_embed_dim=768)
    encoder, processor = model.tiny_image_encoder(0)
    token = model.content_embeddings(encoder, processor, np.zeros((2, 40, 48, 3), np.uint8))
    assert token.shape == (2, 1, 32)


def test_the_scheduler_is_ddim_with_v_prediction_on_sds_schedule():
    from diffusers import DDIMScheduler

    from stylevid.models.tiny import sd_ddim_scheduler

    scheduler = model.gen1_scheduler()
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(scheduler.alphas_cumprod, sd_ddim_scheduler().alphas_cumprod)
    assert model.gen1_scheduler({"prediction": "epsilon", "schedule": "B"}).config.beta_schedule == "linear"


# --- eq. 8 and the sampler ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_like():
    return perturb_temporal(model.tiny_gen1_unet(0)).eval()


def inputs(frames=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, frames, 4, 4, generator=generator), torch.randn(1, 1, 32, generator=generator),
            torch.randn(1, 8, frames, 4, 4, generator=generator))


@torch.no_grad()
def test_eq8_is_one_guide_call_over_the_video_and_image_predictions(trained_like):
    latents, content, structure = inputs()
    unconditional, conditional = sampling.video_prediction(trained_like, latents, 500, content, structure)
    image = trained_like(latents, 500, torch.zeros_like(content), extra_input=structure, image_mode=True).sample
    assert (image - unconditional).abs().amax() > 1e-3  # the image model is another model once temporal layers train
    guided = sampling.guided_prediction(trained_like, latents, 500, content, structure, guidance_scale=5.0,
                                        temporal_guidance=1.5)
    expected = image + 1.5 * (unconditional - image) + 5.0 * (conditional - unconditional)
    assert torch.allclose(guided, expected, atol=1e-5)
    # the image model is each frame on its own: frame 1 alone gives frame 1 of the clip
    alone = trained_like(latents[:, :, 1:2], 500, torch.zeros_like(content), extra_input=structure[:, :, 1:2],
                         image_mode=True).sample
    assert torch.allclose(alone[:, :, 0], image[:, :, 1], atol=1e-5)


@torch.no_grad()
def test_at_temporal_guidance_1_the_image_pass_is_skipped_and_it_is_classifier_free_guidance(trained_like):
    latents, content, structure = inputs()
    calls = []
    hook = trained_like.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs.get("image_mode")),
                                                  with_kwargs=True)
    try:
        guided = sampling.guided_prediction(trained_like, latents, 500, content, structure, guidance_scale=5.0,
                                            temporal_guidance=1.0)
    finally:
        hook.remove()
    assert calls == [None]  # one call: the video model's two rows; no image pass
    batch = trained_like(torch.cat([latents] * 2), 500, torch.cat([torch.zeros_like(content), content]),
                         extra_input=torch.cat([structure] * 2)).sample
    assert torch.equal(guided, classifier_free(batch, 5.0))
    # and the full eq. 8 at ω_t = 1 is the same up to rounding (the image terms cancel)
    image = trained_like(latents, 500, torch.zeros_like(content), extra_input=structure, image_mode=True).sample
    unconditional, conditional = batch.chunk(2)
    full = guide(image, [(1.0, unconditional, image), (5.0, conditional, unconditional)])
    assert torch.allclose(full, guided, atol=1e-5)


def test_windowed_blend_gives_back_frames_that_windows_agree_on():
    values = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 2, 10, 3, 3)
    spans = sampling.windows(10, 4, 2)
    assert spans == [(0, 4), (2, 6), (4, 8), (6, 10)]
    blended = sampling.windowed_prediction(lambda frames: values[:, :, frames].clone(), 10, spans)
    assert torch.equal(blended, values)
    # where windows disagree, shared frames are a lerp from the earlier window to the later one
    offset = sampling.windowed_prediction(lambda frames: torch.full((1, 1, frames.stop - frames.start, 1, 1),
                                                                    float(frames.start)), 6, [(0, 4), (2, 6)])
    assert offset.flatten().tolist() == pytest.approx([0, 0, 2 / 3, 4 / 3, 2, 2])
    assert sampling.windows(4, 8, 4) == [(0, 4)] and sampling.windows(4, None, 0) == [(0, 4)]


def test_windows_give_the_same_latents_as_one_window_at_initialisation():
    """With identity temporal layers every frame is independent, so windows with shared noise change nothing."""
    unet = model.tiny_gen1_unet(0)
    _, content, _ = inputs()
    structure = torch.randn(1, 8, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    common = dict(content=content, structure=structure, steps=2, guidance_scale=4.0, temporal_guidance=1.5,
                  shape=(1, 4, 6, 4, 4))
    whole = sampling.sample_gen1(unet, model.gen1_scheduler(), generator=torch.Generator().manual_seed(0), **common)
    windowed = sampling.sample_gen1(unet, model.gen1_scheduler(), generator=torch.Generator().manual_seed(0),
                                    window=3, window_overlap=1, **common)
    assert torch.allclose(windowed, whole, atol=1e-5)
    # once the temporal layers are trained, the windows are what they see: frames beyond a window change the result
    perturb_temporal(unet, scale=0.2)
    whole = sampling.sample_gen1(unet, model.gen1_scheduler(), generator=torch.Generator().manual_seed(0), **common)
    windowed = sampling.sample_gen1(unet, model.gen1_scheduler(), generator=torch.Generator().manual_seed(0),
                                    window=3, window_overlap=1, **common)
    assert (windowed - whole).abs().amax() > 1e-4


# --- bad input: one line, exit 2, nothing written ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, clip):
    folder = tmp_path_factory.mktemp("gen1_bad")
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 50)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "small_mask.png")
    (folder / "three").mkdir()
    for index in range(3):
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(folder / "three" / f"{index}.png")
    (folder / "empty_weights").mkdir()
    (folder / "not_image.png").write_text("no")
    return folder


@pytest.mark.parametrize("overrides, message", [
    (["-input"], "method=gen1 needs input="),
    (["input={bad}/broken.mp4"], "cannot be decoded as a video"),
    (["input=/nonexistent/clip.mp4"], "input=/nonexistent/clip.mp4 does not exist"),
    (["method.ts=8"], "method.ts must be between 0 and 7, got 8"),
    (["method.ts=-1"], "method.ts must be between 0 and 7, got -1"),
    (["mask={bad}/small_mask.png"], "mask={bad}/small_mask.png is 16x16 but input={clip} is 32x32"),
    (["mask={bad}/three"], "mask={bad}/three has 3 frames but input={clip} has 4"),
    (["method.depth_maps={bad}/three"], "method.depth_maps={bad}/three has 3 frames but input={clip} has 4"),
    (["-prompt"], "method=gen1 needs content: prompt="),
    (["content_image={bad}/not_image.png"], "content_image {bad}/not_image.png cannot be read as an image"),
    (["model=sd15"], "method.weights= is required: a weights directory (unet/, image_encoder/, prior/"),
    (["method.weights={bad}/empty_weights"], "method.weights={bad}/empty_weights has no unet"),
    (["method.weights={bad}/nowhere"], "is not a directory"),
    (["method.edit_region=middle"], "method.edit_region must be foreground or background, got 'middle'"),
    (["method.keep_outside=both"], "method.keep_outside must be pixels or latents, got 'both'"),
    (["method.feather=-1"], "method.feather must be between 0 and 64, got -1"),
    (["method.window_overlap=2"], "method.window_overlap=2 must be smaller than method.window=2"),
    (["method.temporal_guidance=nan"], "method.temporal_guidance must be a finite number"),
    (["annotator.path=nobody/no-such-depth-model"],
     "annotator.path=nobody/no-such-depth-model is not in the local cache and the hub is offline"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, clip, bad_files, overrides, message):
    args = {"input": f"input={clip}", "prompt": "prompt=x"}
    for override in overrides:
        if override.startswith("-"):
            args.pop(override[1:])
        else:
            args[override.split("=")[0]] = override.format(bad=bad_files, clip=clip)
    run_dir = tmp_path / "run"
    code, _, err = run_stylevid(["generate", "method=gen1", *TINY, *args.values(), f"output_dir={run_dir}"], capsys)
    message = message.format(bad=bad_files, clip=clip)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists()


def test_the_toy_gen1_when_missing_is_one_line(tmp_path, capsys, clip):
    from stylevid.toy import WEIGHTS

    if (WEIGHTS / "gen1" / model.MANIFEST).exists():
        pytest.skip("the toy Gen-1 is built")
    code, _, err = run_stylevid(["generate", "method=gen1", "model=toy", f"input={clip}", "prompt=x",
                                 f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "the toy gen1 weights are not built" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
