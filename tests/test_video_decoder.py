"""VideoGen's video decoder (stylevid.models.video_decoder) and its training target `video_decoder`.

The decoder at initialisation is SD's image decoder frame by frame (bit-identical on the CPU); every VAE decoder
weight lands under its own name; chunked decoding blends windows linearly; the diffusers directory round-trips.
The target lowers its loss, resumes exactly, and trains identically on two gloo ranks."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from hydra import compose, initialize_config_module

from stylevid.errors import UserInputError
from stylevid.models.video_decoder import VideoDecoder, chunk_windows, decode_peak_memory_fresh, frames_to_batch


def tiny_vae() -> AutoencoderKL:
    """SD geometry (four blocks: 8x, 4 latent channels) with few channels."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=32,
    ).eval()


def latents(batch=2, frames=5, size=4, seed=0) -> torch.Tensor:
    return torch.randn(batch, 4, frames, size, size, generator=torch.Generator().manual_seed(seed))


def perturb_temporal(decoder: VideoDecoder, scale: float = 0.01, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in decoder.temporal_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture()
def decoder(vae):
    return VideoDecoder.from_vae(vae, temporal_attention_heads=4).eval()


# --- the decoder ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_at_initialisation_it_decodes_as_the_vae_frame_by_frame(vae, decoder):
    z = latents()
    video = decoder(z)
    assert video.shape == (2, 3, 5, 32, 32)  # (B, 3, F, 8h, 8w)
    per_frame = torch.stack([vae.decode(z[:, :, f]).sample for f in range(z.shape[2])], dim=2)
    assert (video - per_frame).abs().max() <= 1e-6  # measured 0.0 (a frame of each of the 2 videos per decode)
    # with the frames batched as the decoder batches them, the same kernels run: bit-identical
    batched = vae.decode(frames_to_batch(z)).sample
    assert torch.equal(frames_to_batch(video), batched)
    assert decoder.config.scaling_factor == vae.config.scaling_factor


def test_every_vae_decoder_weight_is_mapped_under_its_own_name_and_the_rest_is_temporal(vae, decoder):
    image_weights = {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert len(image_weights) == 108  # 106 decoder tensors + post_quant_conv weight and bias
    spatial = dict(decoder.spatial_parameters())
    assert spatial.keys() == image_weights.keys()
    assert all(torch.equal(spatial[k], image_weights[k]) for k in image_weights)
    temporal = dict(decoder.temporal_parameters())
    resnets = 2 + 4 * 2  # mid block 2, four up blocks of layers_per_block + 1
    convs = [k for k in temporal if "temporal_conv" in k]
    assert len(convs) == resnets * 2 * 2  # two temporal convs per resnet, weight and bias each
    assert len(temporal) - len(convs) == 19  # one TransformerTemporalModel (norm, proj_in, attention, FF, proj_out)
    assert len(spatial) + len(temporal) == len(decoder.state_dict())
    without_attention = VideoDecoder.from_vae(vae, temporal_attention=False)
    assert len(without_attention.temporal_parameters()) == len(convs)


@torch.no_grad()
def test_the_temporal_layers_mix_frames_once_trained(decoder):
    z = latents(batch=1, frames=6)
    changed = z.clone()
    changed[:, :, 5] += 1.0
    assert torch.equal(decoder(z)[:, :, 0], decoder(changed)[:, :, 0])  # identity: frames independent
    perturb_temporal(decoder)
    assert not torch.allclose(decoder(z)[:, :, 0], decoder(changed)[:, :, 0], atol=1e-4)


def test_chunk_windows_cover_every_frame_with_the_overlap():
    windows = chunk_windows(57, 8, 2)
    assert windows[0] == (0, 8) and windows[-1] == (49, 57)
    assert all(stop - start == 8 for start, stop in windows)
    assert all(b[0] < a[1] - 1 for a, b in zip(windows, windows[1:]))  # consecutive windows share >= 2 frames
    assert all(b[0] > a[0] for a, b in zip(windows, windows[1:]))
    assert chunk_windows(5, 8, 2) == [(0, 5)]
    with pytest.raises(ValueError, match="overlap"):
        chunk_windows(10, 4, 4)


@torch.no_grad()
def test_chunked_decoding_equals_whole_decoding_at_init_and_blends_linearly_after_training(decoder):
    z = latents(batch=1, frames=12)
    whole = decoder(z)
    # Exactly equal with windows of an even number of frames; with odd ones, oneDNN's convolutions sum in another
    # order (the image VAE too: vae.decode of a frame alone and among 12 differ by up to 8e-6), measured <= 4e-6.
    for chunk, overlap in ((4, 1), (6, 2), (8, 2)):
        assert torch.equal(decoder(z, chunk_frames=chunk, overlap=overlap), whole)
    for chunk, overlap in ((3, 1), (5, 3), (11, 2)):
        assert (decoder(z, chunk_frames=chunk, overlap=overlap) - whole).abs().max() <= 1e-5
    initial = whole
    perturb_temporal(decoder)
    whole = decoder(z)
    effect = (whole - initial).abs().mean()
    errors = {}
    for chunk, overlap in ((4, 1), (8, 2)):
        chunked = decoder(z, chunk_frames=chunk, overlap=overlap)
        assert chunked.shape == whole.shape  # exactly the 12 frames come out
        errors[chunk] = (chunked - whole).abs().mean()
        assert errors[chunk] < 0.2 * effect  # measured 0.16 (4 frames) and 0.05 (8 frames) of the temporal effect
    assert errors[8] < errors[4]  # longer windows see more of the clip
    # the blend by hand: windows (0, 8) and (4, 12) share frames 4-7, weighted 1/5 .. 4/5 towards the later one
    first, second = decoder(z[:, :, :8]), decoder(z[:, :, 4:])
    chunked = decoder(z, chunk_frames=8, overlap=2)
    assert torch.equal(chunked[:, :, :4], first[:, :, :4]) and torch.equal(chunked[:, :, 8:], second[:, :, 4:])
    ramp = (torch.arange(1, 5) / 5).view(1, 1, -1, 1, 1)
    assert torch.allclose(chunked[:, :, 4:8], (1 - ramp) * first[:, :, 4:] + ramp * second[:, :, :4], atol=1e-6)


@torch.no_grad()
def test_save_pretrained_and_from_pretrained_round_trip(decoder, tmp_path):
    perturb_temporal(decoder)
    decoder.save_pretrained(tmp_path / "video_decoder")
    loaded = VideoDecoder.from_pretrained(tmp_path / "video_decoder").eval()
    z = latents()
    assert torch.equal(loaded(z), decoder(z))
    recorded = json.loads(loaded.to_json_string())
    recorded.pop("_name_or_path")
    assert recorded == json.loads(decoder.to_json_string())


def test_gradient_checkpointing_gives_the_same_gradients(decoder):
    perturb_temporal(decoder)
    decoder.train()
    z = latents(batch=1, frames=4)

    def gradients():
        decoder.zero_grad(set_to_none=True)
        decoder(z).square().mean().backward()
        return {name: p.grad.clone() for name, p in decoder.named_parameters()}

    plain = gradients()
    decoder.enable_gradient_checkpointing()
    assert decoder.decoder.up_blocks[0].gradient_checkpointing
    checkpointed = gradients()
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=1e-5, atol=1e-7) for k in plain)
    assert any(plain[k].abs().sum() > 0 for k, _ in decoder.temporal_parameters())


def test_a_heads_count_that_does_not_divide_the_channels_is_refused(vae):
    with pytest.raises(ValueError, match="temporal_attention_heads=3"):
        VideoDecoder.from_vae(vae, temporal_attention_heads=3)


@pytest.mark.slow
def test_peak_memory_of_a_chunked_decode_stays_flat_in_frames():
    """ru_maxrss growth in a fresh process per decode (about 25 s): 57 frames in chunks of 8 against 8 frames whole.
    Measured: 47.8 MiB (8 frames), 53.0 MiB (57 frames chunked: 1.11x), 294 MiB (57 frames whole: 6.2x)."""
    eight = decode_peak_memory_fresh(8)
    chunked = decode_peak_memory_fresh(57, chunk_frames=8, overlap=2)
    whole = decode_peak_memory_fresh(57)
    assert chunked["output_shape"] == [1, 3, 57, 64, 64]
    assert chunked["peak_mib"] <= 1.3 * eight["peak_mib"]
    assert whole["peak_mib"] > 3 * eight["peak_mib"]  # the measure sees memory that grows with F


# --- the training target ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four tiny unlabeled mp4s (the caption sidecars removed: the target must not need them)."""
    from stylevid.data.toy import write_toy_videos

    folder = tmp_path_factory.mktemp("clips")
    write_toy_videos(folder, count=4, frames=8, size=32)
    for caption in folder.glob("*.txt"):
        caption.unlink()
    return folder


def tiny_run(clips, *overrides: str) -> list[str]:
    """The experiment-like overrides the tests train with: the tiny SD model, 4-frame 32-px clips on the CPU."""
    return ["target=video_decoder", "model=tiny", "device=cpu", f"data.video_folder={clips}", "data.frames=4",
            "data.stride=1", "data.size=32", "data.num_workers=0", "trainer.batch_size=2", "trainer.lr=1e-3",
            "trainer.mixed_precision=no", "trainer.gradient_checkpointing=false", "trainer.log_every=1",
            "trainer.tensorboard=false", "video_decoder.temporal_attention_heads=2", *overrides]


def config(clips, *overrides: str):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=tiny_run(clips, *overrides))


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_lower_the_loss_on_a_held_batch_and_export_a_diffusers_decoder(clips, tmp_path):
    from stylevid.train import run_train
    from stylevid.training.loop import step_generator
    from stylevid.training.targets import Step
    from stylevid.training.targets.video_decoder import VideoDecoderTarget

    cfg = config(clips, "trainer.max_steps=6", "trainer.checkpoint_every=0", f"output_dir={tmp_path / 'run'}")
    target = VideoDecoderTarget(cfg, torch.device("cpu"), torch.float32, None)
    held = target.collate([target.videos[0], target.videos[1]])

    def held_loss(model):
        at = Step(1000, 0, 0, 1, step_generator(1, 1000, 0, 0))  # a step the run never draws; same degradation
        with torch.no_grad():
            return float(target.loss(model.eval(), held, at))

    before = held_loss(target.decoder)
    assert held_loss(target.decoder) == before  # the degradation and the latent sample are the step's
    run_dir = run_train(cfg)
    after = held_loss(VideoDecoder.from_pretrained(run_dir / "video_decoder"))
    assert after < 0.6 * before  # measured 1.42 -> 0.57
    result = json.loads((run_dir / "result.json").read_text())
    assert result["files"]["diffusers"] == "video_decoder/" and result["data"]["videos"] == 4


def test_temporal_only_training_leaves_the_image_weights_as_the_vae_had_them(clips, tmp_path):
    from stylevid.models.loading import load_pipeline
    from stylevid.train import run_train

    run_dir = run_train(config(clips, "trainer.max_steps=2", "trainer.checkpoint_every=0",
                               "video_decoder.trainable=temporal", f"output_dir={tmp_path / 'run'}"))
    trained = VideoDecoder.from_pretrained(run_dir / "video_decoder")
    initial = VideoDecoder.from_vae(load_pipeline(config(clips).model, torch.float32).vae, temporal_attention_heads=2)
    assert all(torch.equal(p, dict(initial.spatial_parameters())[k]) for k, p in trained.spatial_parameters())
    assert any(not torch.equal(p, dict(initial.temporal_parameters())[k]) for k, p in trained.temporal_parameters())


def test_resume_repeats_the_uninterrupted_losses(clips, tmp_path):
    from stylevid.train import run_train

    run = ["trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]
    run_dir = run_train(config(clips, *run, f"output_dir={tmp_path / 'run'}"))
    uninterrupted = losses(run_dir)
    assert (run_dir / "checkpoints" / "step_0000001" / "weights" / "config.json").is_file()  # a diffusers directory
    resumed = run_train(config(clips, *run, f"trainer.resume={run_dir / 'checkpoints' / 'step_0000001'}",
                               f"output_dir={tmp_path / 'resumed'}"))
    assert losses(resumed) == pytest.approx(uninterrupted[1:], rel=1e-6)
    checkpoint = f"trainer.resume={run_dir / 'checkpoints' / 'step_0000001'}"
    with pytest.raises(UserInputError, match="video_decoder.temporal_attention_heads=2, this run has 4"):
        run_train(config(clips, *run, "video_decoder.temporal_attention_heads=4", checkpoint, f"output_dir={tmp_path / 'a'}"))
    with pytest.raises(UserInputError, match="another base model"):  # the tiny model of another seed
        run_train(config(clips, *run, "model.seed=1", checkpoint, f"output_dir={tmp_path / 'b'}"))


def test_init_path_continues_from_a_trained_decoder_whose_settings_win(clips, tmp_path):
    """video_decoder.init_path: a run starts from a trained decoder (its temporal settings, not the config's) and
    records it; a missing directory, or a decoder of another VAE, is refused in one line."""
    from stylevid.models.loading import load_pipeline
    from stylevid.train import run_train

    first = run_train(config(clips, "trainer.max_steps=2", "trainer.checkpoint_every=0", f"output_dir={tmp_path / 'first'}"))
    trained = VideoDecoder.from_pretrained(first / "video_decoder")
    continued = run_train(config(clips, "trainer.max_steps=1", "trainer.checkpoint_every=0", "trainer.lr=1e-12",
                                 "trainer.warmup_steps=0", f"video_decoder.init_path={first / 'video_decoder'}",
                                 "video_decoder.temporal_attention_heads=4", f"output_dir={tmp_path / 'continued'}"))
    after = VideoDecoder.from_pretrained(continued / "video_decoder")
    assert after.config.temporal_attention_heads == 2  # the trained decoder's, not the config's 4
    before = trained.state_dict()
    assert all(torch.allclose(value, before[key], atol=1e-8) for key, value in after.state_dict().items())
    assert any(not torch.equal(value, VideoDecoder.from_vae(load_pipeline(config(clips).model, torch.float32).vae,
                                                            temporal_attention_heads=2).state_dict()[key])
               for key, value in after.state_dict().items())  # not a fresh decoder
    result = json.loads((continued / "result.json").read_text())
    assert result["video_decoder"]["init_path"] == str(first / "video_decoder")
    with pytest.raises(UserInputError, match="video_decoder.init_path=.* is not a VideoDecoder directory"):
        run_train(config(clips, f"video_decoder.init_path={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'a'}"))
    other = tmp_path / "toy_decoder"
    VideoDecoder.from_vae(load_pipeline({"name": "toy", "path": None}, torch.float32).vae,
                          temporal_attention_heads=2).save_pretrained(other)
    with pytest.raises(UserInputError, match="video_decoder.init_path=.* decodes"):
        run_train(config(clips, "trainer.max_steps=1", f"video_decoder.init_path={other}", f"output_dir={tmp_path / 'b'}"))


def test_two_ranks_hold_identical_weights_see_different_clips_and_log_the_mean_loss(clips, tmp_path):
    from test_train_ddp import free_port, spawn_ranks
    from test_train_ranks import worker

    run_dir = tmp_path / "run"
    overrides = tiny_run(clips, "trainer.batch_size=1", "trainer.max_steps=3", "trainer.checkpoint_every=0",
                         f"output_dir={run_dir}")
    out = tmp_path / "ranks"
    out.mkdir()
    spawn_ranks(worker, (2, free_port(), overrides, str(out)))
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["weights"].keys() == rank1["weights"].keys()
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert len(rank0["batches"]) == len(rank1["batches"]) == 3
    assert all(a != b for a, b in zip(rank0["batches"], rank1["batches"]))  # each rank its own clips
    means = [(a + b) / 2 for a, b in zip(rank0["own"], rank1["own"])]
    assert rank0["own"] != rank1["own"]
    assert rank0["logged"] == pytest.approx(means, rel=1e-9) and rank1["logged"] == rank0["logged"]
    assert losses(run_dir) == pytest.approx(means, rel=1e-9)


@pytest.mark.parametrize("override, key", [
    ("video_decoder.trainable=spatial", "video_decoder.trainable"),
    ("video_decoder.degradation_strength=1.5", "video_decoder.degradation_strength"),
    ("video_decoder.latents=median", "video_decoder.latents"),
    ("video_decoder.l1_weight=-1", "video_decoder.l1_weight"),
    ("video_decoder.temporal_kernel_size=4", "video_decoder.temporal_kernel_size"),
    ("video_decoder.temporal_attention=maybe", "video_decoder.temporal_attention"),
    ("video_decoder.temporal_attention_heads=3", "video_decoder.temporal_attention_heads"),  # 16 mid channels
])
def test_a_bad_setting_is_one_line_naming_its_key(clips, tmp_path, override, key):
    from stylevid.train import run_train

    cfg = config(clips, "trainer.max_steps=1", f"output_dir={tmp_path / 'run'}", override)
    with pytest.raises(UserInputError) as error:
        run_train(cfg)
    assert key in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run" / "result.json").exists()


def test_images_are_refused_in_one_line(tmp_path):
    from stylevid.train import run_train

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("train", overrides=["target=video_decoder", "model=tiny", "device=cpu", "data=images",
                                          f"data.folder={tmp_path}", f"output_dir={tmp_path / 'run'}"])
    refusal = "^target video_decoder trains on videos: data=webvid, data=folder, data=toy, not data=images$"
    with pytest.raises(UserInputError, match=refusal):
        run_train(cfg)
