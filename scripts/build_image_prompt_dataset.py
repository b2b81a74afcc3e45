"""A text-image-video dataset for `stylevid train image_prompt` (VideoBooth-style paper, Section 4.1).

From a WebVid-style CSV (videoid, name = caption, page_dir) and its videos: keep the clips whose caption contains one
of the keywords (as a word), take that keyword as the clip's subject, detect it in the clip's middle frame with a
zero-shot object detector, and write the detected box's crop. The paper detects with Faster R-CNN; here any
transformers zero-shot object detector from a local path (OWL-ViT, OWLv2) serves, through `hf_detector`, or any
callable (image, keyword) -> (box, score) | None (`build_dataset(..., detect=...)`); `--detector toy` finds the toy
world's object by its colour.

    python scripts/build_image_prompt_dataset.py --csv results_2M_train.csv --videos videos/ --keywords dog,cat,car \
        --detector /models/owlv2 --out ip_data/

Writes <out>/crops/<n>.png, <out>/dataset.csv (video, caption, subject, crop, box "x0 y0 x1 y1", score) and
<out>/summary.json (kept, skipped by reason). The output appears only once complete (it is built in a temporary
folder beside it); a bad argument, an unreadable CSV or a detector that is not there is one line and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylevid.errors import UserInputError  # noqa: E402

Box = tuple[int, int, int, int]
Detector = Callable[[np.ndarray, str], "tuple[Box, float] | None"]
SKIP_REASONS = ("no keyword", "unreadable video", "not detected")


def caption_keyword(caption: str, keywords: list[str]) -> str | None:
    """The first keyword that is a word (or words) of the caption, case-insensitive."""
    text = " " + " ".join(re.findall(r"[\w'-]+", caption.lower())) + " "
    return next((k for k in keywords if f" {k.lower()} " in text), None)


def middle_frame(path: Path) -> np.ndarray | None:
    """The clip's middle frame as uint8 RGB, None when it cannot be read."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count > 1:
            capture.set(cv2.CAP_PROP_POS_FRAMES, count // 2)
        ok, frame = capture.read()
    finally:
        capture.release()
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok and frame is not None else None


def hf_detector(path: str, threshold: float = 0.1) -> Detector:
    """A transformers zero-shot object detector from a local directory (offline: never a download)."""
    if not Path(path).is_dir():
        raise UserInputError(f"--detector {path} is not a local directory (an OWL-ViT / OWLv2 model saved with save_pretrained)")
    from PIL import Image
    from transformers import pipeline

    try:
        detector = pipeline("zero-shot-object-detection", model=path, device="cpu")
    except (OSError, ValueError) as error:
        raise UserInputError(f"--detector {path} cannot be loaded as a zero-shot object detector "
                             f"({str(error).splitlines()[0][:160]})") from None

    def detect(image: np.ndarray, keyword: str):
        found = [d for d in detector(Image.fromarray(image), candidate_labels=[keyword]) if d["score"] >= threshold]
        if not found:
            return None
        best = max(found, key=lambda d: d["score"])
        box = best["box"]
        return (int(box["xmin"]), int(box["ymin"]), int(box["xmax"]), int(box["ymax"])), float(best["score"])

    return detect


def toy_detector(image: np.ndarray, keyword: str):
    """The toy world's object: its saturated pixels (backgrounds are muted, objects are not; `toy_world`)."""
    chroma = image.max(axis=-1).astype(int) - image.min(axis=-1).astype(int)
    rows, cols = np.nonzero(chroma >= 140)
    if not len(rows):
        return None
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1), 1.0


def load_detector(name: str, threshold: float) -> Detector:
    return toy_detector if name == "toy" else hf_detector(name, threshold)


def build_dataset(records, keywords: list[str], detect: Detector, out: Path, limit: int | None = None) -> dict:
    """Write the dataset of `records` (VideoRecord: path, caption) to `out` (a new folder); returns the summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"--out {out} exists and is not empty")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        (staging / "crops").mkdir()
        skipped, rows = Counter(), []
        for record in records:
            if limit is not None and len(rows) >= limit:
                break
            keyword = caption_keyword(record.caption, keywords)
            if keyword is None:
                skipped["no keyword"] += 1
                continue
            frame = middle_frame(record.path)
            if frame is None:
                skipped["unreadable video"] += 1
                continue
            found = detect(frame, keyword)
            x0, y0, x1, y1 = found[0] if found else (0, 0, 0, 0)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(frame.shape[1], x1), min(frame.shape[0], y1)
            if not found or x1 <= x0 or y1 <= y0:
                skipped["not detected"] += 1
                continue
            crop = f"crops/{len(rows):06d}.png"
            cv2.imwrite(str(staging / crop), cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2BGR))
            rows.append({"video": str(Path(record.path).resolve()), "caption": record.caption, "subject": keyword,
                         "crop": crop, "box": f"{x0} {y0} {x1} {y1}", "score": f"{found[1]:.4f}"})
        with (staging / "dataset.csv").open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["video", "caption", "subject", "crop", "box", "score"])
            writer.writeheader()
            writer.writerows(rows)
        summary = {"kept": len(rows), "skipped": {reason: skipped[reason] for reason in SKIP_REASONS},
                   "keywords": keywords, "subjects": dict(Counter(row["subject"] for row in rows))}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
        return summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="WebVid-style CSV: videoid, name (caption), page_dir")
    parser.add_argument("--videos", required=True, help="the folder holding <videoid>.mp4 or <page_dir>/<videoid>.mp4")
    parser.add_argument("--keywords", required=True, help="comma-separated subject words, e.g. dog,cat,car")
    parser.add_argument("--detector", required=True, help="a local OWL-ViT/OWLv2 directory, or toy")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threshold", type=float, default=0.1, help="lowest detection score kept")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many kept clips")
    args = parser.parse_args(argv)
    try:
        from stylevid.data.videos import webvid_records

        keywords = [k.strip() for k in args.keywords.split(",") if k.strip()]
        if not keywords:
            raise UserInputError("--keywords names no word")
        records = webvid_records(args.csv, args.videos)
        detect = load_detector(args.detector, args.threshold)  # before anything is written
        summary = build_dataset(records, keywords, detect, Path(args.out), args.limit)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
