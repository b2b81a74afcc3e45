"""The packaged toy models: they load through the real loaders and do what each method's paper claims.

Thresholds are the toy world's targets (issue: "What the toy world must show"); `scripts/toy_report.py`
prints the same figures. Generation-heavy checks carry the `slow` marker.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file

from stylevid.models.loading import load_pipeline
from stylevid.models.motion_module import load_motion_adapter
from stylevid.toy import WEIGHTS, judge, manifest, toy_path

ROOT = Path(__file__).resolve().parents[1]
STYLES = judge.example_styles(ROOT)


@pytest.fixture(scope="module")
def toy_pipe():
    pipe = load_pipeline(OmegaConf.create({"name": "toy", "path": None}), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embedder():
    return judge.toy_clip_embedder()


def test_packaged_models_are_small_complete_and_load_with_the_real_loaders(toy_pipe):
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    size = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert size < 160 * 2**20, f"toy weights take {size / 2**20:.1f} MiB"  # the whole toy family, every method's
    assert isinstance(toy_pipe.vae, AutoencoderKL) and toy_pipe.vae.config.latent_channels == 4
    assert isinstance(toy_pipe.unet, UNet2DConditionModel) and isinstance(toy_pipe.text_encoder, CLIPTextModel)
    assert toy_pipe.vae_scale_factor == 8
    # The T2I text encoder is the toy CLIP's text tower, weight for weight.
    clip = CLIPModel.from_pretrained(toy_path("clip"))
    tower = clip.text_model.state_dict()
    encoder = {name.removeprefix("text_model."): t for name, t in toy_pipe.text_encoder.state_dict().items()}
    tower = {name.removeprefix("text_model."): t for name, t in tower.items()}
    assert tower.keys() == encoder.keys()
    for name, tensor in tower.items():
        assert torch.equal(encoder[name], tensor), name
    adapter = load_motion_adapter(str(toy_path("motion_module")))
    assert isinstance(adapter, MotionAdapter)
    assert tuple(adapter.config.block_out_channels) == tuple(toy_pipe.unet.config.block_out_channels)
    assert not build_paths_recorded(WEIGHTS)
    stages = manifest()["stages"]
    assert {"vae", "clip", "unet", "motion"} <= set(stages)  # plus the trained methods' parts shipped so far
    for summary in stages.values():
        assert summary["steps"] > 0 and summary["wall_s"] > 0 and np.isfinite(summary["final_loss"])


def build_paths_recorded(directory: Path) -> list[str]:
    """The config.json files under `directory` that name where their model was loaded from when it was saved (diffusers'
    `_name_or_path`): a path on the building machine, meaningless on a user's."""
    return [str(path) for path in directory.rglob("config.json") if "_name_or_path" in json.loads(path.read_text())]


def test_missing_toy_weights_are_a_one_line_error(tmp_path):
    from stylevid.errors import UserInputError

    with pytest.raises(UserInputError, match="build_toy_world.py"):
        toy_path("pipeline", root=tmp_path)


def test_toy_clip_zero_shot_accuracy(embedder):
    figures = judge.clip_zero_shot(embedder, count=300, seed=31_337)
    assert figures["colour_accuracy"] >= 0.90, figures
    assert figures["shape_accuracy"] >= 0.80, figures


def test_text_to_image_follows_the_prompt_colour(toy_pipe, embedder):
    figures = judge.measure_t2i(toy_pipe, embedder, count=24, steps=20)
    assert figures["colour_adherence"] >= 0.80, {k: v for k, v in figures.items() if k != "images"}


@pytest.mark.slow
def test_the_toy_vaes_round_trip_keeps_colour_and_loses_shape(toy_pipe, embedder):
    """The ceiling of every shape figure on generated frames (VideoGen's Table 3, Gen-1's shape from content, image
    prompts' fine detail): the judge reads the shape of 81 % of rendered frames but of 52 % of their round trips
    through the toy VAE (its decoder rounds a triangle's corners and blurs a stick figure), their colour of 99-100 %
    of both. The decoder is what loses the shape: trained 4,500 steps more with the encoder
    frozen it reads back 70 % (README, "Shape"), which would move this test but not the latent models above it."""
    figures = judge.vae_round_trip_accuracy(toy_pipe.vae, embedder)
    assert figures["colour_accuracy_vae_round_trip"] >= 0.95, figures
    assert 0.45 <= figures["shape_accuracy_vae_round_trip"] <= 0.60, figures


@pytest.mark.slow
def test_cross_frame_attention_makes_t2v_zero_clearly_more_consistent(toy_pipe, embedder):
    figures = judge.measure_cross_frame(toy_pipe, embedder, count=12)
    # Measured through the CLI's config (t0/t1 17/18 at 20 steps, 12-px motion field): 0.965 against 0.927, a paired
    # gain of 0.038 whose lower bound (mean - 2 SE) is 0.020, and higher for 12 of 12 prompts (before, with the
    # judge's own 18/19 and 1.5 px: 0.963 against 0.915, gain 0.048, bound 0.027).
    assert figures["gain_lower_bound"] > 0, figures
    assert figures["share_of_prompts_higher"] >= 2 / 3, figures


@pytest.mark.slow
def test_stylet2v0_default_sharing_moves_colour_statistics_towards_the_style(toy_pipe, embedder):
    """Both presets as the CLI composes them (`method=stylet2v0 model=toy steps=20 frames=4 style=...`)."""
    paper = judge.measure_style(toy_pipe, embedder, STYLES, count=12, overrides=("method.sharing=paper",))
    default = judge.measure_style(toy_pipe, embedder, STYLES)  # the report's 72 prompts
    # Measured through the CLI's config: the default (aligned) drops the distance by 32.7 % on the 72 prompts with the
    # prompt's colour kept in all 72 (33.2 % when the judge used its own t0/t1 and a 1.5-px motion field); paper
    # (eqs. 7-9 as written) by -2.2 % on the same 72 (adherence 96 %): it does not move the colours.
    assert default["sharing"]["sharing"] == "aligned"
    assert default["distance_drop"] >= 0.30, default
    assert default["distance_drop"] > paper["distance_drop"] + 0.2, (paper, default)
    assert default["colour_adherence_with_style"] >= 0.70, default


@pytest.mark.slow
def test_animatediff_style_moves_colour_statistics_towards_the_style(toy_pipe, embedder):
    """animatediff style= against plain animatediff, both as the CLI composes them (`method=animatediff model=toy
    frames=8 steps=20 prompt=... seed=... [style=...]`, the toy motion module), on both presets."""
    adapter = load_motion_adapter(str(toy_path("motion_module")))
    paper = judge.measure_animatediff_style(toy_pipe, adapter, embedder, STYLES, count=12, overrides=("method.sharing=paper",))
    default = judge.measure_animatediff_style(toy_pipe, adapter, embedder, STYLES, count=72)  # the report's 72 prompts
    # Measured through the CLI's config (frames 8, steps 20): the default (aligned) drops the distance by 35.4 % on the
    # 72 prompts (35.1 % on the first 12) with the prompt's colour kept in all 72; paper (eqs. 7-9 as written) by
    # -5.9 % on 12 (-3.9 % on 72, adherence 83 % / 96 %): as for stylet2v0, it does not move the colours.
    # Other prompt sets of 36 (prompt_seed 5 and 6): 37.0 % and 38.9 %, adherence 100 % in both.
    assert default["sharing"]["sharing"] == "aligned"
    assert default["distance_drop"] >= 0.30, default
    assert default["distance_drop"] > paper["distance_drop"] + 0.2, (paper, default)
    assert default["colour_adherence_with_style"] >= 0.70, default


@pytest.mark.slow
def test_toy_motion_module_moves_objects_coherently(toy_pipe):
    """A motion module that has learned motion moves the object along a path; frames that are independent pictures
    (an untrained or broken module) or a clip in the wrong order make the object jump about."""
    figures = judge.measure_motion(toy_pipe, load_motion_adapter(str(toy_path("motion_module"))), count=16)
    # Measured: 16 of 16 videos move (>= 3 px; only 1 of 16 the prompt's way: README); straightness 0.54 against
    # 0.13 for the same frames shuffled, a paired gain whose lower bound (mean - 2 SE) is 0.28.
    assert figures["moving"] >= 0.7, figures
    # Paired against the same frames shuffled: the gain minus two standard errors is above zero (about a 95 %
    # one-sided bound), as for cross-frame attention above.
    assert figures["straightness_gain_lower_bound"] > 0, figures


def test_toy_motion_module_knows_temporal_order_and_the_image_layers_read_the_caption(toy_pipe):
    """The packaged module's own loss on fresh toy videos (judge.motion_losses), the diagnosis behind the README.

    Measured on the packaged models (these 8 videos; 16 in the report): a video played backwards, whose trail then
    leads the object, costs 23 % (22 %) more loss at t=300, so the module has learned which way the trail points;
    another colour word costs 42 % (73 %): the image layers follow it. The opposite direction word costs nothing
    (-0.8 %, -0.7 %): the caption's direction does not reach the module, which is why animatediff's toy videos move
    in no particular direction.
    """
    figures = judge.motion_losses(toy_pipe, load_motion_adapter(str(toy_path("motion_module"))), count=8, timesteps=(300,))
    assert figures["reversed_video_excess_t300"] > 0.10, figures
    assert figures["colour_swapped_excess_t300"] > 0.30, figures


def test_word_probe_reads_a_consistent_shift_and_not_noise():
    """The probe behind judge.word_readability: a shift shared by one class is read from every held-out row, rows
    drawn alike are read at chance."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 32, generator=generator)
    shifted = torch.randn(64, 32, generator=generator) + 1.5 * torch.ones(32)
    assert judge._two_fold_probe(rows, shifted) == 1.0
    alike = torch.randn(64, 32, generator=generator)
    assert 0.35 <= judge._two_fold_probe(rows, alike) <= 0.65


def test_the_caption_reaches_what_every_motion_module_reads(toy_pipe):
    """judge.word_readability: a linear probe on the motion modules' inputs (16 noises here, 48 in the report).

    The module has no text input of its own (AnimateDiff), so a caption word steers it only through the image
    layers' features; a UNet whose text path is cut or ignored gives chance (0.5) here. Measured on the packaged
    models: the colour word is read from every held-out noise at every motion module (1.0). The direction word is
    read far less well (72 % at the best layer here, 68 % on the report's 48 noises): why the toy videos move in no
    particular direction (README, "Why the toy motion module does not follow the direction word").
    """
    figures = judge.word_readability(toy_pipe, load_motion_adapter(str(toy_path("motion_module"))), count=16)
    assert figures["colour_worst"] >= 0.95, figures


# Expected slices (diffusers style) of the packaged toy pipeline through the CLI's composed config: the last frame's
# latent corner, "a red circle moving right", seed 0, 2 frames, 4 steps, CPU generator. Pinned from this code.
TOY_SLICES = {
    "t2v_zero": [-1.7489, -0.6043, -0.6077, -0.7744, 0.6810, 0.0052, -0.4001, 0.7699, 0.2821],
    "stylet2v0": [-2.0469, -0.9706, -0.6618, -1.0846, -1.0425, -0.6353, -0.8170, -0.4198, -0.3309],
    "stylet2v0 method.sharing=paper": [-1.5325, -0.5817, -0.6458, -0.5754, 0.4319, -0.0475, -0.3334, 0.6634, 0.1430],
}


@pytest.mark.parametrize("run", sorted(TOY_SLICES))
def test_toy_pipeline_expected_slice(toy_pipe, run):
    from stylevid.conditions.style import StyleSettings
    from stylevid.methods.t2v_zero import zero_shot_settings

    style_settings = StyleSettings.from_config
    from stylevid.methods import stylet2v0
    from stylevid.methods.t2v_zero import ZeroShotVideo

    method, *overrides = run.split()
    typed = ["prompt='a red circle moving right'", "seed=0", "frames=2", "steps=4"]
    if method == "stylet2v0":
        typed.append(f"style={STYLES['sunset']}")
    (cfg,) = judge.cli_configs(method, [typed], *overrides)
    settings = zero_shot_settings(cfg)
    assert (settings.t0, settings.t1, settings.motion_field_strength_x) == (1, 2, 12.0)  # what the CLI gives
    if method == "t2v_zero":
        out = ZeroShotVideo(toy_pipe)(settings)
    else:
        out = stylet2v0.generate(toy_pipe, settings, style_settings(cfg))
    torch.testing.assert_close(out.latents[-1, 0, -3:, -3:].flatten(), torch.tensor(TOY_SLICES[run]), atol=2e-3, rtol=0)


def test_generate_and_evaluate_with_the_toy_models(tmp_path):
    from stylevid.evaluate import run_evaluate
    from stylevid.generate import run_generate

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("generate", overrides=[
            "method=stylet2v0", "model=toy", "prompt=a red circle moving right", f"style={STYLES['sunset']}",
            "frames=3", "steps=10", "seed=0", "device=cpu", f"output_dir={tmp_path / 'run'}",
        ])
    run = run_generate(cfg)
    result = json.loads((run / "result.json").read_text())
    assert result["model"]["name"] == "toy" and (run / "video.mp4").exists()
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"run={run}", "metrics=[clipsim]", "metrics.clip.model=toy", "device=cpu", f"output_dir={tmp_path / 'eval'}",
        ])
    out = run_evaluate(cfg)
    summary = json.loads((Path(out) / "metrics.json").read_text())
    (video,) = summary["videos"]
    # The judge's own computation of CLIPSIM (mean frame-prompt cosine) on the frames evaluate reads.
    from stylevid.io.video_input import read_frames

    frames = judge.toy_clip_embedder().embed_images(read_frames(run / "video.mp4", 3)).numpy()
    text = judge.toy_clip_embedder().embed_texts(["a red circle moving right"])[0].numpy()
    assert video["metrics"]["clipsim"] == pytest.approx(float((frames @ text).mean()), abs=1e-4)


def test_build_script_builds_every_stage_resumes_and_rebuilds_what_is_stale(tmp_path):
    """The toy models' and the toy VideoGen's families, built for real with 2 steps a stage (the toy Gen-1's family
    is built by the slow test in tests/test_toy_gen1.py)."""
    spec = importlib.util.spec_from_file_location("build_toy_world", ROOT / "scripts" / "build_toy_world.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    args = ["--steps", "2", "--batch-size", "1", "--videos", "4", "--out", str(tmp_path / "out"),
            "--work", str(tmp_path / "work")]
    families = set(build.GROUPS["toy"]) | set(build.VIDEOGEN)

    def build_families() -> int:
        return max(build.main(["--stage", family, *args]) for family in ("toy", "videogen"))

    assert build.main(["--stage", "vae", *args]) == 0
    assert set(manifest(tmp_path / "out")["stages"]) == {"vae"}
    assert build_families() == 0
    built = manifest(tmp_path / "out")
    assert set(built["stages"]) == families
    for part in ("pipeline", "clip", "motion_module"):
        toy_path(part, root=tmp_path / "out")
    # The flow net's and the video decoder's second runs, each from the first run's export, and the base stage's third
    # run, from its second's, are what ship (the base stage's in float16).
    for stage, setting, after, run in (("vg_flow", "latent_flow.flow_weight=0", "run", "second_run"),
                                       ("vg_decoder", "video_decoder.latents=mean", "run", "second_run"),
                                       ("vg_base", "data.mix=", "run", "second_run"),
                                       ("vg_base", "trainer.lr=1.0e-4", "second_run", "third_run")):
        part, export = build.VIDEOGEN_PARTS[stage]
        command = built["stages"][stage][run]["command"]
        assert setting in command and f"{stage}_{after}/{export}" in command, command
        weights = "diffusion_pytorch_model.safetensors"
        later = load_file(tmp_path / "work" / f"{stage}_{run}" / export / weights)
        earlier = load_file(tmp_path / "work" / f"{stage}_{after}" / export / weights)
        assert any(not torch.equal(earlier[k], later[k]) for k in earlier)  # the later run trained
    for stage, run in (("vg_flow", "second_run"), ("vg_decoder", "second_run"), ("vg_base", "third_run")):
        part, export = build.VIDEOGEN_PARTS[stage]
        shipped = load_file(tmp_path / "out" / "videogen" / part / weights)
        last = load_file(tmp_path / "work" / f"{stage}_{run}" / export / weights)
        assert all(torch.equal(shipped[k], last[k].to(shipped[k].dtype)) for k in last)
    assert "data.mix=" not in built["stages"]["vg_base"]["third_run"]["command"]  # every look of the world again
    videogen = json.loads((tmp_path / "out" / "videogen" / "manifest.json").read_text())
    assert set(videogen["parts"]) == {"base", "sr2", "latent_flow", "tsr_refiner", "video_decoder"}
    # conf/experiment/toy_videogen_base.yaml: 3 frames 56 sub-frames apart, 8 sub-frames per toy frame at 8 fps
    assert (videogen["format"], videogen["frames"], videogen["schedule"]) == ("stylevid-videogen", 3, "B")
    assert videogen["fps"] == pytest.approx(8 * 8 / 56)
    # The VideoGen UNets ship in float16, the rest as trained.
    stored = {part: {t.dtype for f in (tmp_path / "out" / "videogen" / part).rglob("*.safetensors") for t in load_file(f).values()}
              for part in videogen["parts"]}
    assert stored == {"base": {torch.float16}, "sr2": {torch.float16}, "tsr_refiner": {torch.float16},
                      "latent_flow": {torch.float32}, "video_decoder": {torch.float32}}, stored
    assert not build_paths_recorded(tmp_path / "out")
    assert build_families() == 0  # nothing left to do: the manifest is unchanged
    assert manifest(tmp_path / "out") == built
    # Rebuilding the UNet makes the motion module and the VideoGen stages (trained on it) stale; the next full run
    # rebuilds only those.
    assert build.main(["--stage", "unet", "--force", *args]) == 0
    assert set(manifest(tmp_path / "out")["stages"]) == {"vae", "clip", "unet", "vg_decoder", "vg_flow", "vg_refiner"}
    rebuilt_unet = manifest(tmp_path / "out")["stages"]["unet"]
    assert build_families() == 0
    assert set(manifest(tmp_path / "out")["stages"]) == families
    assert manifest(tmp_path / "out")["stages"]["unet"] == rebuilt_unet
    # --adopt: a stage takes the finished run already in its work folder (trained by hand with the stage's command)
    # instead of training again; the run is left as it was and the manifest says it was adopted.
    # The manifest takes the run's threads from its result.json (a run trained by hand on one core says 1, whatever
    # the adopting process has).
    flow_run = tmp_path / "work" / "vg_flow_run"
    result = json.loads((flow_run / "result.json").read_text())
    assert result["threads"] == torch.get_num_threads()
    (flow_run / "result.json").write_text(json.dumps({**result, "threads": 7}))
    finished = (flow_run / "result.json").read_bytes()
    assert build.main(["--stage", "vg_flow", "--force", "--adopt", *args]) == 0
    assert (flow_run / "result.json").read_bytes() == finished
    assert "adopted" in manifest(tmp_path / "out")["stages"]["vg_flow"]["command"]
    assert manifest(tmp_path / "out")["stages"]["vg_flow"]["threads"] == 7
    shutil.rmtree(tmp_path / "work" / "vg_decoder_run")
    with pytest.raises(SystemExit, match="holds no finished run"):
        build.main(["--stage", "vg_decoder", "--force", "--adopt", *args])
