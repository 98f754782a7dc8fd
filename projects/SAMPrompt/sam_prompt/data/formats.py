"""
Instance datasets in the formats our users have, as Detectron2 dataset dicts.

Supported (detected from the content of a JSON file):

* **Detectron2** list of dicts (the original design's ``dataset_train.json``): ``file_name``
  relative to the JSON's folder or to the working directory; ``category_id`` contiguous; class
  names from ``category_name`` when annotations have it.
* **COCO** instances (``images``, ``annotations``, ``categories``); polygons and RLE.
* **VIA** 1 and 2 (``via_region_data.json`` or a VIA project file): polygon and rect regions, the
  class in a region attribute (``class_attribute``; by default the only attribute, or
  ``object_name``). Image sizes are read from the image headers.

Loading is tolerant: a record whose image cannot be read keeps ``height``/``width`` None and
:func:`sam_prompt.data.check.find_problems` reports it. Records are returned with class *names*
(``category_name``) so that splits can share one class list (:func:`assign_category_ids`).
"""

import json
import logging
import os
import numpy as np
from PIL import Image
from shapely.geometry import Polygon

logger = logging.getLogger(__name__)

__all__ = ["detect_format", "load_records", "assign_category_ids", "write_dataset"]


class DatasetFormatError(ValueError):
    """A dataset file that is not in a supported format."""


def detect_format(obj):
    """Return "detectron2", "coco" or "via" for the parsed content of a dataset JSON, else None."""
    if isinstance(obj, list):
        return "detectron2" if all(isinstance(r, dict) and "file_name" in r for r in obj) else None
    if not isinstance(obj, dict):
        return None
    if {"images", "annotations", "categories"} <= set(obj):
        return "coco"
    if "_via_img_metadata" in obj:
        return "via"
    if obj and all(isinstance(v, dict) and "filename" in v and "regions" in v for v in obj.values()):
        return "via"
    return None


def _image_size(path):
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError):
        return None, None


def load_records(json_path, image_root=None, class_attribute=None):
    """
    Load a dataset JSON of any supported format.

    Args:
        json_path (str):
        image_root (str): folder that image file names are relative to; default: the JSON's
            folder (Detectron2 JSONs also try the working directory).
        class_attribute (str): VIA region attribute holding the class name.

    Returns:
        records (list[dict]): dataset dicts whose annotations carry ``category_name`` (and, for
        COCO, the original ``category_id`` in ``coco_category_id``); ``fmt`` (str);
        ``class_names`` (list[str]) in the order the file defines them (COCO categories by id,
        Detectron2 category ids), or None (VIA).
    """
    try:
        with open(json_path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise DatasetFormatError(f"Cannot parse dataset file {json_path}: {e}") from e
    fmt = detect_format(obj)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(json_path))
    if fmt == "detectron2":
        records, names = _load_detectron2(obj, root, json_path)
        return records, fmt, names
    if fmt == "coco":
        records, names = _load_coco(obj, root)
        return records, fmt, names
    if fmt == "via":
        return _load_via(obj, root, json_path, class_attribute), fmt, None
    raise DatasetFormatError(
        f"{json_path}: not a Detectron2 list of dicts, a COCO instances file or a VIA file"
    )


def _load_detectron2(obj, root, json_path):
    records = []
    for i, r in enumerate(obj):
        r = dict(r)
        fn = r["file_name"]
        candidates = [fn] if os.path.isabs(fn) else [os.path.join(root, fn), fn]
        r["file_name"] = next((c for c in candidates if os.path.exists(c)), candidates[0])
        r.setdefault("image_id", i)
        if "height" not in r or "width" not in r:
            r["height"], r["width"] = _image_size(r["file_name"])
        r["annotations"] = [dict(a) for a in r.get("annotations", [])]
        records.append(r)
    # Class names: from category_name where annotations have it, by category_id.
    id_to_name = {}
    for r in records:
        for a in r["annotations"]:
            id_to_name.setdefault(a["category_id"], a.get("category_name"))
    num = max(id_to_name, default=-1) + 1
    names = [id_to_name.get(i) or f"class_{i}" for i in range(num)]
    for r in records:
        for a in r["annotations"]:
            a["category_name"] = names[a["category_id"]] if 0 <= a["category_id"] < num else str(a["category_id"])
    return records, names


def _load_coco(obj, root):
    cats = sorted(obj["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    id_to_name = {c["id"]: c["name"] for c in cats}
    by_image = {}
    for a in obj["annotations"]:
        by_image.setdefault(a.get("image_id"), []).append(a)
    records = []
    for img in obj["images"]:
        annos = []
        for a in by_image.get(img["id"], []):
            x, y, w, h = a.get("bbox", (0, 0, 0, 0))
            annos.append(
                {
                    "bbox": [x, y, x + w, y + h],
                    "bbox_mode": 0,
                    "segmentation": a.get("segmentation"),
                    "category_name": id_to_name.get(a.get("category_id"), f"<unknown id {a.get('category_id')}>"),
                    "coco_category_id": a.get("category_id"),
                    "iscrowd": a.get("iscrowd", 0),
                }
            )
        records.append(
            {
                "file_name": os.path.join(root, img["file_name"]),
                "height": img.get("height"),
                "width": img.get("width"),
                "image_id": img["id"],
                "annotations": annos,
            }
        )
    return records, names


def _via_class(attrs, class_attribute, where):
    if class_attribute is not None:
        if class_attribute not in attrs:
            raise DatasetFormatError(f"{where}: no region attribute {class_attribute!r} (has {sorted(attrs)})")
        value = attrs[class_attribute]
    elif len(attrs) == 1:
        value = next(iter(attrs.values()))
    elif "object_name" in attrs:
        value = attrs["object_name"]
    else:
        raise DatasetFormatError(
            f"{where}: which region attribute is the class? Pass class_attribute (one of {sorted(attrs)})"
        )
    if isinstance(value, dict):  # VIA checkbox attributes: {"name": true}
        chosen = [k for k, v in value.items() if v]
        value = chosen[0] if len(chosen) == 1 else ",".join(chosen)
    return str(value)


def _load_via(obj, root, json_path, class_attribute):
    meta = obj.get("_via_img_metadata", obj)
    records = []
    for i, (key, entry) in enumerate(meta.items()):
        file_name = os.path.join(root, entry["filename"])
        h, w = _image_size(file_name)
        regions = entry["regions"]
        if isinstance(regions, dict):  # VIA 1: {"0": region, ...}
            regions = [regions[k] for k in sorted(regions, key=lambda k: int(k) if str(k).isdigit() else k)]
        annos = []
        for j, region in enumerate(regions):
            where = f"{json_path}: {entry['filename']} region {j}"
            shape = region.get("shape_attributes", {})
            kind = shape.get("name")
            if kind in ("polygon", "polyline"):
                xs, ys = shape.get("all_points_x", []), shape.get("all_points_y", [])
                if len(xs) != len(ys):
                    xs, ys = [], []  # reported as a degenerate polygon by the checker
            elif kind == "rect":
                x, y, rw, rh = (shape[k] for k in ("x", "y", "width", "height"))
                xs, ys = [x, x + rw, x + rw, x], [y, y, y + rh, y + rh]
            else:
                raise DatasetFormatError(f"{where}: unsupported VIA shape {kind!r} (polygon or rect)")
            poly = np.stack([np.asarray(xs, float), np.asarray(ys, float)], 1) if xs else np.zeros((0, 2))
            bbox = [*poly.min(0), *poly.max(0)] if len(poly) else [0.0, 0.0, 0.0, 0.0]
            annos.append(
                {
                    "segmentation": [poly.ravel().tolist()],
                    "bbox": [float(v) for v in bbox],
                    "bbox_mode": 0,
                    "category_name": _via_class(region.get("region_attributes", {}), class_attribute, where),
                }
            )
        records.append({"file_name": file_name, "height": h, "width": w, "image_id": i, "annotations": annos})
    return records


def assign_category_ids(splits, class_names=None, merge_classes=None):
    """
    Give the annotations of several splits contiguous ``category_id`` from one class list.

    Args:
        splits (list[list[dict]]): records of each split (modified in place).
        class_names (list[str]): class order; default: sorted names found in the data.
        merge_classes (str): if given, every instance becomes this one class.

    Returns:
        list[str]: class names, index = category_id.
    """
    if merge_classes:
        names = [merge_classes]
    elif class_names:
        names = list(class_names)
    else:
        names = sorted({a["category_name"] for recs in splits for r in recs for a in r["annotations"]})
    index = {n: i for i, n in enumerate(names)}
    for recs in splits:
        for r in recs:
            for a in r["annotations"]:
                a["category_id"] = 0 if merge_classes else index.get(a["category_name"], -1)
    return names


# ----------------------------------------------------------------------------------------------
# Writers: the same records in each format (used by the synthetic generator and the tests).


def write_dataset(root, split, records, class_names, fmt):
    """
    Write ``records`` (Detectron2 dicts with one polygon list per annotation, ``file_name``
    relative to ``root/split``) as:

    * "via": ``root/split/via_region_data.json`` (VIA 2, class in ``object_name``);
    * "coco": ``root/<basename(root)>_<split>.json`` (file names relative to ``root``);
    * "detectron2": ``root/dataset_<split>.json`` (file names relative to ``root``).

    Returns:
        str: the path written.
    """
    if fmt == "via":
        out = {}
        for r in records:
            size = os.path.getsize(os.path.join(root, split, r["file_name"]))
            regions = []
            for a in r["annotations"]:
                xy = np.asarray(a["segmentation"][0]).reshape(-1, 2)
                regions.append(
                    {
                        "shape_attributes": {
                            "name": "polygon",
                            "all_points_x": xy[:, 0].tolist(),
                            "all_points_y": xy[:, 1].tolist(),
                        },
                        "region_attributes": {"object_name": class_names[a["category_id"]]},
                    }
                )
            out[f"{r['file_name']}{size}"] = {"filename": r["file_name"], "size": size, "regions": regions, "file_attributes": {}}
        path = os.path.join(root, split, "via_region_data.json")
    elif fmt == "coco":
        images, annos = [], []
        for r in records:
            images.append({"id": r["image_id"], "file_name": f"{split}/{r['file_name']}", "height": r["height"], "width": r["width"]})
            for a in r["annotations"]:
                x0, y0, x1, y1 = a["bbox"]
                xy = np.asarray(a["segmentation"][0]).reshape(-1, 2)
                area = Polygon(xy).area
                annos.append(
                    {
                        "id": len(annos) + 1,
                        "image_id": r["image_id"],
                        "category_id": a["category_id"] + 1,
                        "segmentation": a["segmentation"],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": float(area),
                        "iscrowd": 0,
                    }
                )
        out = {
            "images": images,
            "annotations": annos,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
        }
        path = os.path.join(root, f"{os.path.basename(os.path.normpath(root))}_{split}.json")
    elif fmt == "detectron2":
        out = [
            dict(r, file_name=f"{split}/{r['file_name']}", annotations=[dict(a, category_name=class_names[a["category_id"]]) for a in r["annotations"]])
            for r in records
        ]
        path = os.path.join(root, f"dataset_{split}.json")
    else:
        raise ValueError(f"unknown dataset format {fmt!r}: via, coco or detectron2")
    with open(path, "w") as f:
        json.dump(out, f)
    return path
