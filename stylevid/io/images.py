"""Reading single image files (style images, `invert input=image.png`, frames of a folder, reference images).

An image is measured from its header before it is decoded: a 20000 x 20000 style image would otherwise be
decoded in full (1.2 GB as RGB) only to be scaled down to 512 x 512. Images above `MAX_IMAGE_PIXELS` are refused
in one line. Decoding is OpenCV's (`IMREAD_COLOR`: grey, palette and 16-bit images become 8-bit RGB), the same
for every image stylevid reads, so an image inverted by itself gives the latents stylet2v0 uses for it as a style.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserInputError
from .native_output import captured_native_stderr

# 64 megapixels (8192 x 8192): far above any generation size, and below Pillow's own decompression-bomb warning
# (89 MP). An RGB image this large is 192 MiB decoded.
MAX_IMAGE_PIXELS = 8192 * 8192


def image_size(path: str | Path, label: str = "image") -> tuple[int, int]:
    """(width, height) of an image file from its header alone, refusing one above MAX_IMAGE_PIXELS.

    Cheap enough to check a file before anything loads, without decoding it.
    """
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if file.is_dir():
        raise UserInputError(f"{label} {path} is a directory, not an image file")
    if not file.is_file():
        raise UserInputError(f"{label} not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 MP; the limit below already refuses those, in one line instead of a warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                width, height = image.size
    except Image.DecompressionBombError:  # Pillow refuses twice its own limit in open() already
        raise UserInputError(f"{label} {path} is too large: {_limit_text()}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):  # SyntaxError: Pillow's broken-header error
        raise UserInputError(f"{label} {path} cannot be read as an image") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise UserInputError(f"{label} {path} is too large: {width}x{height} pixels; {_limit_text()}")
    return width, height


def decode_image(path: str | Path, label: str = "image") -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, its size checked (see `image_size`) before it is decoded."""
    image_size(path, label)
    with captured_native_stderr() as native:  # libpng / libjpeg warnings of a damaged file
        image = cv2.imread(str(Path(path).expanduser()), cv2.IMREAD_COLOR)
    if image is None:
        reason = native.reason()
        raise UserInputError(f"{label} {path} cannot be read as an image" + (f" ({reason})" if reason else ""))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _limit_text() -> str:
    return f"stylevid reads images of at most {MAX_IMAGE_PIXELS:,} pixels (8192x8192); scale it down first"
