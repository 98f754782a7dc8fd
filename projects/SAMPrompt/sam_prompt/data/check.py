"""Find problems in dataset records and summarise them (``tools/check_dataset.py``)."""

import collections
import os

import numpy as np
from PIL import Image

from ..mapper import annotation_problem, bbox_xywh

__all__ = ["find_problems", "summarize"]


def _name(r):
    return f"{r.get('file_name')} (image_id={r.get('image_id')})"


def find_problems(records, num_classes, decode_images=False):
    """
    Every problem of ``records`` that would break training or evaluation.

    Args:
        records (list[dict]): dataset dicts as loaded by :func:`formats.load_records` (image sizes
            None where the image could not be read).
        num_classes (int): valid category ids are [0, num_classes).
        decode_images (bool): decode every image fully (finds truncated files; slower).

    Returns:
        list[tuple[int, int or None, str]]: (record index, annotation index or None, message);
        each message names the file and record.
    """
    problems = []
    seen_ids = {}
    for i, r in enumerate(records):
        name = _name(r)
        fn = r.get("file_name")
        if not fn or not os.path.isfile(fn):
            problems.append((i, None, f"{name}: image file missing"))
        else:
            try:
                with Image.open(fn) as im:
                    size = (im.height, im.width)
                    if decode_images:
                        im.load()
            except (OSError, ValueError) as e:
                problems.append((i, None, f"{name}: unreadable image ({e})"))
            else:
                if r.get("height") is not None and (r["height"], r["width"]) != size:
                    problems.append(
                        (i, None, f"{name}: image is {size[1]}x{size[0]} but the record says {r['width']}x{r['height']}")
                    )
        iid = r.get("image_id")
        if iid in seen_ids:
            problems.append((i, None, f"{name}: duplicate image_id (also {records[seen_ids[iid]].get('file_name')})"))
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
                problems.append((i, j, f"{where}: category {a.get('category_name', cid)!r} is not a known class"))
            if h is not None and "bbox" in a:
                x, y, bw, bh = bbox_xywh(a)
                tol = 1.0  # polygon vertices on the outer pixel edge are fine
                if x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
                    problems.append((i, j, f"{where}: box {list(np.round([x, y, x + bw, y + bh], 1))} outside the {w}x{h} image"))
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
            per_class[class_names[cid] if 0 <= cid < len(class_names) else a.get("category_name", cid)] += 1
    n = np.array(per_image) if per_image else np.zeros(1)
    lines = [
        f"images: {len(records)}",
        f"instances: {int(n.sum())}",
        "instances per class: " + ", ".join(f"{k}={v}" for k, v in sorted(per_class.items(), key=str)),
        "instances per image: min {:.0f}, median {:.0f}, mean {:.1f}, p95 {:.0f}, max {:.0f}".format(
            n.min(), np.median(n), n.mean(), np.percentile(n, 95), n.max()
        ),
    ]
    known = [s for s in sizes if s[0] is not None]
    if known:
        ws, hs = zip(*known)
        lines.append(f"image sizes (WxH): {len(sizes)} distinct, width {min(ws)}-{max(ws)}, height {min(hs)}-{max(hs)}")
    return lines
