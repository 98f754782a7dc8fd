"""
Reading images as the model sees them: EXIF orientation applied, any bit depth to uint8.

Detectron2's ``read_image`` clips 16-bit and float images at 255 (a 16-bit tile becomes white).
Here images that are not 8-bit are stretched to uint8 between their 2nd and 98th percentiles, the
same stretch :class:`sam_prompt.tiling.SceneReader` applies to scenes.
"""

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image, ImageOps

__all__ = ["read_image", "image_size", "stretch_range", "stretch_to_uint8"]

# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
# Modes whose values are not 8-bit.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def stretch_range(arr, valid=None, percentiles=(2, 98)):
    """The (lo, hi) values mapped to 0 and 255 (percentiles of the valid, finite values)."""
    values = np.asarray(arr, dtype=np.float64)
    ok = np.isfinite(values)
    if valid is not None:
        ok &= np.broadcast_to(valid, ok.shape)
    values = values[ok]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, percentiles)
    return float(lo), float(hi)


def stretch_to_uint8(arr, lo, hi):
    """Linear stretch of ``arr`` from [lo, hi] to [0, 255] (NaN -> 0)."""
    scaled = (np.asarray(arr, dtype=np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.nan_to_num(np.clip(scaled, 0, 1)) * 255).astype(np.uint8)


def image_size(path):
    """(height, width) of an image as read by :func:`read_image` (EXIF orientation applied)."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # a broken EXIF block: PIL's exif_transpose ignores it too
            orientation = None
    return (w, h) if orientation in _TRANSPOSED else (h, w)


def read_image(path, format="RGB"):
    """
    Decode an image fully (a truncated file raises OSError) with its EXIF orientation applied.

    Args:
        path (str):
        format (str): "RGB" or "BGR" (Detectron2's INPUT.FORMAT).

    Returns:
        ndarray[H, W, 3] uint8
    """
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in _WIDE_MODES:
            arr = np.asarray(im).astype(np.float32)
            arr = stretch_to_uint8(arr, *stretch_range(arr))
            im = Image.fromarray(arr, mode="L")
        return convert_PIL_to_numpy(im, format)
