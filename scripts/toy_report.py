"""What the packaged toy models do, measured with the toy CLIP as judge, against the toy world's targets.

    python scripts/toy_report.py                 # every figure (a few minutes on 2 CPU cores)
    python scripts/toy_report.py --only clip t2i # some of them
    python scripts/toy_report.py --json figures.json --strip strip.png

The same functions (`stylevid.toy.judge`) back the tests in tests/test_toy_models.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stylevid.models.loading import load_pipeline  # noqa: E402
from stylevid.models.motion_module import load_motion_adapter  # noqa: E402
from stylevid.toy import WEIGHTS, judge, manifest, toy_path  # noqa: E402

STYLES = judge.example_styles(ROOT)
# (figure, key in the measurement, target, higher is better)
TARGETS = {
    "clip": [("toy CLIP zero-shot colour accuracy", "colour_accuracy", 0.90), ("toy CLIP zero-shot shape accuracy", "shape_accuracy", 0.80),
             ("toy CLIP zero-shot direction accuracy, one frame (no target)", "direction_accuracy", None)],
    "t2i": [("T2I prompt adherence (colour)", "colour_adherence", 0.80), ("T2I prompt adherence (shape, no target)", "shape_adherence", None),
            ("toy CLIP shape accuracy on held-out frames after the toy VAE's round trip (the ceiling of shape figures, no target)",
             "shape_accuracy_vae_round_trip", None)],
    "cross_frame": [("t2v_zero frame consistency, cross-frame attention", "consistency_cross_frame", None),
                    ("t2v_zero frame consistency, plain attention", "consistency_plain", None),
                    ("paired gain minus 2 standard errors (> 0: clearly above)", "gain_lower_bound", 0.0),
                    ("prompts where cross-frame attention is more consistent", "share_of_prompts_higher", 2 / 3)],
    "style": [("stylet2v0 sharing=paper (eqs. 7-9): colour-statistics distance drop, no style", "paper_distance_drop", None),
              ("stylet2v0 sharing=paper: prompt adherence", "paper_colour_adherence", None),
              ("stylet2v0 default sharing (aligned): distance drop", "distance_drop", 0.30),
              ("stylet2v0 default sharing (aligned): prompt adherence", "colour_adherence_with_style", 0.70)],
    "animatediff_style": [
        ("animatediff style= sharing=paper (eqs. 7-9): colour-statistics distance drop", "paper_distance_drop", None),
        ("animatediff style= sharing=paper: prompt adherence", "paper_colour_adherence", None),
        ("animatediff style= default sharing (aligned): distance drop", "distance_drop", 0.30),
        ("animatediff style= default sharing (aligned): prompt adherence", "colour_adherence_with_style", 0.70)],
    "motion": [("animatediff: direction of motion followed", "direction_followed", 0.70),
               ("animatediff: videos whose object moves >= 3 px (no target)", "moving", None),
               ("animatediff: path straightness (no target)", "straightness", None),
               ("animatediff: path straightness, same frames shuffled (no target)", "straightness_shuffled", None),
               ("paired straightness gain over shuffled minus 2 standard errors (> 0: coherent motion)",
                "straightness_gain_lower_bound", 0.0),
               ("motion loss excess: video reversed, t=300 (no target)", "reversed_video_excess_t300", None),
               ("motion loss excess: direction word swapped, t=600 (no target)", "direction_swapped_excess_t600", None),
               ("motion loss excess: colour word swapped, t=600 (no target)", "colour_swapped_excess_t600", None),
               ("module inputs, t=900: direction word readable (probe, best layer; chance 0.5)", "direction_best", None),
               ("module inputs, t=900: colour word readable (same probe, worst layer)", "colour_worst", None)],
    "videogen": [("videogen: direction of motion followed (with the reference)", "direction_followed", 0.70),
                 ("videogen: direction followed, method.reference_mode=none (no target)", "direction_followed_no_reference", None),
                 ("videogen: prompt adherence, colour, with the reference (no target)", "colour_adherence", None),
                 ("videogen: prompt adherence, colour, reference_mode=none (no target)", "colour_adherence_no_reference", None),
                 ("videogen: prompt adherence, shape, with the reference (no target)", "shape_adherence", None),
                 ("videogen: prompt adherence, shape, reference_mode=none (no target)", "shape_adherence_no_reference", None),
                 ("videogen: adherence with the reference minus without (Table 3; >= 0)", "adherence_gain", 0.0),
                 ("videogen: ... its paired standard error over the prompts (no target)", "adherence_gain_se", None),
                 ("videogen: CLIPSIM (toy CLIP), with the reference (Table 3's metric; no target)", "clipsim", None),
                 ("videogen: CLIPSIM, reference_mode=none (no target)", "clipsim_no_reference", None)],
    "tsr": [("tsr x8: in-between PSNR, flow (dB, no target)", "psnr_flow", None),
            ("tsr x8: in-between PSNR, linear latent interpolation (dB, no target)", "psnr_linear", None),
            ("tsr x8: in-between PSNR, slerp (dB, no target)", "psnr_slerp", None),
            ("tsr x8: in-between PSNR, flow without the refiner (dB, no target)", "psnr_flow_coarse", None),
            ("tsr x8: in-between PSNR, linear without the refiner (dB, no target)", "psnr_linear_coarse", None),
            ("tsr x8: flow minus linear (dB)", "flow_gain_db", 1.0)],
    "video_decoder": [("video decoder: PSNR on degraded clips' latents (dB, no target)", "psnr_video_decoder", None),
                      ("image decoder: PSNR on the same latents (dB, no target)", "psnr_image_decoder", None),
                      ("video decoder minus image decoder (dB)", "psnr_gain_db", 0.5),
                      ("flicker error, video decoder (|flicker - clean clip's|, no target)", "flicker_error_video_decoder", None),
                      ("flicker error, image decoder (no target)", "flicker_error_image_decoder", None),
                      ("flicker error, image minus video decoder (> 0: video closer to the clean clip)", "flicker_error_gain", 0.0)],
    "image_prompt": [
        ("image_prompt: object takes the image prompt's colour, coarse + fine", "colour_coarse_fine", 0.70),
        ("image_prompt: ... text alone (method=animatediff, same prompt; chance 1/6, no target)", "colour_text_alone", None),
        ("image_prompt: ... coarse only (method.fine=false, no target)", "colour_coarse", None),
        ("image_prompt: image fidelity, coarse + fine (no target)", "fidelity_coarse_fine", None),
        ("image_prompt: image fidelity, coarse only (no target)", "fidelity_coarse", None),
        ("image_prompt: image fidelity, the true toy clip of the subject (the ceiling; no target)", "fidelity_ground_truth", None),
        ("image_prompt: subject fidelity (frames' object cropped), coarse + fine minus coarse only (no target)",
         "subject_fidelity_fine_gain", None),
        ("image_prompt: subject fidelity, the true toy clip (no target)", "subject_fidelity_ground_truth", None),
        ("image_prompt: image fidelity, coarse + fine minus coarse only (> 0)", "fidelity_fine_gain", 0.0),
        ("image_prompt: ... its standard error, paired by subject (no target)", "fine_gain_standard_error", None),
        ("image_prompt: ... subjects where coarse + fine is higher (no target)", "fine_gain_subjects_higher", None),
        ("image_prompt: image fidelity, joint training ablation (no target)", "fidelity_joint", None),
        ("image_prompt: image fidelity, coarse-to-fine minus joint (the paper: > 0; reported)", "fidelity_staged_gain", None),
        ("image_prompt: image fidelity, method.position_encoding=false (no target)", "fidelity_no_position_encoding", None),
        ("image_prompt: CLIP-Score (toy CLIP, colour named), with position encoding (no target)", "clip_score_coarse_fine", None),
        ("image_prompt: CLIP-Score without position encoding (the paper: 25.69 vs 25.70; no target)",
         "clip_score_no_position_encoding", None)],
    "sr": [("videogen x2 stage: PSNR to the true 64-px clip (dB, no target)", "psnr_sr_stage", None),
           ("bilinearly upsampled 32-px clip: PSNR (dB, no target)", "psnr_bilinear", None),
           ("x2 stage minus bilinear (dB, no target)", "sr_gain_db", None)],
    "gen1": [("gen1: silhouette IoU with the input at t_s = 0", "iou_ts0", 0.70),
             ("gen1: silhouette IoU of the input's own VAE round trip (the ceiling; no target)", "iou_vae_round_trip", None),
             ("gen1: IoU falls as t_s grows, 0 1 3 5 7 (1 = yes)", "iou_decreases_with_ts", 1.0),
             ("gen1: prompt consistency rises with t_s, edit prompts naming a new colour and shape (1 = yes)",
              "prompt_consistency_rises_with_ts", 1.0),
             ("gen1: ... edit prompts naming a new colour only, the input's shape kept (1 = yes; no target)",
              "prompt_consistency_same_shape_rises_with_ts", None),
             ("gen1: object takes the prompt's colour (text content)", "text_colour_followed", 0.80),
             ("gen1: object takes the content image's colour", "image_colour_followed", 0.70),
             ("gen1: frame consistency rises with omega_t 0..2 (1 = yes)", "consistency_rises_with_wt", 1.0),
             ("gen1: warp error falls with omega_t 0..2 (1 = yes)", "warp_error_falls_with_wt", 1.0),
             ("gen1 masked: outside error / the VAE round trip's (<= 1.1)", "masked_outside_ratio", -1.1),
             ("gen1 masked, keep_outside=latents: outside error / the round trip's (no target)", "masked_outside_ratio_latents", None),
             ("gen1 masked: inside takes the prompt's colour", "masked_inside_colour_followed", 0.80)],
}
# A negative target -x reads "at most x" (a ratio to stay under); the others are "at least".
# The toy VideoGen's parts: only measured once `scripts/build_toy_world.py` has built them.
VIDEOGEN_PARTS = ("videogen", "tsr", "video_decoder", "sr")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--strip", type=Path, help="write the T2I samples as one PNG strip")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipe = load_pipeline({"name": "toy", "path": None}, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    embedder = judge.toy_clip_embedder()
    figures, failed = {}, []
    for part in args.only:
        started = time.perf_counter()
        family = part if part in ("gen1", "image_prompt") else "videogen" if part in VIDEOGEN_PARTS else None
        if family and not (WEIGHTS / family / "manifest.json").exists():
            print(f"{part}: the toy {family} is not built (python scripts/build_toy_world.py --stage {family}); skipped")
            continue
        if part == "clip":
            result = judge.clip_zero_shot(embedder)
        elif part == "t2i":
            result = judge.measure_t2i(pipe, embedder)
            result.update(judge.vae_round_trip_accuracy(pipe.vae, embedder))  # the ceiling of its shape figure
            if args.strip:
                from PIL import Image

                Image.fromarray(np.concatenate(list(result["images"]), axis=1)).save(args.strip)
        elif part == "gen1":
            from stylevid.toy import judge_gen1

            result = judge_gen1.measure_gen1()
            for name, key in (("prompt consistency (new colour and shape)", "prompt_consistency_steps"),
                              ("silhouette IoU", "iou_steps")):
                print(f"gen1: {name}, each step of t_s {' '.join(map(str, judge_gen1.TS_VALUES))} (mean ± paired SE): "
                      + ", ".join(f"{mean:+.3f} ± {error:.3f}" for mean, error in result[key]))
        elif part == "image_prompt":
            from stylevid.toy import judge_image_prompt

            result = judge_image_prompt.report_figures(judge_image_prompt.measure_image_prompt())
        elif part in VIDEOGEN_PARTS:
            from stylevid.toy import judge_videogen

            result = {"videogen": judge_videogen.measure_videogen, "tsr": judge_videogen.measure_tsr,
                      "video_decoder": judge_videogen.measure_video_decoder,
                      "sr": judge_videogen.measure_super_resolution}[part]()
        elif part == "cross_frame":
            result = judge.measure_cross_frame(pipe, embedder)
        elif part == "style":
            # The paper's equations as written (method.sharing=paper), then the CLI's default sharing.
            paper = judge.measure_style(pipe, embedder, STYLES, overrides=("method.sharing=paper",))
            result = judge.measure_style(pipe, embedder, STYLES)
            result["paper_distance_drop"] = paper["distance_drop"]
            result["paper_colour_adherence"] = paper["colour_adherence_with_style"]
            print(f"stylet2v0 sharing measured: paper {paper['sharing']}\n  default {result['sharing']}")
        elif part == "animatediff_style":
            # The same comparison for animatediff (toy motion module): styled against plain animatediff, both presets.
            adapter = load_motion_adapter(str(toy_path("motion_module")))
            paper = judge.measure_animatediff_style(pipe, adapter, embedder, STYLES, overrides=("method.sharing=paper",))
            result = judge.measure_animatediff_style(pipe, adapter, embedder, STYLES)
            result["paper_distance_drop"] = paper["distance_drop"]
            result["paper_colour_adherence"] = paper["colour_adherence_with_style"]
            print(f"animatediff sharing measured: paper {paper['sharing']}\n  default {result['sharing']}")
        else:
            adapter = load_motion_adapter(str(toy_path("motion_module")))
            result = judge.measure_motion(pipe, adapter)
            # Why directions are (not) followed: what the module's own loss says it has learned (judge.motion_losses).
            result.update({k: v for k, v in judge.motion_losses(pipe, adapter).items() if k != "count"})
            # ... and whether the word reaches what the module reads at all (judge.word_readability).
            readable = judge.word_readability(pipe, adapter)
            result.update(direction_best=readable["direction_best"], colour_worst=readable["colour_worst"])
        result.pop("images", None)
        result["seconds"] = round(time.perf_counter() - started, 1)
        figures[part] = result
        for label, key, target in TARGETS[part]:
            value = float(result[key])
            met = None if target is None else (value <= -target if target < 0 else value >= target)
            verdict = "" if met is None else ("  ok" if met else "  MISSED")
            bound = "" if target is None else f"  (target {'<=' if target < 0 else '>='} {abs(target):.2f}){verdict}"
            print(f"{label:<78} {value:7.3f}{bound}")
            if met is False:
                failed.append(label)
        print(f"{'':<78} ({result['count']} samples, {result['seconds']} s)")
    print("\nbuild manifest:")
    for stage, summary in manifest().get("stages", {}).items():
        print(f"  {stage:<10} {summary.get('steps')} steps, {summary.get('wall_s')} s, final loss {summary.get('final_loss'):.4f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
