"""Training Gen-1 (`stylevid train gen1 | gen1_prior`, paper Sections 3.3-3.4 and 4.4) on the tiny model and toy clips.

Stages chain as in the paper: content (images only) -> temporal (joint images / videos) -> structure (t_s = 0) ->
structure_ts (t_s uniform), each from the previous run's export; toy clips are 16 px, 4 frames, with ground-truth depth.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from stylevid.errors import UserInputError
from stylevid.models.gen1 import EXTRA_CHANNELS, load_gen1, read_gen1_info
from stylevid.train import run_train
from stylevid.training.loop import step_generator
from stylevid.training.targets import Step, get_target
from stylevid.training.targets.gen1 import collate_gen1, image_batch_drawn

TINY = ["target=gen1", "experiment=tiny_gen1"]
PRIOR = ["target=gen1_prior", "experiment=tiny_gen1"]
# experiment=tiny_gen1 spelled out, for experiments that cannot be combined with it (one experiment per run)
TINY_KEYS = ["model=tiny", "data=toy", "device=cpu", "data.frames=4", "data.stride=16", "data.size=16", "data.count=8",
             "data.num_workers=0", "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.lr=1e-3",
             "trainer.lr_scheduler=constant", "trainer.warmup_steps=0", "trainer.log_every=1", "trainer.mixed_precision=no",
             "trainer.gradient_checkpointing=false", "trainer.tensorboard=false", "gen1.image_encoder=tiny",
             "gen1.depth_model=tiny", "gen1.max_frames=8"]
RUN = ["trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"]


def config(overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def build(overrides):
    cfg = config(overrides)
    return get_target(str(cfg.target.name))(cfg, torch.device("cpu"), torch.float32, None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The four stages, each three steps from the one before (checkpoints after every step). The joint stages train
    half image batches, so both kinds of batch occur in three steps."""
    root = tmp_path_factory.mktemp("gen1")
    done = {}
    for stage, init, extra in (("content", None, []), ("temporal", "content", ["gen1.image_batch_share=0.5"]),
                               ("structure", "temporal", []), ("structure_ts", "structure", ["gen1.image_batch_share=0.5"])):
        overrides = [*TINY, *RUN, f"gen1.stage={stage}", *extra, f"output_dir={root / stage}"]
        if init:
            overrides.append(f"gen1.init={done[init]}")
        done[stage] = run_train(config(overrides))
    return done


def held(target):
    """Two clips of the data (with depth) and a generator the runs never draw: a fixed batch with fixed noise."""
    return collate_gen1([target.items[i] for i in range(2)])


def held_loss(target, unet, batch, image_batch: bool, draws: int = 8) -> float:
    """The mean loss over `draws` fixed draws (timesteps, noise, dropouts) that the runs never make: one draw of two
    clips is one timestep each, too noisy to compare a few steps by."""
    depth = target.clip_depth(batch) if target.structure else None
    total = 0.0
    with torch.no_grad():
        for draw in range(draws):
            generator = step_generator(7, 1000 + draw, 0, 0)
            latents, content, structure = target.conditions(batch["pixel_values"], depth, image_batch, generator)
            total += float(target.denoising_loss(unet.eval(), latents, content, structure, image_batch, generator))
    return total / draws


# --- stages: a few steps lower the loss on a held batch -------------------------------------------------------------


def fit(target, batch, steps: int = 10, lr: float = 1e-3) -> None:
    """`steps` AdamW steps of the target's own loss on `batch` (fresh draws each step, as the loop makes them)."""
    optimizer = torch.optim.AdamW(target.trainable_parameters(), lr=lr)
    for step in range(steps):
        target.unet.train()
        optimizer.zero_grad()
        target.loss(target.unet, batch, Step(step, 0, 0, 1, step_generator(0, step, 0, 0))).backward()
        optimizer.step()


@pytest.mark.parametrize("stage, init", [("content", None), ("temporal", "content"), ("structure", "temporal"),
                                         ("structure_ts", "structure")])
def test_a_few_steps_of_each_stage_lower_the_loss_on_a_fixed_batch(runs, stage, init):
    """Content in image mode (all it trains), the others in video mode (image_batch_share=0): the v-loss of a fixed
    batch over 8 fixed draws, before and after 10 steps on that batch (measured: content 0.468 -> 0.358, temporal
    0.363 -> 0.297, structure 0.334 -> 0.281, structure_ts 0.319 -> 0.294)."""
    target = build([*TINY, f"gen1.stage={stage}", "gen1.image_batch_share=0", *([f"gen1.init={runs[init]}"] if init else [])])
    batch = held(target)
    image = stage == "content"
    before = held_loss(target, target.unet, batch, image)
    fit(target, batch)
    after = held_loss(target, target.unet, batch, image)
    assert np.isfinite(before) and after < 0.95 * before, (before, after)


def test_the_content_stage_trains_the_image_model_on_clip_image_embeddings(runs):
    content = build([*TINY, "gen1.stage=content"])
    trained = {name for name, p in content.unet.named_parameters() if p.requires_grad}
    assert trained == {name for name, _ in content.unet.spatial_parameters()}  # temporal layers frozen (bypassed)
    assert content.unet.config.cross_attention_dim == content.image_encoder.config.projection_dim == 32
    info = read_gen1_info(runs["content"] / "unet", "t")
    assert (info["stage"], info["image_encoder"], info["prediction"], info["structure"]) == ("content", "tiny", "v_prediction", False)
    files = json.loads((runs["content"] / "result.json").read_text())["files"]
    assert (files["gen1_unet"], files["image_encoder"]) == ("unet/", "image_encoder/")
    # The exported vision tower is the one the UNet was trained to read: the same content tokens.
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    from stylevid.models.gen1 import content_embeddings

    images = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    exported = (CLIPVisionModelWithProjection.from_pretrained(str(runs["content"] / "image_encoder")),
                CLIPImageProcessorPil.from_pretrained(str(runs["content"] / "image_encoder")))
    assert torch.equal(content_embeddings(*exported, images), content_embeddings(content.image_encoder, content.feature_extractor, images))
    for stage in ("temporal", "structure", "structure_ts"):
        info = read_gen1_info(runs[stage] / "unet", "t")
        assert info["stage"] == {"structure_ts": "ts"}.get(stage, stage) and info["structure"] == (stage != "temporal")


def test_content_stage_sees_images_only(runs):
    """Every forward of the content stage is the image model (image_mode=True) on B*F single frames, whatever the
    step, and its temporal weights leave the run as they came in (the identity)."""
    content = build([*TINY, "gen1.stage=content", "gen1.image_batch_share=0"])  # the share is not the content stage's
    calls = []

    def spy(sample, timestep, **kwargs):
        calls.append((kwargs["image_mode"], tuple(sample.shape)))
        return content.unet(sample, timestep, **kwargs)

    batch = held(content)
    for step in range(6):
        content.loss(spy, batch, Step(step, 0, 0, 1, step_generator(0, step, 0, 0)))
    assert calls == [(True, (8, 4, 2, 2))] * 6  # 2 clips x 4 frames, each an image
    start, trained = content.unet.state_dict(), load_gen1(runs["content"], "t")[0].state_dict()
    assert all(torch.equal(trained[k], start[k]) for k, _ in content.unet.temporal_parameters())


def test_a_structure_stage_from_a_temporal_export_keeps_every_weight_and_adds_zero_channels(runs):
    temporal, _ = load_gen1(runs["temporal"], "t")
    structure = build([*TINY, "gen1.stage=structure", f"gen1.init={runs['temporal']}"])
    before, grown = temporal.state_dict(), structure.unet.state_dict()
    assert set(grown) == set(before)
    assert all(torch.equal(grown[k][:, :4] if k == "conv_in.weight" else grown[k], v) for k, v in before.items())
    assert grown["conv_in.weight"].shape[1] == 4 + EXTRA_CHANNELS and not grown["conv_in.weight"][:, 4:].any()
    # Zero channels: any structure input gives what the temporal model gives.
    torch.manual_seed(0)
    noisy, content = torch.randn(1, 4, 4, 2, 2), torch.randn(1, 1, 32)
    with torch.no_grad():
        plain = temporal(noisy, 10, encoder_hidden_states=content).sample
        given = structure.unet.eval()(noisy, 10, encoder_hidden_states=content, extra_input=torch.randn(1, 8, 4, 2, 2)).sample
    assert torch.equal(plain, given)
    # Its temporal stage's weights went in whole: the temporal layers moved off the identity there.
    content, _ = load_gen1(runs["content"], "t")
    assert any(not torch.equal(before[k], content.state_dict()[k]) for k, _ in content.temporal_parameters())


def test_structure_is_ground_truth_depth_and_t_s_is_drawn_per_clip(runs):
    ts_target = build([*TINY, "gen1.stage=structure_ts", f"gen1.init={runs['structure']}"])
    batch = held(ts_target)
    assert batch["depth"].shape == (2, 4, 16, 16) and 0 <= float(batch["depth"].min()) < float(batch["depth"].max()) <= 1
    frames, depth, *_ = ts_target.videos.clip_with_depth(0)
    assert np.array_equal(batch["depth"][0].numpy(), depth)  # the toy world's own depth of the frames
    # ... which the model sees normalised once per clip and quantised, as the depth annotator's maps at sampling
    seen_depth = ts_target.clip_depth(batch)
    assert all(float(clip.min()) == 0 and float(clip.max()) == 1 for clip in seen_depth)
    expected = (depth - depth.min()) / (depth.max() - depth.min())
    assert np.abs(seen_depth[0] - expected).max() <= 0.5 / 255 + 1e-6
    seen = drawn_ts(ts_target, batch, 12)
    assert set(seen) <= set(range(8)) and len(set(seen)) >= 5  # uniform in {0..7}, one per clip
    structure = build([*TINY, "gen1.stage=structure", f"gen1.init={runs['temporal']}"])
    assert drawn_ts(structure, batch, 1) == [0, 0]
    assert (structure.info()["trained_max_ts"], ts_target.info()["trained_max_ts"]) == (0, 7)
    # structure_ts at gen1.max_ts=0 from a ts model (the toy build's t_s = 0 run): t_s is 0 only, and the record keeps
    # the widest blur the weights were trained on (method=gen1 warns beyond it); from a structure model it stays 0.
    for init, widest in ((runs["structure_ts"], 7), (runs["structure"], 0)):
        again = build([*TINY, "gen1.stage=structure_ts", "gen1.max_ts=0", f"gen1.init={init}"])
        assert set(drawn_ts(again, batch, 4)) == {0} and again.info()["trained_max_ts"] == widest
    # gen1.ts_weights: t_s drawn with those weights in place of uniform (half at 0, half over 5..7 here).
    weighted = build([*TINY, "gen1.stage=structure_ts", f"gen1.init={runs['structure']}", "gen1.ts_weights=[3,0,0,0,0,1,1,1]"])
    seen = np.array(drawn_ts(weighted, batch, 200))
    assert set(seen.tolist()) == {0, 5, 6, 7} and abs(np.mean(seen == 0) - 0.5) < 0.08  # binomial sd 0.025 over 400
    assert weighted.summary()["gen1"]["ts_weights"] == [0.5, 0, 0, 0, 0, 0.166667, 0.166667, 0.166667]
    assert seen.tolist() == drawn_ts(weighted, batch, 200)  # a function of the step's generator: resumable


def drawn_ts(target, batch, steps: int) -> list[int]:
    """The t_s the target draws for the batch's clips over `steps` steps (its structure input, recorded)."""
    seen = []
    original = target.structure_input
    target.structure_input = lambda depth, ts: seen.extend(ts) or original(depth, ts)
    for step in range(steps):
        target.conditions(batch["pixel_values"], batch["depth"].numpy(), False, step_generator(0, step, 0, 0))
    return seen


# --- joint image / video training ---------------------------------------------------------------------------------


def test_the_image_batch_share_is_what_is_drawn():
    draws = [image_batch_drawn(0, step, 0.125) for step in range(4000)]
    assert abs(np.mean(draws) - 0.125) < 0.015  # binomial sd 0.005
    assert draws == [image_batch_drawn(0, step, 0.125) for step in range(4000)]  # a function of (seed, step): resumable
    assert draws != [image_batch_drawn(1, step, 0.125) for step in range(4000)]
    assert not any(image_batch_drawn(0, s, 0.0) for s in range(100)) and all(image_batch_drawn(0, s, 1.0) for s in range(100))


def test_the_loss_follows_the_draw_and_image_batches_leave_temporal_weights_without_gradient(runs):
    target = build([*TINY, "gen1.stage=temporal", f"gen1.init={runs['content']}", "gen1.image_batch_share=0.5"])
    modes = []

    def spy(sample, timestep, **kwargs):
        modes.append(kwargs["image_mode"])
        return target.unet(sample, timestep, **kwargs)

    batch = held(target)
    temporal = dict(target.unet.temporal_parameters())
    for step in range(8):
        target.unet.zero_grad(set_to_none=True)
        at = Step(step, 0, 0, 1, step_generator(0, step, 0, 0))
        target.loss(spy, batch, at).backward()
        image = image_batch_drawn(0, step, 0.5)
        assert modes[-1] == image
        if image:  # bypassed: not in the graph at all (AdamW then leaves them untouched)
            assert all(p.grad is None for p in temporal.values())
        else:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in temporal.values())
        spatial = target.unet.conv_in.weight.grad
        assert spatial is not None and spatial.abs().sum() > 0
    assert 0 < sum(modes) < len(modes)


# --- resume --------------------------------------------------------------------------------------------------------


def test_resume_repeats_the_uninterrupted_losses_and_weights(runs, tmp_path):
    """structure_ts with half image batches: every draw of the step (mode, frame, dropouts, t_s, noise, dropout
    masks) is a function of (seed, step), so the resumed steps are the same steps."""
    run = runs["structure_ts"]
    overrides = [*TINY, "gen1.stage=structure_ts", f"gen1.init={runs['structure']}", "gen1.image_batch_share=0.5",
                 "trainer.max_steps=3"]
    assert {image_batch_drawn(0, s, 0.5) for s in (1, 2)} == {True, False}  # the resumed steps hold both kinds
    resumed = run_train(config([*overrides, f"trainer.resume={run / 'checkpoints' / 'step_0000001'}",
                                f"output_dir={tmp_path / 'r'}"]))
    assert losses(resumed) == losses(run)[1:]
    full, again = load_gen1(run, "t")[0].state_dict(), load_gen1(resumed, "t")[0].state_dict()
    assert all(torch.equal(again[k], v) for k, v in full.items())
    # A checkpoint of another stage is refused in one line naming the setting.
    with pytest.raises(UserInputError, match="gen1.stage=structure_ts"):
        run_train(config([*TINY, "gen1.stage=structure", f"gen1.init={runs['structure']}", "trainer.max_steps=3",
                          f"trainer.resume={run / 'checkpoints' / 'step_0000001'}", f"output_dir={tmp_path / 'x'}"]))


# --- customization (Section 4.4) -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    from test_train_ranks import write_images

    folder = tmp_path_factory.mktemp("subject") / "images"
    write_images(folder, count=4)
    return folder


def test_customization_batches_are_half_subject_half_original_data(runs, subject, tmp_path):
    overrides = ["target=gen1", "experiment=gen1_customize", *TINY_KEYS, f"gen1.init={runs['structure_ts']}",
                 f"data.subject={subject}"]
    target = build(overrides)
    batch = collate_gen1([target.items[i] for i in range(2)])
    assert batch["subject_pixel_values"].shape == (2, 3, 16, 16) and batch["pixel_values"].shape == (2, 4, 3, 16, 16)
    assert batch["subjects"] == 2 and "depth" in batch  # the original half keeps its ground-truth depth
    calls = []

    def spy(sample, timestep, **kwargs):
        calls.append((kwargs["image_mode"], sample.shape[0], kwargs["extra_input"].shape[1]))
        return target.unet(sample, timestep, **kwargs)

    step = next(s for s in range(20) if not image_batch_drawn(0, s, 0.125))
    target.loss(spy, batch, Step(step, 0, 0, 1, step_generator(0, step, 0, 0)))
    assert calls == [(False, 2, 8), (True, 2, 8)]  # 2 clips as videos, then 2 subject images with their estimated depth
    run = run_train(config([*overrides, "trainer.max_steps=2", f"output_dir={tmp_path / 'custom'}"]))
    info = read_gen1_info(run / "unet", "t")
    assert info["stage"] == "ts" and info["customized_on"] == str(subject.resolve())
    assert np.isfinite(losses(run)).all()


def test_the_tiny_experiment_is_the_spelled_out_overrides():
    spelled, experiment = config([*TINY_KEYS, "target=gen1"]), config(TINY)
    for key in ("model", "data", "trainer", "gen1"):
        assert OmegaConf.to_container(spelled[key]) == OmegaConf.to_container(experiment[key]), key
    assert spelled.device == experiment.device == "cpu"


# --- the prior -------------------------------------------------------------------------------------------------------


def test_the_prior_lowers_its_loss_and_exports_what_kandinskys_prior_pipeline_runs(tmp_path):
    from diffusers import KandinskyPriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    prior_target = build(PRIOR)
    stats = torch.cat([prior_target.image_embeddings(prior_target.videos[i]["pixel_values"]) for i in range(4)])
    assert torch.allclose(prior_target.prior.clip_mean, stats.mean(0, keepdim=True), atol=1e-6)
    assert not prior_target.prior.clip_mean.requires_grad and not prior_target.prior.clip_std.requires_grad
    batch = collate_gen1([prior_target.videos[i] for i in range(2)])

    def held_prior_loss(prior):  # 8 fixed draws (frame, caption dropout, noise, timestep) the runs never make
        with torch.no_grad():
            return float(np.mean([float(prior_target.loss(prior.eval(), batch, Step(1000 + d, 0, 0, 1, step_generator(7, 1000 + d, 0, 0))))
                                  for d in range(8)]))

    before = held_prior_loss(prior_target.prior)
    optimizer = torch.optim.AdamW(prior_target.trainable_parameters(), lr=1e-3)
    for step in range(10):
        prior_target.prior.train()
        optimizer.zero_grad()
        prior_target.loss(prior_target.prior, batch, Step(step, 0, 0, 1, step_generator(0, step, 0, 0))).backward()
        optimizer.step()
    after = held_prior_loss(prior_target.prior)
    assert np.isfinite(before) and after < 0.8 * before, (before, after)  # measured 1.486 -> 0.843

    run = run_train(config([*PRIOR, "trainer.max_steps=6", "trainer.checkpoint_every=3", f"output_dir={tmp_path / 'p'}"]))
    directory = run / "prior"
    trained = PriorTransformer.from_pretrained(str(directory))
    assert torch.equal(trained.clip_std, prior_target.prior.clip_std)  # the statistics travel with the weights
    record = json.loads((directory / "prior.json").read_text())
    assert (record["clip"], record["objective"], record["normalisation"]["clips"]) == ("tiny", "sample", 4)
    # diffusers' own prior pipeline runs the export: the text tower and tokenizer it read, unCLIP's scheduler.
    scheduler = UnCLIPScheduler.from_pretrained(str(directory / "scheduler"))
    assert scheduler.config.prediction_type == "sample"
    assert torch.equal(scheduler.alphas_cumprod, prior_target.scheduler.alphas_cumprod)  # the trained noise levels
    pipe = KandinskyPriorPipeline(prior=trained, image_encoder=prior_target.image_encoder,
                                  text_encoder=CLIPTextModelWithProjection.from_pretrained(str(directory / "text_encoder")),
                                  tokenizer=CLIPTokenizer.from_pretrained(str(directory / "tokenizer")),
                                  scheduler=scheduler, image_processor=prior_target.feature_extractor)
    pipe.set_progress_bar_config(disable=True)
    embeds = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).image_embeds
    assert embeds.shape == (1, 32) and torch.isfinite(embeds).all()
    # Resumed after step 3 of 6: the same last three losses.
    resumed = run_train(config([*PRIOR, "trainer.max_steps=6", f"trainer.resume={run / 'checkpoints' / 'step_0000003'}",
                                f"output_dir={tmp_path / 'p2'}"]))
    assert losses(resumed) == losses(run)[3:]


# --- real clips: depth from the annotator ---------------------------------------------------------------------------


def test_real_clips_get_their_depth_from_the_annotator(runs, tmp_path):
    from stylevid.data.toy import write_toy_videos

    write_toy_videos(tmp_path / "videos", count=2, frames=10, size=32)
    target = build([*TINY, "data=folder", f"data.video_folder={tmp_path / 'videos'}", "data.frames=4", "data.stride=2",
                    "data.size=16", "gen1.stage=structure", f"gen1.init={runs['temporal']}"])
    batch = collate_gen1([target.items[i] for i in range(2)])
    assert "depth" not in batch
    depth = target.clip_depth(batch)
    assert depth.shape == (2, 4, 16, 16) and depth.dtype == np.float32
    assert all(float(clip.min()) == 0 and float(clip.max()) == 1 for clip in depth)  # normalised once per clip
    at = Step(0, 0, 0, 1, step_generator(0, 0, 0, 0))
    assert np.isfinite(float(target.loss(target.unet, batch, at)))


# --- bad input -----------------------------------------------------------------------------------------------------


def test_bad_values_are_one_line_before_anything_loads(runs, subject, tmp_path):
    cases = [
        (["gen1.stage=motion"], "gen1.stage must be one of"),
        (["gen1.stage=temporal"], "gen1.stage=temporal needs gen1.init"),
        (["gen1.stage=content", f"gen1.init={runs['content']}"], "gen1.init is for the stages after content"),
        (["gen1.stage=structure", f"gen1.init={runs['content']}"], "is a content model; gen1.stage=structure starts from the temporal"),
        (["gen1.stage=temporal", f"gen1.init={tmp_path}"], "is not a Gen-1 UNet"),
        (["gen1.stage=temporal", f"gen1.init={runs['content']}", "gen1.image_encoder=toy"], "gen1.image_encoder=tiny"),
        (["gen1.image_encoder=./no/such/clip"], "gen1.image_encoder=./no/such/clip does not exist"),
        (["gen1.image_batch_share=1.5"], "gen1.image_batch_share"),
        (["gen1.max_ts=9"], "gen1.max_ts"),
        (["gen1.ts_weights=[1,1]"], "gen1.ts_weights holds 2 weights; gen1.max_ts=7 takes 8"),
        (["gen1.ts_weights=[0,0,0,0,0,0,0,0]"], "gen1.ts_weights has no positive weight"),
        (["gen1.ts_weights=[1,-1,0,0,0,0,0,0]"], "gen1.ts_weights\\[1\\]"),
        (["gen1.ts_weights=3"], "gen1.ts_weights must be a list"),
        (["gen1.stage=structure", f"gen1.init={runs['temporal']}", "gen1.ts_weights=[1,0,0,0,0,0,0,1]"],
         "gen1.ts_weights is for gen1.stage=structure_ts"),
        (["gen1.content_dropout=-0.1"], "gen1.content_dropout"),
        (["data=images", "data.folder=x"], "target gen1 trains on videos"),
        (["data.frames=9"], "gen1.max_frames=8"),
        ([f"+data.subject={subject}"], "data.subject \\(customization\\) fine-tunes a trained"),
        (["gen1.stage=structure", f"gen1.init={runs['temporal']}", "data=folder", "data.video_folder=v",
          "gen1.depth_model="], "gen1.depth_model is not set"),
    ]
    for index, (extra, message) in enumerate(cases):
        with pytest.raises(UserInputError, match=message) as error:
            run_train(config([*TINY, *extra, f"output_dir={tmp_path / str(index)}"]))
        assert "\n" not in str(error.value)
    with pytest.raises(UserInputError, match="data.subject is required"):
        run_train(config(["target=gen1", "experiment=gen1_customize", *TINY_KEYS, f"gen1.init={runs['structure_ts']}",
                          "trainer.max_steps=1", f"output_dir={tmp_path / 'c'}"]))
    with pytest.raises(UserInputError, match="gen1_prior.num_layers"):
        run_train(config([*PRIOR, "gen1_prior.num_layers=0", f"output_dir={tmp_path / 'p'}"]))
    assert not any((tmp_path / str(i)).exists() for i in range(len(cases))) and not (tmp_path / "c").exists()


# --- two ranks ------------------------------------------------------------------------------------------------------


def two_ranks(overrides, tmp_path):
    """Run `overrides` under two gloo ranks (tests/test_train_ranks.py's worker); both ranks' records."""
    from test_train_ddp import free_port, spawn_ranks
    from test_train_ranks import worker

    out = tmp_path / "ranks"
    out.mkdir()
    spawn_ranks(worker, (2, free_port(), overrides, str(out)))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def check_ranks(rank0, rank1, run_dir):
    assert rank0["weights"].keys() == rank1["weights"].keys()
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert all(a != b for a, b in zip(rank0["batches"], rank1["batches"]))  # each rank its own shard
    means = [(a + b) / 2 for a, b in zip(rank0["own"], rank1["own"])]
    assert rank0["own"] != rank1["own"] and rank0["logged"] == pytest.approx(means, rel=1e-9)
    assert losses(run_dir) == pytest.approx(means, rel=1e-9)


def test_two_ranks_hold_identical_weights_and_log_the_mean_loss(runs, tmp_path):
    """The temporal stage with half image batches under two gloo ranks (DDP, ~10 s): image steps (temporal layers
    out of the graph: DDP's reducer would wait for their gradients without the zero-weighted term) and video steps
    both run, the ranks end with the same weights and the log is the mean of their losses."""
    assert {image_batch_drawn(0, s, 0.5) for s in range(3)} == {True, False}
    run_dir = tmp_path / "run"
    rank0, rank1 = two_ranks([*TINY, "gen1.stage=temporal", f"gen1.init={runs['content']}", "gen1.image_batch_share=0.5",
                              "trainer.batch_size=1", "trainer.max_steps=3", "trainer.checkpoint_every=0",
                              f"output_dir={run_dir}"], tmp_path)
    check_ranks(rank0, rank1, run_dir)
    exported = load_gen1(run_dir, "t")[0].state_dict()
    assert all(torch.equal(exported[k], rank0["weights"][k]) for k in exported)


@pytest.mark.slow
def test_the_prior_under_two_ranks(tmp_path):
    run_dir = tmp_path / "run"
    rank0, rank1 = two_ranks([*PRIOR, "trainer.batch_size=1", "trainer.max_steps=3", "trainer.checkpoint_every=0",
                              f"output_dir={run_dir}"], tmp_path)
    check_ranks(rank0, rank1, run_dir)
    assert torch.equal(rank0["weights"]["clip_std"], rank1["weights"]["clip_std"])


# --- the CLIP towers ---------------------------------------------------------------------------------------------------


def test_the_toy_clips_towers_give_the_clip_models_own_features():
    """A CLIPModel checkpoint split into the two towers with projections (what gen1.image_encoder=toy and
    gen1_prior.clip=toy load): the same image and text features as CLIPModel itself, at its 64-d projection width."""
    from transformers import CLIPModel

    from stylevid.toy import toy_path
    from stylevid.training.targets.gen1 import DEFAULT_IMAGE_ENCODER, clip_reference, load_clip

    assert [clip_reference("auto", name) for name in ("tiny", "toy", "sd15")] == ["tiny", "toy", DEFAULT_IMAGE_ENCODER]
    parts = load_clip("toy", "gen1.image_encoder", vision=True, text=True)
    model = CLIPModel.from_pretrained(str(toy_path("clip"))).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = parts["tokenizer"](["a red circle", "a blue square"], padding="max_length", return_tensors="pt")
    projected = lambda out: out if torch.is_tensor(out) else out.pooler_output  # noqa: E731  (transformers 5: an output)
    with torch.no_grad():
        image = parts["image_encoder"](pixels).image_embeds
        assert torch.allclose(image, projected(model.get_image_features(pixel_values=pixels)), atol=1e-6)
        text = parts["text_encoder"](ids.input_ids, attention_mask=ids.attention_mask).text_embeds
        reference = projected(model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask))
        assert torch.allclose(text, reference, atol=1e-6)
    assert parts["image_encoder"].config.projection_dim == 64 and parts["feature_extractor"].crop_size["height"] == 64
