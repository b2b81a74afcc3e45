"""Motion-module training: data, objective, checkpoint/resume equivalence, outputs."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_stylevid
import torch
from diffusers import MotionAdapter
from hydra import compose, initialize_config_module

from stylevid.data.toy import write_toy_videos
from stylevid.data.videos import ClipSpec, VideoClipDataset, folder_records, webvid_records
from stylevid.errors import UserInputError
from stylevid.models.motion_module import load_motion_adapter, tiny_motion_adapter
from stylevid.progress import StageReporter
from stylevid.train import run_train

TINY_TRAIN = ["experiment=tiny_motion"]  # conf/experiment/tiny_motion.yaml: the tiny model, 32 px, 4 frames, CPU


@pytest.fixture(scope="module")
def toy_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    write_toy_videos(folder, count=8, frames=10, size=32)
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "broken.txt").write_text("broken\n")
    write_toy_videos(folder / "short", count=1, frames=3, size=32)  # shorter than one clip (7 frames)
    return folder


def train_cfg(overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=["target=motion_module", *overrides])


def motion_trainer(cfg, run_dir=None, reporter=None):
    """The one loop on the motion_module target, as `stylevid train motion_module` builds it."""
    from stylevid.distributed import Rank
    from stylevid.training.loop import Trainer
    from stylevid.training.targets import get_target

    return Trainer(cfg, get_target("motion_module"), run_dir, Rank(), torch.device("cpu"), reporter)


def test_dataset_is_deterministic_and_skips_bad_clips(toy_videos):
    records = folder_records(toy_videos)
    assert len(records) == 10
    dataset = VideoClipDataset(records, ClipSpec(frames=4, stride=2, size=32), seed=5)
    items = [dataset[i] for i in range(len(dataset))]
    again = VideoClipDataset(records, ClipSpec(frames=4, stride=2, size=32), seed=5)
    assert all(torch.equal(a["pixel_values"], again[i]["pixel_values"]) for i, a in enumerate(items))
    assert items[0]["pixel_values"].shape == (4, 3, 32, 32)
    assert -1 <= items[0]["pixel_values"].min() and items[0]["pixel_values"].max() <= 1
    broken = [i for i, r in enumerate(records) if r.path.name == "broken.mp4"][0]
    assert items[broken]["skipped"] >= 1 and items[broken]["caption"] != "broken"
    short = [i for i, r in enumerate(records) if r.path.parent.name == "short"][0]
    assert items[short]["skipped"] >= 1
    other_seed = VideoClipDataset(records, ClipSpec(frames=4, stride=2, size=32), seed=6)
    assert any(not torch.equal(a["pixel_values"], other_seed[i]["pixel_values"]) for i, a in enumerate(items))


def test_webvid_csv(toy_videos, tmp_path):
    csv = tmp_path / "webvid.csv"
    csv.write_text("videoid,name,page_dir\ntoy_00,a red square,000\ntoy_01,a green square,000\n")
    records = webvid_records(csv, toy_videos)
    assert [r.caption for r in records] == ["a red square", "a green square"]
    assert records[0].path == toy_videos / "toy_00.mp4"
    (tmp_path / "bad.csv").write_text("id,caption\n1,x\n")
    with pytest.raises(UserInputError, match="videoid"):
        webvid_records(tmp_path / "bad.csv", toy_videos)


def test_training_changes_only_motion_weights_and_resume_repeats_the_losses(toy_videos, tmp_path):
    common = TINY_TRAIN + [f"data.video_folder={toy_videos}", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                           "trainer.keep_checkpoints=3", "trainer.ema=true", "trainer.ema_decay=0.5",
                           "trainer.lr_scheduler=linear", "trainer.warmup_steps=1"]
    full = run_train(train_cfg(common + [f"output_dir={tmp_path / 'full'}"]))
    losses = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    result = json.loads((full / "result.json").read_text())
    assert result["skipped_items"] >= 1  # the broken and the short video are skipped and counted

    # only motion weights changed; the exported module loads in both formats
    trained = MotionAdapter.from_pretrained(str(full / "motion_module"))
    initial = tiny_motion_adapter(seed=0)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert any("proj_out" in k for k in changed)
    original = load_motion_adapter(str(full / "motion_module.safetensors"), num_attention_heads=2)
    assert all(torch.equal(original.state_dict()[k], v) for k, v in trained.state_dict().items())

    # the checkpoint records what its weights are for (what a resume compares)
    state = torch.load(full / "checkpoints" / "step_0000002" / "training_state.pt", weights_only=True)
    assert state["record"]["base_model"]["name"] == "tiny" and state["record"]["base_model"]["seed"] == 0
    assert state["record"]["base_model"]["unet"]["block_out_channels"] == [32, 64] and state["record"]["base_model"]["unet"]["cross_attention_dim"] == 32
    assert state["record"]["motion"]["motion_num_attention_heads"] == 2 and state["record"]["motion"]["motion_max_seq_length"] == 32

    # interrupted after step 2, resumed: the same losses for steps 3 and 4, and the same weights
    last = full / "checkpoints" / "last"
    assert last.is_symlink() and last.resolve().name == "step_0000004"
    resumed = run_train(train_cfg(common + [f"output_dir={tmp_path / 'resumed'}",
                                            f"trainer.resume={full / 'checkpoints' / 'step_0000002'}"]))
    resumed_losses = [json.loads(line)["loss"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert resumed_losses == losses[2:]
    again = MotionAdapter.from_pretrained(str(resumed / "motion_module"))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert not list((full / "checkpoints").glob(".tmp*"))


def test_frozen_image_weights_and_gradient_accumulation(toy_videos, tmp_path):
    """The trainer's inflated UNet: image weights unchanged after steps, motion weights changed."""
    cfg = train_cfg(TINY_TRAIN + [f"data.video_folder={toy_videos}", "trainer.max_steps=1"])
    trainer = motion_trainer(cfg)
    unet = trainer.target.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer.train()
    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".motion_modules." in f".{k}" for k in changed)
    assert {k for k, p in unet.named_parameters() if p.requires_grad} == {
        k for k in before if ".motion_modules." in f".{k}" and not k.endswith("pos_embed.pe")
    }


def test_bad_training_input_is_a_user_error(toy_videos):
    with pytest.raises(UserInputError, match="too few"):
        run_train(train_cfg(TINY_TRAIN + [f"data.video_folder={toy_videos}", "trainer.batch_size=64",
                                          "output_dir=/tmp/never"]))
    with pytest.raises(UserInputError, match="schedule"):
        from stylevid.training.diffusion import noise_schedule

        noise_schedule("D")


def test_non_finite_weights_are_never_checkpointed(toy_videos, tmp_path):
    """Weights gone NaN after a step whose loss was still finite: the run stops before that step's checkpoint, and
    the previous one stays `last`."""
    from stylevid.training.loop import TrainingDiverged

    cfg = train_cfg(TINY_TRAIN + [f"data.video_folder={toy_videos}", "trainer.max_steps=3", "trainer.checkpoint_every=1",
                                  "trainer.tensorboard=false"])
    trainer = motion_trainer(cfg, tmp_path)
    step = trainer.optimizer_step

    def step_then_break_the_weights_at_step_2(batches):
        result = step(batches)
        if trainer.global_step == 2:
            with torch.no_grad():
                trainer.trainable[0].fill_(float("nan"))
        return result

    trainer.optimizer_step = step_then_break_the_weights_at_step_2
    with pytest.raises(TrainingDiverged, match=r"not finite after step 2; the last good checkpoint is .*step_0000001"):
        trainer.train()
    assert all(np.isfinite(trainer.losses)) and len(trainer.losses) == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last", "step_0000001"]


def test_timestep_bias_draws_the_favoured_timesteps_that_much_more_often(toy_videos):
    from stylevid.training.diffusion import timestep_weights
    from stylevid.training.loop import step_generator

    later = timestep_weights("later", portion=0.5, multiplier=4.0)
    assert later[500:].sum() == pytest.approx(0.8) and later[:500].sum() == pytest.approx(0.2)  # 4 x 500 : 1 x 500
    earlier = timestep_weights("earlier", portion=0.25, multiplier=3.0)
    assert earlier[0] / earlier[-1] == pytest.approx(3.0) and earlier[:250].sum() == pytest.approx(0.5)
    with pytest.raises(UserInputError, match="timestep_bias"):
        timestep_weights("middle", 0.25, 2.0)
    with pytest.raises(UserInputError, match="portion"):
        timestep_weights("later", 0.0, 2.0)

    biased = motion_trainer(train_cfg(TINY_TRAIN + [f"data.video_folder={toy_videos}", "diffusion.timestep_bias=later",
                                                    "diffusion.timestep_bias_portion=0.5", "diffusion.timestep_bias_multiplier=4"]))
    draws = torch.cat([biased.target.objective.timesteps(64, step_generator(0, step, 0, 0)) for step in range(50)])
    assert draws.min() >= 0 and draws.max() < 1000
    assert (draws >= 500).float().mean() == pytest.approx(0.8, abs=0.03)  # 3,200 draws: 3 standard errors is 0.021
    # No bias keeps the uniform draws of earlier runs, so their resumes and seeds give the same timesteps.
    uniform = motion_trainer(train_cfg(TINY_TRAIN + [f"data.video_folder={toy_videos}"]))
    expected = torch.randint(0, 1000, (8,), generator=step_generator(0, 3, 0, 0))
    assert torch.equal(uniform.target.objective.timesteps(8, step_generator(0, 3, 0, 0)), expected)


def run_cli(args, capsys):
    code, _, err = run_stylevid(args, capsys)
    return code, err


def test_init_path_from_another_base_is_one_line_exit_2_before_a_run_directory(toy_videos, tmp_path, capsys):
    other = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                          motion_num_attention_heads=2)
    other.save_pretrained(str(tmp_path / "other"))
    run_dir = tmp_path / "run"
    code, err = run_cli(["train", "motion_module", *TINY_TRAIN, f"data.video_folder={toy_videos}", "trainer.max_steps=1",
                         f"motion.init_path={tmp_path / 'other'}", f"output_dir={run_dir}"], capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "channels" in err
    assert not run_dir.exists()


def test_v_weighting_makes_the_epsilon_loss_the_v_prediction_loss_and_min_snr_caps_the_clean_steps():
    from stylevid.training.diffusion import loss_weights, noise_schedule

    scheduler = noise_schedule("B")
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(6, 4, 3, 8, 8, generator=generator), torch.randn(6, 4, 3, 8, 8, generator=generator)
    predicted_noise = noise + 0.3 * torch.randn(noise.shape, generator=generator)
    timesteps = torch.tensor([0, 150, 400, 700, 900, 999])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    # v from the ε prediction: v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0, with x0 read back from z_t and ε.
    alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    predicted_clean = (noisy - (1 - alpha).sqrt() * predicted_noise) / alpha.sqrt()
    predicted_v = alpha.sqrt() * predicted_noise - (1 - alpha).sqrt() * predicted_clean
    v_loss = ((predicted_v - scheduler.get_velocity(clean, noise, timesteps)) ** 2).flatten(1).mean(1)
    epsilon_loss = ((predicted_noise - noise) ** 2).flatten(1).mean(1)
    weights = loss_weights("v", scheduler)[timesteps]
    torch.testing.assert_close(weights * epsilon_loss, v_loss, rtol=1e-4, atol=1e-6)
    assert weights[-1] / weights[0] > 600  # 1/ᾱ: the noisiest step weighs over 600 times the cleanest

    assert loss_weights("epsilon", scheduler) is None
    snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
    capped = loss_weights("min_snr", scheduler, snr_gamma=5.0)[timesteps]
    torch.testing.assert_close(capped, torch.where(snr > 5, 5 / snr, torch.ones_like(snr)), rtol=1e-4, atol=0)
    with pytest.raises(UserInputError, match="loss_weighting"):
        loss_weights("x0", scheduler)


def test_the_trainers_loss_is_the_epsilon_loss_times_the_weight_of_its_timestep(toy_videos):
    from stylevid.training.loop import step_generator
    from stylevid.training.targets import Step

    settings = TINY_TRAIN + [f"data.video_folder={toy_videos}", "trainer.batch_size=1"]
    plain = motion_trainer(train_cfg(settings))
    weighted = motion_trainer(train_cfg(settings + ["diffusion.loss_weighting=v"]))
    drawn = []
    objective = plain.target.objective
    draw = objective.timesteps
    objective.timesteps = lambda size, generator: drawn.append(draw(size, generator)) or drawn[-1]
    batch = next(iter(plain.batches()))
    at = lambda step: Step(step, 0, 0, 1, step_generator(0, step, 0, 0))  # noqa: E731
    for step in range(3):  # same draws (posterior, noise, timestep, dropout) from the same generator state
        with torch.no_grad():
            epsilon_loss = float(plain.target.loss(plain.model, batch, at(step)))
            v_loss = float(weighted.target.loss(weighted.model, batch, at(step)))
        alpha = float(objective.scheduler.alphas_cumprod[int(drawn[-1])])
        assert v_loss == pytest.approx(epsilon_loss / alpha, rel=1e-4)
    assert len({int(t) for t in drawn}) == 3


@pytest.mark.parametrize("setting, key", [("diffusion.timestep_bias=noisy", "timestep_bias"),
                                          ("diffusion.loss_weighting=x0", "loss_weighting"),
                                          ("diffusion.loss_weighting=min_snr diffusion.snr_gamma=0", "snr_gamma")])
def test_a_bad_timestep_bias_or_loss_weighting_is_one_line_exit_2_before_a_run_directory(toy_videos, tmp_path, capsys,
                                                                                          setting, key):
    run_dir = tmp_path / "run"
    code, err = run_cli(["train", "motion_module", *TINY_TRAIN, f"data.video_folder={toy_videos}", "trainer.max_steps=1",
                         *setting.split(), f"output_dir={run_dir}"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and key in err
    assert not run_dir.exists()


def test_a_folder_without_one_readable_video_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "videos" / "broken.txt").write_text("a broken video\n")
    with pytest.raises(UserInputError, match="none of the 1 videos"):
        run_train(train_cfg(TINY_TRAIN + [f"data.video_folder={tmp_path / 'videos'}", "trainer.batch_size=1",
                                          "trainer.grad_accum=1", f"output_dir={tmp_path / 'never'}"]))
    code, err = run_cli(["train", "motion_module", *TINY_TRAIN, f"data.video_folder={tmp_path / 'videos'}",
                         "trainer.batch_size=1", "trainer.grad_accum=1", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists() and not (tmp_path / "run").exists()


class RecordingReporter(StageReporter):
    """Keeps what the trainer reports for its progress bar."""

    def __init__(self):
        super().__init__()
        self.statuses, self.advances = [], 0

    def status(self, values):
        self.statuses.append(dict(values))

    def advance(self, steps=1):
        self.advances += steps


def test_validation_videos_use_the_trainers_unet_and_leave_training_unchanged(toy_videos, tmp_path, monkeypatch):
    """validation.every=1 with EMA: one video per prompt and step, data.frames long, sampled with the trainer's
    own UNet (no second inflation) holding the EMA weights; the training itself (losses, final weights) is the
    same as without validation, so the live weights were swapped back. The bar gets each step's loss and throughput."""
    import imageio.v3 as iio
    from diffusers import UNetMotionModel

    from stylevid.methods import animatediff
    common = TINY_TRAIN + [f"data.video_folder={toy_videos}", "trainer.max_steps=2", "trainer.ema=true",
                           "trainer.ema_decay=0.5", "trainer.checkpoint_every=0", "trainer.tensorboard=false",
                           "validation.prompts=[red,blue]", "validation.steps=1", "validation.fps=4"]
    reporter = RecordingReporter()
    trainer = motion_trainer(train_cfg(common + ["validation.every=1"]), tmp_path / "with", reporter)
    (tmp_path / "with").mkdir()

    def no_second_inflation(*args, **kwargs):
        raise AssertionError("validation inflated pipe.unet again instead of using the trainer's UNet")

    seen = []  # the motion weights each validation video was sampled with
    generate = animatediff.generate

    def recording_generate(pipe, adapter, settings, reporter=None, video_unet=None):
        assert video_unet is trainer.target.unet
        seen.append({k: v.clone() for k, v in video_unet.state_dict().items() if "motion_modules." in k})
        return generate(pipe, adapter, settings, reporter, video_unet=video_unet)

    monkeypatch.setattr(UNetMotionModel, "from_unet2d", no_second_inflation)
    monkeypatch.setattr(animatediff, "generate", recording_generate)
    trainer.train()
    monkeypatch.undo()
    videos = sorted(p.name for p in (tmp_path / "with" / "validation").glob("*.mp4"))
    assert videos == ["step_0000001_0.mp4", "step_0000001_1.mp4", "step_0000002_0.mp4", "step_0000002_1.mp4"]
    video = iio.imread(tmp_path / "with" / "validation" / videos[-1], plugin="FFMPEG")
    assert video.shape == (4, 32, 32, 3)
    # the last videos were sampled with the final EMA weights, which differ from the live ones
    with trainer.ema_weights():
        ema = trainer.target.adapter(trainer.weights()).state_dict()
    live = trainer.target.adapter(trainer.weights()).state_dict()
    last = seen[-1]  # UNetMotionModel and MotionAdapter name motion weights alike
    assert len(seen) == 4 and set(last) == set(ema)
    assert all(torch.equal(last[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], live[k]) for k in ema)

    plain = motion_trainer(train_cfg(common + ["validation.every=0"]))
    plain.train()
    assert trainer.losses == plain.losses
    assert all(torch.equal(p, q) for p, q in zip(trainer.trainable, plain.trainable))

    # the progress bar's numbers: the step's loss (as logged) and its throughput, once per step
    assert reporter.advances == 2 and [s["loss"] for s in reporter.statuses] == trainer.losses
    assert all(s["steps/s"] > 0 and s["items/s"] == pytest.approx(s["steps/s"] * 2 * 2) for s in reporter.statuses)


def test_the_training_bar_shows_loss_and_throughput_on_rank_0_only(monkeypatch):
    import io

    from rich.console import Console

    from stylevid.cli.progress import RichStageReporter, SilentStageReporter, stage_reporter

    terminal = Console(force_terminal=True, record=True, width=150, file=io.StringIO())
    monkeypatch.setenv("RANK", "0")
    reporter = stage_reporter(terminal)
    assert isinstance(reporter, RichStageReporter)
    with reporter, reporter.stage("training", total=2):
        reporter.status({"loss": 0.1234, "steps/s": 2.5, "clips/s": 10.0})
        reporter.advance()
    assert "loss 0.1234  steps/s 2.5  clips/s 10" in terminal.export_text()
    monkeypatch.setenv("RANK", "1")
    assert isinstance(stage_reporter(terminal), SilentStageReporter)


def test_motion_module_loss_sequence_is_pinned(tmp_path):
    """The first four logged losses of a fixed tiny run, recorded before the trainer moves onto one loop for every
    target (issue 18): a refactor of the loop, the objective or the data order must reproduce them."""
    write_toy_videos(tmp_path / "videos", count=8, frames=10, size=32)
    run = run_train(train_cfg(TINY_TRAIN + [f"data.video_folder={tmp_path / 'videos'}", "trainer.max_steps=4",
                                            f"output_dir={tmp_path / 'run'}"]))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [1.1631096601486206, 1.0460492968559265, 1.1527925729751587, 1.063682734966278]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_train_help_lists_every_registered_target_with_its_line(capsys):
    from stylevid.training.targets import registered_targets

    code, out, _ = run_stylevid(["train", "--help"], capsys)
    assert code == 0
    targets = registered_targets()
    assert {"motion_module", "lora"} <= set(targets)
    for name, target in targets.items():
        assert f"  {name:<13} {target.description}" in out


def test_a_relative_and_an_absolute_path_to_one_base_model_are_the_same_model(tmp_path, monkeypatch):
    """A resume compares the recorded base model: `model.path=models/x` and `/abs/.../models/x` name one model."""
    from omegaconf import OmegaConf

    from stylevid.training.checkpoint import model_identity

    (tmp_path / "models" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    relative = model_identity(OmegaConf.create({"name": "custom", "path": "models/x"}))
    absolute = model_identity(OmegaConf.create({"name": "custom", "path": str(tmp_path / "models" / "x")}))
    assert relative == absolute == {"name": "custom", "path": str((tmp_path / "models" / "x").resolve())}
    assert model_identity(OmegaConf.create({"name": "tiny", "path": None, "seed": 3})) == {"name": "tiny", "path": None, "seed": 3}


def test_packaged_toy_weights_keep_one_name_on_every_machine():
    """The shipped toy models record their base model as stylevid/toy/weights/pipeline (the build's repository-relative
    name); a run here on the same packaged model, by any path to it, records the same name, so the shipped toy Gen-1
    can be continued with gen1.init= (it was refused: the recorded relative path differed from this machine's absolute one)."""
    import json

    from omegaconf import OmegaConf

    from stylevid.toy import WEIGHTS
    from stylevid.training.checkpoint import describe_model, model_identity

    recorded = json.loads((WEIGHTS / "gen1" / "unet" / "gen1.json").read_text())["base_model"]
    for path in (WEIGHTS / "pipeline", WEIGHTS.resolve() / "pipeline", WEIGHTS / ".." / "weights" / "pipeline"):
        here = model_identity(OmegaConf.create({"name": "toy", "path": str(path)}))
        assert here["path"] == "stylevid/toy/weights/pipeline"
        assert describe_model(here) == describe_model(recorded)
    # model=toy (no path) loads that pipeline: a user continues the shipped toy Gen-1 with model=toy as it is.
    assert describe_model(model_identity(OmegaConf.create({"name": "toy", "path": None}))) == describe_model(recorded)
    other = model_identity(OmegaConf.create({"name": "toy", "path": str(WEIGHTS.parent)}))
    assert other["path"] == str(WEIGHTS.parent.resolve())  # outside the weights: the resolved path as before
