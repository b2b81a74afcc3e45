"""Build the toy world's models from scratch with `stylevid train`, stage by stage.

    python scripts/build_toy_world.py --stage all          # every stage not built yet (resumable)
    python scripts/build_toy_world.py --stage unet --force # rebuild one stage; the stages built on it become stale
    python scripts/build_toy_world.py --stage all          # ... and are rebuilt by the next full run

Stages and what each writes under --out (default: the package's stylevid/toy/weights/):
  vae     pipeline/vae            `stylevid train toy_vae`: AutoencoderKL on toy frames (pixel MSE + small KL)
  clip    clip/                   `stylevid train toy_clip`: CLIPModel, contrastive on (frame, caption) pairs
  unet    pipeline/               `stylevid train toy_t2i`: the text-to-image UNet on the frozen VAE + CLIP text
                                  tower; a full SD pipeline
  motion  motion_module/          `stylevid train motion_module experiment=toy_motion` on toy videos
The toy VideoGen (method=videogen model=toy), under videogen/ with its own manifest (stylevid/models/videogen_weights.py),
each part on toy clips rendered on the fly (data=toy) at 8x the cascade's frame rate where the paper uses high-fps video:
  vg_decoder  videogen/video_decoder/  `stylevid train video_decoder experiment=toy_video_decoder`, then on latent means
  vg_flow     videogen/latent_flow/    `stylevid train latent_flow experiment=toy_latent_flow`, then without distillation
  vg_refiner  videogen/tsr_refiner/    `stylevid train tsr_refiner experiment=toy_tsr_refiner` on the flow net
  vg_base     videogen/base/           `stylevid train videogen_base experiment=toy_videogen_base` from the toy UNet, then
                                       where only the caption tells the direction (half the clips of one look), then
                                       with every look again
  vg_sr       videogen/sr2/            `stylevid train videogen_sr experiment=toy_videogen_sr` from the base stage
The toy Gen-1 (method=gen1 model=toy), under gen1/ (`stylevid/models/gen1.py` save_gen1_weights' layout), on toy
clips with the toy world's ground-truth depth:
  gen1_depth         gen1/depth/          `stylevid train toy_depth`: the depth annotator (a small DPT) for toy videos
  gen1_prior         gen1/prior/          `stylevid train gen1_prior experiment=toy_gen1_prior` on the toy CLIP
  gen1_content       -                    `stylevid train gen1 experiment=toy_gen1 gen1.stage=content` from the toy UNet
  gen1_temporal      -                    ... gen1.stage=temporal from the content stage
  gen1_structure     -                    ... gen1.stage=structure from the temporal stage
  gen1_structure_ts  gen1/unet/, image_encoder/   ... gen1.stage=structure_ts from the structure stage
                                          then from that run at t_s = 0 alone (gen1.max_ts=0)
  gen1_vae           gen1/vae/            `stylevid train toy_vae toy.trainable=decoder` from pipeline/vae: the
                                          toy VAE's decoder fine-tuned, its encoder (so every latent) unchanged
The toy image prompts (method=image_prompt model=toy), on the toy AnimateDiff model (pipeline/ + motion_module/,
frozen) and toy clips whose captions never name the object's colour (conf/experiment/toy_image_prompt.yaml):
  ip_coarse   -                    `stylevid train image_prompt experiment=toy_image_prompt target.stage=coarse`
  ip_fine     image_prompt/        ... target.stage=fine from the coarse run (Section 3.3's coarse-to-fine)
  ip_joint    image_prompt_joint/  ... target.stage=joint, as many steps as both (the paper's ablation)
Each run goes to --work/<stage>_run (--adopt: a stage takes the finished run already there, trained by hand with
the stage's command, e.g. several stages at once, one per core); the stage records its steps, wall time, threads,
final loss (the last step's) and the command in manifest.json beside the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stylevid.data import toy_world  # noqa: E402
from stylevid.toy import WEIGHTS, judge  # noqa: E402

VIDEOGEN = ("vg_decoder", "vg_flow", "vg_refiner", "vg_base", "vg_sr")
# The toy VideoGen's UNets are stored in float16 so that the whole toy VideoGen stays within its 60 MiB (the flow
# net and the video decoder are small and stay float32).
VIDEOGEN_FLOAT16 = ("vg_refiner", "vg_base", "vg_sr")
GEN1_UNET = ("gen1_content", "gen1_temporal", "gen1_structure", "gen1_structure_ts")  # in training order
GEN1 = ("gen1_depth", "gen1_prior", *GEN1_UNET, "gen1_vae")
IMAGE_PROMPT = ("ip_coarse", "ip_fine", "ip_joint")
STAGES = ("vae", "clip", "unet", "motion", *VIDEOGEN, *GEN1, *IMAGE_PROMPT)
# --stage also takes a family: its stages, in order (all: every stage).
GROUPS = {"all": STAGES, "toy": ("vae", "clip", "unet", "motion"), "videogen": VIDEOGEN, "gen1": GEN1,
          "image_prompt": IMAGE_PROMPT}
# Steps of each image-prompt stage; the joint ablation gets the two stages' steps together.
IMAGE_PROMPT_STEPS = {"ip_coarse": 1500, "ip_fine": 1500, "ip_joint": 3000}
# Steps of each Gen-1 UNet stage (conf/experiment/toy_gen1.yaml holds the rest; --steps overrides all of them).
# The shipped structure_ts UNet trained in five warm-up and cosine cycles: 1,500 steps, then 3,000, 6,000, 6,000 and
# 6,000 more, each from the last (the manifest's "continued": the silhouette IoU at t_s = 0 rose from 0.40 to 0.49,
# 0.54 and 0.56 at ω = 7.5 with the toy VAE's decoder, then from 0.680 to 0.687 with gen1/vae/ and ω = 3); a rebuild
# trains the 22,500 in one run (about 3 h 10 min on one free core).
GEN1_STEPS = {"gen1_content": 600, "gen1_temporal": 500, "gen1_structure": 1500, "gen1_structure_ts": 22500}
# The structure_ts stage's second run, from the first's export: t_s = 0 again (gen1.max_ts=0; the record keeps the
# widest t_s the weights were trained on, 7). The paper trains 25k steps at t_s = 0 before 10k at uniform t_s, so
# most of what its model sees is unblurred depth; the toy build's 1,500 before 22,500 uniform (a fifth of the clips
# at t_s = 0) left the fine structure unread: the edits' outlines came from the content's shape and the structure's
# coarse place, so the silhouette IoU at t_s = 0 and 1 was the same (0.693 and 0.693 on 16 tuning clips, stream
# 81,000, the paired difference -0.000 ± 0.006) and a prompt's new shape was drawn at t_s = 0 as well. 3,000 steps
# at t_s = 0 made it read the outline: IoU 0.713 / 0.685 at t_s = 0 / 1 (+0.028 ± 0.008). A uniform run after it,
# in the paper's order, lost that again (1,500 steps: +0.010 ± 0.006; at lr 1e-4: +0.008 ± 0.006; 3,000 steps:
# +0.002 ± 0.007), so the t_s = 0 run comes last (README, "The toy Gen-1").
GEN1_TS_LATER = {"ts0_run": ("gen1.max_ts=0", "trainer.max_steps=3000", "trainer.checkpoint_every=1000")}
# The toy Gen-1 decodes with the toy VAE's decoder fine-tuned alone (gen1/vae/, 6,000 steps of 16 frames, about
# 40 min on one core): the shipped toy VAE turns outlines into blobs, and the edits' silhouettes with it.
GEN1_VAE = ("toy.trainable=decoder", "trainer.max_steps=6000", "trainer.lr=3.0e-4", "trainer.checkpoint_every=1000")
# The classifier-free guidance scale the toy Gen-1's manifest recommends (what method=gen1 model=toy samples with
# unless method.guidance_scale is given), chosen on 8 tuning clips (stream 81,000; the judge's is 80,000): the
# silhouette IoU at t_s = 0 is 0.609 / 0.660 / 0.664 at ω = 7.5 / 3 / 1.5 with the toy VAE's decoder, 0.612 / 0.684 /
# 0.685 with a decoder fine-tuned 4,500 steps (a probe), 0.690 at 3 with gen1/vae/, and the object takes the
# prompt's colour in 7 of 8 at each. The decoder's sharper outlines show only below SD's 7.5, which overshoots on
# the toy model. With the fifth structure_ts cycle, again on the tuning clips: 0.668 / 0.692 / 0.711 at ω = 4 / 3 / 2.
GEN1_GUIDANCE_SCALE = 2.0
# The stages trained on a stage's output (the UNet on the VAE and the CLIP text tower, the motion module and the
# VideoGen stages on the UNet, every VideoGen part on the VAE's latents, the refiner on the flow net, the
# super-resolution stage on the base): rebuilding a stage makes them stale.
DEPENDENTS = {"vae": ("unet", "motion", *VIDEOGEN, "gen1_prior", *GEN1_UNET, "gen1_vae", *IMAGE_PROMPT),
              "clip": ("unet", "motion", "vg_base", "vg_sr", "gen1_prior", *GEN1_UNET, *IMAGE_PROMPT),
              "unet": ("motion", "vg_base", "vg_sr", *GEN1_UNET, *IMAGE_PROMPT), "motion": IMAGE_PROMPT,
              "ip_coarse": ("ip_fine",), "ip_fine": (), "ip_joint": (), "vg_decoder": (), "vg_flow": ("vg_refiner",),
              "vg_refiner": (), "vg_base": ("vg_sr",), "vg_sr": (), "gen1_depth": (), "gen1_prior": (), "gen1_vae": (),
              **{name: GEN1_UNET[i + 1:] for i, name in enumerate(GEN1_UNET)}}
# The second runs of two VideoGen stages, each from the first run's export (`continued_run`): the flow net on
# reconstruction alone, the video decoder on the posterior means of the degraded clips' latents.
FLOW_RECONSTRUCTION = ("latent_flow.flow_weight=0", "trainer.max_steps=3000", "trainer.lr=5.0e-4",
                       "trainer.warmup_steps=20", "trainer.checkpoint_every=1000")
DECODER_MEAN_LATENTS = ("video_decoder.latents=mean", "trainer.max_steps=2500", "trainer.lr=1.0e-4",
                        "trainer.warmup_steps=20", "trainer.checkpoint_every=500")
# The base stage's second run: clips whose first frame does not give their direction away (the object placed anywhere,
# no trail), every clip moving left, right, up or down, and half of them of one look (a large red plain circle on
# gray), where the word is learned first (README, "What the builds showed"). On tuning prompts (seed 71,001) the whole
# toy VideoGen then followed the direction in 19 of 32 after 24,000 steps and 22 of 32 after 12,000 more (the shipped
# base trained in those two warm-up and cosine cycles, the manifest's "continued"; a rebuild trains the 36,000 in
# one run), against 4 of 16 with the first run alone.
BASE_WORD = ("data.start=anywhere", "data.trail=false", "data.fixed={motion:[left,right,up,down]}",
             "data.mix={share:0.5,fixed:{colour:red,shape:circle,size:large,pattern:plain,background:gray}}",
             "trainer.max_steps=36000", "trainer.checkpoint_every=2000", "trainer.log_every=100")
# Its third run, from the second's export: the same clips with every look of the world again (no data.mix), at half
# the learning rate. On 128 tuning prompts the direction followed rose from 75.8 % to 85.2 % and the colour with
# the reference from 0.981 to 0.985 (README, "The toy VideoGen").
BASE_WHOLE_WORLD = ("data.start=anywhere", "data.trail=false", "data.fixed={motion:[left,right,up,down]}",
                    "trainer.lr=1.0e-4", "trainer.max_steps=8000", "trainer.checkpoint_every=2000",
                    "trainer.log_every=100")
# Where each VideoGen stage's part lands in videogen/, and the directory its run exports.
VIDEOGEN_PARTS = {"vg_decoder": ("video_decoder", "video_decoder"), "vg_flow": ("latent_flow", "latent_flow"),
                  "vg_refiner": ("tsr_refiner", "tsr_refiner"), "vg_base": ("base", "videogen_stage"),
                  "vg_sr": ("sr2", "videogen_stage")}
log = logging.getLogger("build_toy_world")


def load_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def repository_relative(text: str) -> str:
    """`text` with this repository's absolute paths made relative to it (as a user types them there), so what the
    build ships names no machine's folders."""
    return text.replace(str(ROOT) + "/", "")


def save_manifest(out: Path, manifest: dict) -> None:
    path = out / "manifest.json"
    path.with_suffix(".tmp").write_text(repository_relative(json.dumps(manifest, indent=2)) + "\n")
    path.with_suffix(".tmp").replace(path)


# --adopt: a stage takes the finished run already in its --work/<stage>_run (trained there with the stage's command,
# by hand, e.g. beside another stage on the other core) instead of training it again.
ADOPT = False


def train(target: str, run_dir: Path, overrides: list[str]) -> tuple[dict, str]:
    """`stylevid train <target> <overrides>` into a fresh `run_dir`; returns (its result.json, the command). With
    --adopt a finished run of `target` in `run_dir` is taken as it is (a run of another target is refused)."""
    from hydra import compose, initialize_config_module

    from stylevid.train import run_train

    overrides = [*overrides, "device=cpu", f"output_dir={run_dir}"]
    command = f"stylevid train {target} " + " ".join(overrides)
    if ADOPT:
        result_path = run_dir / "result.json"
        if not result_path.exists():
            raise SystemExit(f"--adopt: {run_dir} holds no finished run (no result.json)")
        result = json.loads(result_path.read_text())
        if result.get("target") != target:
            raise SystemExit(f"--adopt: {run_dir} is a run of {result.get('target')}, not {target}")
        log.info("adopting the finished run in %s (%d steps)", run_dir, result["steps"])
        return result, f"{command}  # adopted: trained with {run_dir / 'config.yaml'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"target={target}", *overrides])
    run_train(cfg)
    return json.loads((run_dir / "result.json").read_text()), command


def steps_overrides(args, cycles: int = 1) -> list[str]:
    """--steps N replaces a stage's default step count (tests build with a few steps; N per cycle, as the stage's
    cycles split the run), and checkpoints once at the end; 0 keeps the target's defaults. --batch-size B likewise."""
    overrides = [f"trainer.batch_size={args.batch_size}"] if args.batch_size else []
    if not args.steps:
        return overrides
    steps = args.steps * cycles
    return [*overrides, f"trainer.max_steps={steps}", f"trainer.checkpoint_every={steps}"]


def stage_summary(result: dict, command: str, *fields: str) -> dict:
    summary = {"steps": result["steps"], "wall_s": round(result["timings_s"]["total_train"], 1),
               "final_loss": result["final_loss"]}
    if "threads" in result:  # the run's own (an adopted run may have trained on fewer than this process has)
        summary["threads"] = result["threads"]
    summary.update({field: result[field] for field in fields if field in result})
    return {**summary, "command": command}


def stage_vae(out: Path, work: Path, args) -> dict:
    run_dir = work / "vae_run"
    result, command = train("toy_vae", run_dir, steps_overrides(args))
    replace_dir(run_dir / "vae", out / "pipeline" / "vae")
    return stage_summary(result, command, "reconstruction_mse", "scaling_factor")


def stage_clip(out: Path, work: Path, args) -> dict:
    run_dir = work / "clip_run"
    result, command = train("toy_clip", run_dir, steps_overrides(args, cycles=2))
    replace_dir(run_dir / "clip", out / "clip")
    summary = stage_summary(result, command)
    summary["cycles"] = 2
    summary.update(judge.clip_zero_shot(judge.toy_clip_embedder(out / "clip"), count=400))
    return summary


def stage_unet(out: Path, work: Path, args) -> dict:
    run_dir = work / "unet_run"
    inputs = [f"toy.vae={out / 'pipeline' / 'vae'}", f"toy.clip={out / 'clip'}"]
    result, command = train("toy_t2i", run_dir, [*inputs, *steps_overrides(args, cycles=2)])
    replace_dir(run_dir / "pipeline", out / "pipeline")
    summary = stage_summary(result, command)
    summary["cycles"] = 2
    return summary


def stage_motion(out: Path, work: Path, args) -> dict:
    """The motion module, trained by `stylevid train motion_module experiment=toy_motion` on toy videos."""
    videos = work / "videos"
    if not (videos / "done").exists():
        shutil.rmtree(videos, ignore_errors=True)
        started = time.perf_counter()
        # No flips in training: a mirrored "moving right" clip would be moving left.
        toy_world.write_videos(videos, count=args.videos, seed=20_000)
        (videos / "done").write_text("")
        log.info("wrote %d toy videos in %.0fs", args.videos, time.perf_counter() - started)
    run_dir = work / "motion_run"
    overrides = ["experiment=toy_motion", f"model.path={out / 'pipeline'}", f"data.video_folder={videos}",
                 *steps_overrides(args)]
    result, command = train("motion_module", run_dir, overrides)
    replace_dir(run_dir / "motion_module", out / "motion_module")
    return {**stage_summary(result, command), "videos": args.videos}


def videogen_stage(name: str, target: str, experiment: str, out: Path, work: Path, args, *extra: str,
                   run: str = "run") -> dict:
    """One VideoGen part: `stylevid train <target> experiment=<experiment>` on the toy pipeline's VAE (and text
    encoder) into --work/<name>_<run>, its export moved to videogen/<part>/ and the VideoGen manifest rewritten to
    list it."""
    part, export = VIDEOGEN_PARTS[name]
    run_dir = work / f"{name}_{run}"
    result, command = train(target, run_dir, [f"experiment={experiment}", f"model.path={out / 'pipeline'}", *extra,
                                              *steps_overrides(args)])
    replace_dir(run_dir / export, out / "videogen" / part)
    if name in VIDEOGEN_FLOAT16:
        store_float16(out / "videogen" / part)
    write_videogen_manifest(out)
    return stage_summary(result, command)


def store_float16(directory: Path) -> None:
    """Rewrite every safetensors file under `directory` with its float tensors in float16 (the loaders build the
    model in float32 and take the values as they are), halving what the package carries."""
    from safetensors.torch import load_file, save_file

    for path in directory.rglob("*.safetensors"):
        tensors = {key: value.half() if value.is_floating_point() else value for key, value in load_file(path).items()}
        save_file(tensors, path.with_suffix(".tmp"), metadata={"format": "pt"})
        path.with_suffix(".tmp").replace(path)


def write_videogen_manifest(out: Path) -> None:
    """videogen/manifest.json: the parts built so far, and the cascade's clip length, frame rate and noise schedule
    (what conf/experiment/toy_videogen_base.yaml trains with: method=videogen model=toy samples as it was trained)."""
    from hydra import compose, initialize_config_module

    from stylevid.data.toy_clips import TOY_FPS
    from stylevid.models.videogen_weights import FORMAT, MANIFEST

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("train", overrides=["target=videogen_base", "experiment=toy_videogen_base"])
    root = out / "videogen"
    parts = {part: part for part, _ in VIDEOGEN_PARTS.values() if (root / part / "config.json").exists()}
    manifest = {"format": FORMAT, "fps": TOY_FPS * int(cfg.data.subframes) / int(cfg.data.stride),
                "frames": int(cfg.data.frames), "schedule": str(cfg.diffusion.schedule),
                "prediction": str(cfg.diffusion.prediction), "resolution": toy_world.SIZE,
                "parts": parts}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def continued_run(name: str, target: str, experiment: str, init_key: str, settings: tuple[str, ...], out: Path,
                  work: Path, args, after: str = "run", run: str = "second_run") -> dict:
    """A VideoGen stage's next run (--work/<name>_<run>): `settings`, from the export of the run before it
    (--work/<name>_<after>, through `init_key`); its export replaces the part in videogen/."""
    previous_export = work / f"{name}_{after}" / VIDEOGEN_PARTS[name][1]
    return videogen_stage(name, target, experiment, out, work, args, f"{init_key}={previous_export}", *settings,
                          run=run)


def stage_vg_decoder(out: Path, work: Path, args) -> dict:
    """Two runs: on posterior samples of the degraded clips' latents (conf/experiment/toy_video_decoder.yaml), then on
    their posterior means (DECODER_MEAN_LATENTS), what the decoder reads at sampling and in the judge. The first
    plateaued at +0.30 dB over the image decoder (2,500 steps); 2,500 steps on the means took it to +0.59 dB (the
    judge's 16 degraded clips; picked on 16 tuning clips, +0.57 there)."""
    summary = videogen_stage("vg_decoder", "video_decoder", "toy_video_decoder", out, work, args)
    return {**summary, "second_run": continued_run("vg_decoder", "video_decoder", "toy_video_decoder",
                                                   "video_decoder.init_path", DECODER_MEAN_LATENTS, out, work, args)}


def stage_vg_flow(out: Path, work: Path, args) -> dict:
    """Two runs: IFRNet's loss, latent reconstruction plus flow distillation from the DIS teacher
    (conf/experiment/toy_latent_flow.yaml), then reconstruction alone from that net (FLOW_RECONSTRUCTION). On the toy's
    8x8 latents the teacher's area-resized pixel flows are coarse: dropping them for 3,000 more steps raised the
    x8 in-between PSNR of the coarse flow from +0.83 to +1.06 dB over linear interpolation (the judge's 16 clips;
    1,500 more steps *with* distillation had moved it by 0.03 dB)."""
    summary = videogen_stage("vg_flow", "latent_flow", "toy_latent_flow", out, work, args)
    return {**summary, "second_run": continued_run("vg_flow", "latent_flow", "toy_latent_flow",
                                                   "latent_flow.init_path", FLOW_RECONSTRUCTION, out, work, args)}


def stage_vg_refiner(out: Path, work: Path, args) -> dict:
    flow = out / "videogen" / "latent_flow"
    return videogen_stage("vg_refiner", "tsr_refiner", "toy_tsr_refiner", out, work, args, f"tsr_refiner.flow_path={flow}")


def stage_vg_base(out: Path, work: Path, args) -> dict:
    """Three runs: the toy world's clips (conf/experiment/toy_videogen_base.yaml), where a clip's first frame tells its
    direction (the base then follows the reference, not the word: 1 of 16 prompts' directions), then BASE_WORD from
    that stage (`videogen.init`), where only the caption does, then BASE_WHOLE_WORLD from the second."""
    summary = videogen_stage("vg_base", "videogen_base", "toy_videogen_base", out, work, args)
    runs = {"second_run": continued_run("vg_base", "videogen_base", "toy_videogen_base", "videogen.init", BASE_WORD,
                                        out, work, args)}
    runs["third_run"] = continued_run("vg_base", "videogen_base", "toy_videogen_base", "videogen.init",
                                      BASE_WHOLE_WORLD, out, work, args, after="second_run", run="third_run")
    return {**summary, **runs}


def stage_vg_sr(out: Path, work: Path, args) -> dict:
    base = out / "videogen" / "base"
    return videogen_stage("vg_sr", "videogen_sr", "toy_videogen_sr", out, work, args, f"videogen.init={base}")


def stage_gen1_depth(out: Path, work: Path, args) -> dict:
    run_dir = work / "gen1_depth_run"
    result, command = train("toy_depth", run_dir, steps_overrides(args))
    replace_dir(run_dir / "depth", out / "gen1" / "depth")
    write_gen1_manifest(out)
    return stage_summary(result, command)


def stage_gen1_prior(out: Path, work: Path, args) -> dict:
    run_dir = work / "gen1_prior_run"
    result, command = train("gen1_prior", run_dir, ["experiment=toy_gen1_prior", *steps_overrides(args)])
    replace_dir(run_dir / "prior", out / "gen1" / "prior")
    write_gen1_manifest(out)
    return stage_summary(result, command)


def gen1_unet_stage(name: str, out: Path, work: Path, args) -> dict:
    """One Gen-1 UNet stage, from the toy T2I UNet (content) or the previous stage's run; structure_ts then runs
    GEN1_TS_LATER, each from the run before. The last run's export becomes gen1/unet/ and gen1/image_encoder/, and
    gen1/manifest.json is written."""
    index = GEN1_UNET.index(name)
    init = f"gen1.init={work / (GEN1_UNET[index - 1] + '_run')}" if index else None
    runs = [("run", [f"trainer.max_steps={GEN1_STEPS[name]}"])]
    if name == GEN1_UNET[-1]:
        runs += [(run, list(settings)) for run, settings in GEN1_TS_LATER.items()]
    summary = {}
    for run, settings in runs:
        run_dir = work / f"{name}_{run}"
        result, command = train("gen1", run_dir, ["experiment=toy_gen1", f"gen1.stage={name.removeprefix('gen1_')}",
                                                  f"model.path={out / 'pipeline'}", *settings, *([init] if init else []),
                                                  *steps_overrides(args)])
        if run == "run":
            summary.update(stage_summary(result, command))
        else:
            summary[run] = stage_summary(result, command)
        init = f"gen1.init={run_dir}"  # the next run starts from this one's export
    if name == GEN1_UNET[-1]:
        for part in ("unet", "image_encoder"):
            replace_dir(run_dir / part, out / "gen1" / part)
        write_gen1_manifest(out)
    return summary


def stage_gen1_vae(out: Path, work: Path, args) -> dict:
    run_dir = work / "gen1_vae_run"
    result, command = train("toy_vae", run_dir, [*GEN1_VAE, f"toy.init_path={out / 'pipeline' / 'vae'}", *steps_overrides(args)])
    replace_dir(run_dir / "vae", out / "gen1" / "vae")
    write_gen1_manifest(out)
    return stage_summary(result, command)


def write_gen1_manifest(out: Path) -> None:
    """gen1/manifest.json (models/gen1.py's format): its parts, the depth annotator the UNet's structure comes from on
    toy videos (gen1/depth/, which method=gen1 model=toy runs when annotator.path is unset), the VAE it decodes with
    (gen1/vae/, once built) and the guidance scale it recommends."""
    from stylevid.models.gen1 import MANIFEST, WEIGHTS_FORMAT

    root = out / "gen1"
    parts = {part: part for part in ("unet", "image_encoder", "prior") if (root / part).is_dir()}
    manifest = {"format": WEIGHTS_FORMAT, "parts": parts, "depth_annotator": "depth",
                **({"vae": "vae"} if (root / "vae").is_dir() else {}), "guidance_scale": GEN1_GUIDANCE_SCALE}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def stage_gen1_content(out: Path, work: Path, args) -> dict:
    return gen1_unet_stage("gen1_content", out, work, args)


def stage_gen1_temporal(out: Path, work: Path, args) -> dict:
    return gen1_unet_stage("gen1_temporal", out, work, args)


def stage_gen1_structure(out: Path, work: Path, args) -> dict:
    return gen1_unet_stage("gen1_structure", out, work, args)


def stage_gen1_structure_ts(out: Path, work: Path, args) -> dict:
    return gen1_unet_stage("gen1_structure_ts", out, work, args)


def image_prompt_stage(name: str, out: Path, work: Path, args) -> dict:
    """One image-prompt stage on the toy AnimateDiff model under --out; ip_fine's export (mapper/, image_encoder/,
    attention_processors.safetensors, manifest.json) becomes image_prompt/, ip_joint's image_prompt_joint/."""
    run_dir = work / f"{name}_run"
    stage = name.removeprefix("ip_")
    init = [f"target.init={work / 'ip_coarse_run'}"] if stage == "fine" else []
    result, command = train("image_prompt", run_dir, [
        "experiment=toy_image_prompt", f"target.stage={stage}", f"model.path={out / 'pipeline'}",
        f"motion.path={out / 'motion_module'}", f"trainer.max_steps={IMAGE_PROMPT_STEPS[name]}",
        f"trainer.checkpoint_every={IMAGE_PROMPT_STEPS[name]}", *init, *steps_overrides(args)])
    shipped = {"ip_fine": "image_prompt", "ip_joint": "image_prompt_joint"}.get(name)
    if shipped:
        export = work / f"{name}_export"
        shutil.rmtree(export, ignore_errors=True)
        export.mkdir(parents=True)
        for part in ("mapper", "image_encoder"):
            shutil.copytree(run_dir / part, export / part)
        shutil.copy2(run_dir / "attention_processors.safetensors", export / "attention_processors.safetensors")
        # It names the base model, motion module and image encoder it trained with.
        (export / "manifest.json").write_text(repository_relative((run_dir / "manifest.json").read_text()))
        replace_dir(export, out / shipped)
    return stage_summary(result, command)


def stage_ip_coarse(out: Path, work: Path, args) -> dict:
    return image_prompt_stage("ip_coarse", out, work, args)


def stage_ip_fine(out: Path, work: Path, args) -> dict:
    return image_prompt_stage("ip_fine", out, work, args)


def stage_ip_joint(out: Path, work: Path, args) -> dict:
    return image_prompt_stage("ip_joint", out, work, args)


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished directory into place; the old one goes only once the new one is complete."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    shutil.copytree(source, target)
    forget_build_paths(target)
    shutil.rmtree(old, ignore_errors=True)


def forget_build_paths(directory: Path) -> None:
    """Drop `_name_or_path` from every diffusers config.json under `directory`: a model loaded with from_pretrained
    and saved again records where it was loaded from (the build's own folders), which means nothing on a user's
    machine. Loading never reads the key."""
    for config in directory.rglob("config.json"):
        data = json.loads(config.read_text())
        if "_name_or_path" in data:
            del data["_name_or_path"]
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=[*STAGES, *GROUPS], default="all",
                        help="a stage, or a family of them: " + ", ".join(f"{k} ({' '.join(v)})" for k, v in GROUPS.items() if k != "all"))
    parser.add_argument("--force", action="store_true", help="rebuild the named stage even if the manifest has it")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "toy")
    parser.add_argument("--steps", type=int, default=0, help="override the stage's step count (0 = its default)")
    parser.add_argument("--batch-size", type=int, default=0, help="override the stage's batch size (0 = its default)")
    parser.add_argument("--videos", type=int, default=800, help="toy videos for the motion stage")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--adopt", action="store_true",
                        help="take the finished run in --work/<stage>_run instead of training the stage (with --force to replace a built one)")
    args = parser.parse_args(argv)
    global ADOPT
    ADOPT = args.adopt
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(args.out)
    stages = GROUPS.get(args.stage, (args.stage,))
    for name in stages:
        if name in manifest["stages"] and not (args.force and args.stage == name):
            log.info("stage %s already built (%s); --force to rebuild", name, manifest["stages"][name].get("wall_s"))
            continue
        log.info("stage %s ...", name)
        summary = globals()[f"stage_{name}"](args.out, args.work, args)
        summary.setdefault("threads", torch.get_num_threads())  # runs from before result.json recorded them
        summary["torch"] = torch.__version__
        manifest = load_manifest(args.out)  # re-read: another stage may have been built meanwhile
        manifest["stages"][name] = summary
        stale = [later for later in DEPENDENTS[name] if manifest["stages"].pop(later, None) is not None]
        if stale:
            log.info("stage %s rebuilt: %s built on the old one, marked for rebuilding (--stage all)", name, ", ".join(stale))
        save_manifest(args.out, manifest)
        log.info("stage %s done: %s", name, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
