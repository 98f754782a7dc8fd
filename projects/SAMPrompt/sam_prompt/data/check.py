"""
Validation of dataset records: what training and evaluation would trip on, each problem named by
file and record (``tools/check_dataset.py``, dataset registration and the mapper use it).
"""

import collections
import math
import os

import numpy as np
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util
from shapely.geometry import Polygon

from .images import image_size, read_image

__all__ = [
    "InvalidRecordError",
    "record_name",
    "annotation_problem",
    "image_problem",
    "size_problem",
    "bbox_xywh",
    "rle",
    "find_problems",
    "summarize",
]


class InvalidRecordError(ValueError):
    """A dataset record (image or annotation) that cannot be used."""


def record_name(r):
    """How messages name a record: its file and image id."""
    return f"{r.get('file_name', '<no file_name>')} (image_id={r.get('image_id', '?')})"


def _fmt(values):
    """Numbers as a reader wants them: [1.5, 2, 30.25]."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def bbox_xywh(anno):
    """The annotation's box as XYWH_ABS (plain floats)."""
    box = BoxMode.convert(
        list(anno["bbox"]), anno.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYWH_ABS
    )
    return [float(v) for v in box]


def rle(seg):
    """A COCO RLE dict in the compressed form pycocotools works with."""
    if isinstance(seg["counts"], list):  # uncompressed RLE
        seg = mask_util.frPyObjects(seg, *seg["size"])
    return seg


def annotation_problem(anno):
    """Why an annotation cannot be used (a short phrase), or None."""
    seg = anno.get("segmentation")
    if seg is None:
        return "no segmentation"
    if isinstance(seg, dict):  # RLE
        try:
            return None if mask_util.area(rle(seg)) > 0 else "empty RLE mask"
        except (KeyError, TypeError, ValueError) as e:
            return f"unreadable RLE mask ({e})"
    if not isinstance(seg, list) or len(seg) == 0:
        return "empty segmentation"
    for p in seg:
        if not isinstance(p, (list, tuple, np.ndarray)):
            return f"polygon is a {type(p).__name__}, not a list of coordinates"
        if len(p) % 2 or len(p) < 6:
            return f"polygon with {len(p) / 2:g} points (need >= 3)"
        try:
            coords = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError):
            return "polygon with non-numeric coordinates"
        if not np.isfinite(coords).all():
            return "polygon with non-finite (NaN or infinite) coordinates"
    if "bbox" in anno:
        try:
            x0, y0, w, h = bbox_xywh(anno)
        except (TypeError, ValueError, IndexError):
            return f"unreadable box {anno['bbox']!r}"
        if not all(math.isfinite(v) for v in (x0, y0, w, h)):
            return f"box with non-finite values {_fmt(anno['bbox'])}"
        if w <= 0 or h <= 0:
            return f"zero-area box {_fmt(anno['bbox'])}"
    area = sum(Polygon(np.asarray(p, dtype=np.float64).reshape(-1, 2)).area for p in seg)
    return None if area > 0 else "zero-area polygon"


def size_problem(r, h, w):
    """Why an image read as h x w does not match record ``r``'s size, or None."""
    if r.get("height") is None or (r["height"], r["width"]) == (h, w):
        return None
    return (
        f"image is {w}x{h} (WxH, EXIF orientation applied) but the record says "
        f"{r['width']}x{r['height']}"
    )


def image_problem(r, decode=True):
    """
    Why the image of record ``r`` cannot be used (missing, unreadable, truncated, or of another
    size than the record says once its EXIF orientation is applied), or None.
    """
    fn = r.get("file_name")
    if not fn or not os.path.isfile(fn):
        return "image file missing"
    try:
        if decode:
            h, w = read_image(fn).shape[:2]
        else:
            h, w = image_size(fn)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises SyntaxError for some broken files
        return f"unreadable image ({e})"
    return size_problem(r, h, w)


def find_problems(records, num_classes, decode_images=True):
    """
    Every problem of ``records`` that would break training or evaluation.

    Args:
        records (list[dict]): dataset dicts as loaded by :func:`formats.load_records`.
        num_classes (int): valid category ids are [0, num_classes).
        decode_images (bool): decode every image fully, as training will (finds truncated
            files); False reads the headers only.

    Returns:
        list[tuple[int, int or None, str]]: (record index, annotation index or None, message);
        each message names the file and record.
    """
    problems = []
    if not records:
        return [(None, None, "no images")]
    seen_ids = {}
    for i, r in enumerate(records):
        name = record_name(r)
        problem = image_problem(r, decode=decode_images)
        if problem:
            problems.append((i, None, f"{name}: {problem}"))
        iid = r.get("image_id")
        if iid in seen_ids:
            other = records[seen_ids[iid]].get("file_name")
            problems.append((i, None, f"{name}: duplicate image_id (also {other})"))
        seen_ids.setdefault(iid, i)
        h, w = r.get("height"), r.get("width")
        for j, a in enumerate(r.get("annotations", [])):
            where = f"{name}, annotation {j}"
            problem = annotation_problem(a)
            if problem:
                problems.append((i, j, f"{where}: {problem}"))
                continue
            cid = a.get("category_id", -1)
            if not 0 <= cid < num_classes:
                label = a.get("category_name", cid)
                problems.append((i, j, f"{where}: category {label!r} is not a known class"))
            if h is not None and "bbox" in a:
                x, y, bw, bh = bbox_xywh(a)
                tol = 1.0  # polygon vertices on the outer pixel edge are fine
                if x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
                    box = _fmt(np.round([x, y, x + bw, y + bh], 1))
                    problems.append((i, j, f"{where}: box {box} outside the {w}x{h} image"))
    if not any(r.get("annotations") for r in records):
        problems.append((None, None, "no annotations in any image"))
    return problems


def summarize(records, class_names):
    """Printable statistics of a dataset: images, instances per class, per image, image sizes."""
    per_class = collections.Counter()
    per_image = []
    sizes = collections.Counter()
    for r in records:
        per_image.append(len(r.get("annotations", [])))
        sizes[(r.get("width"), r.get("height"))] += 1
        for a in r.get("annotations", []):
            cid = a.get("category_id", -1)
            known = 0 <= cid < len(class_names)
            per_class[class_names[cid] if known else a.get("category_name", cid)] += 1
    n = np.array(per_image) if per_image else np.zeros(1)
    lines = [
        f"images: {len(records)}",
        f"instances: {int(n.sum())}",
        "instances per class: "
        + ", ".join(f"{k}={v}" for k, v in sorted(per_class.items(), key=str)),
        "instances per image: min {:.0f}, median {:.0f}, mean {:.1f}, p95 {:.0f}, max {:.0f}".format(
            n.min(), np.median(n), n.mean(), np.percentile(n, 95), n.max()
        ),
    ]
    known = [s for s in sizes if s[0] is not None]
    if known:
        ws, hs = zip(*known)
        lines.append(
            f"image sizes (WxH): {len(sizes)} distinct, width {min(ws)}-{max(ws)}, "
            f"height {min(hs)}-{max(hs)}"
        )
    return lines
