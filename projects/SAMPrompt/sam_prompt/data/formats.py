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

import collections
import json
import logging
import os
from typing import NamedTuple, Optional

import numpy as np
from shapely.geometry import Polygon

from .images import image_size

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetFormatError",
    "LoadedDataset",
    "detect_format",
    "load_records",
    "assign_category_ids",
    "class_name_variants",
    "write_dataset",
]


class DatasetFormatError(ValueError):
    """A dataset file that is not in a supported format, or a record it cannot hold."""


class LoadedDataset(NamedTuple):
    """What :func:`load_records` read from one file."""

    records: list
    fmt: str
    # Class names in the order the file defines them (COCO categories by id, Detectron2 category
    # ids), or None when the file has no class list (VIA).
    class_names: Optional[list]
    # The file's own category ids of ``class_names`` (COCO), else None.
    dataset_ids: Optional[list] = None


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
    if obj and all(
        isinstance(v, dict) and "filename" in v and "regions" in v for v in obj.values()
    ):
        return "via"
    return None


def _image_size(path):
    """(h, w) with the EXIF orientation applied, or (None, None) when unreadable (reported later)."""
    try:
        return image_size(path)
    except (OSError, ValueError, SyntaxError):
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
        LoadedDataset: records (dataset dicts whose annotations carry ``category_name``), the
        format, the file's class names and (COCO) their dataset ids.
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
        return LoadedDataset(records, fmt, names)
    if fmt == "coco":
        records, names, ids = _load_coco(obj, root, json_path)
        return LoadedDataset(records, fmt, names, ids)
    if fmt == "via":
        return LoadedDataset(_load_via(obj, root, json_path, class_attribute), fmt, None)
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
            a["category_name"] = (
                names[a["category_id"]] if 0 <= a["category_id"] < num else str(a["category_id"])
            )
    return records, names


def _load_coco(obj, root, json_path):
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj[key], list):
            raise DatasetFormatError(
                f"{json_path}: '{key}' is a {type(obj[key]).__name__}, not a list"
            )
    try:
        cats = sorted(obj["categories"], key=lambda c: c["id"])
        names = [str(c["name"]) for c in cats]
    except (KeyError, TypeError) as e:
        raise DatasetFormatError(f"{json_path}: a category without 'id' or 'name' ({e})") from None
    id_to_name = {c["id"]: name for c, name in zip(cats, names)}
    by_image = {}
    for a in obj["annotations"]:
        by_image.setdefault(a.get("image_id"), []).append(a)
    records = []
    for k, img in enumerate(obj["images"]):
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            raise DatasetFormatError(f"{json_path}: images[{k}] has no 'file_name' or 'id'")
        annos = []
        for a in by_image.get(img["id"], []):
            x, y, w, h = a.get("bbox") or (0, 0, 0, 0)
            cid = a.get("category_id")
            annos.append(
                {
                    "bbox": [x, y, x + w, y + h],
                    "bbox_mode": 0,
                    "segmentation": a.get("segmentation"),
                    "category_name": id_to_name.get(cid, f"<unknown category id {cid}>"),
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
    return records, names, [c["id"] for c in cats]


def _via_class(attrs, class_attribute, where):
    if not isinstance(attrs, dict):
        raise DatasetFormatError(
            f"{where}: region_attributes is a {type(attrs).__name__}, not a dict"
        )
    if class_attribute is not None:
        if class_attribute not in attrs:
            raise DatasetFormatError(
                f"{where}: no region attribute {class_attribute!r} (it has {sorted(attrs) or 'none'})"
            )
        value = attrs[class_attribute]
    elif len(attrs) == 1:
        value = next(iter(attrs.values()))
    elif "object_name" in attrs:
        value = attrs["object_name"]
    elif not attrs:
        raise DatasetFormatError(f"{where}: the region has no attributes, so it has no class")
    else:
        raise DatasetFormatError(
            f"{where}: which region attribute is the class? Pass class_attribute "
            f"(--class-attribute; one of {sorted(attrs)})"
        )
    if isinstance(value, dict):  # VIA checkbox attributes: {"name": true}
        chosen = [k for k, v in value.items() if v]
        value = chosen[0] if len(chosen) == 1 else ",".join(chosen)
    return str(value)


def _via_polygon(shape, where):
    """(K, 2) vertices of a VIA polygon/rect shape; a degenerate shape gives (0, 2)."""
    if not isinstance(shape, dict):
        raise DatasetFormatError(
            f"{where}: shape_attributes is a {type(shape).__name__}, not a dict"
        )
    kind = shape.get("name")
    try:
        if kind in ("polygon", "polyline"):
            xs, ys = shape.get("all_points_x", []), shape.get("all_points_y", [])
            if not isinstance(xs, list) or not isinstance(ys, list):
                raise TypeError("all_points_x / all_points_y are not lists")
            if len(xs) != len(ys) or not xs:
                return np.zeros((0, 2))  # reported as a degenerate polygon by the checker
            return np.stack([np.asarray(xs, float), np.asarray(ys, float)], 1)
        if kind == "rect":
            x, y, rw, rh = (float(shape[k]) for k in ("x", "y", "width", "height"))
            return np.array([[x, y], [x + rw, y], [x + rw, y + rh], [x, y + rh]])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetFormatError(f"{where}: malformed {kind} shape ({e})") from None
    raise DatasetFormatError(f"{where}: unsupported VIA shape {kind!r} (polygon or rect)")


def _load_via(obj, root, json_path, class_attribute):
    meta = obj.get("_via_img_metadata", obj)
    if not isinstance(meta, dict):
        raise DatasetFormatError(f"{json_path}: _via_img_metadata is not a dict")
    records = []
    for i, (key, entry) in enumerate(meta.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DatasetFormatError(f"{json_path}: entry {key!r} has no 'filename'")
        file_name = os.path.join(root, entry["filename"])
        h, w = _image_size(file_name)
        regions = entry.get("regions", [])
        if isinstance(regions, dict):  # VIA 1: {"0": region, ...}
            order = sorted(
                regions,
                key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k)),
            )
            regions = [regions[k] for k in order]
        if not isinstance(regions, list):
            raise DatasetFormatError(
                f"{json_path}: {entry['filename']}: 'regions' is a {type(regions).__name__}, not a list"
            )
        annos = []
        for j, region in enumerate(regions):
            where = f"{json_path}: {entry['filename']} region {j}"
            if not isinstance(region, dict):
                raise DatasetFormatError(
                    f"{where}: a region is a {type(region).__name__}, not a dict"
                )
            poly = _via_polygon(region.get("shape_attributes"), where)
            finite = poly[np.isfinite(poly).all(1)]
            bbox = [*finite.min(0), *finite.max(0)] if len(finite) else [0.0, 0.0, 0.0, 0.0]
            annos.append(
                {
                    "segmentation": [poly.ravel().tolist()],
                    "bbox": [float(v) for v in bbox],
                    "bbox_mode": 0,
                    "category_name": _via_class(
                        region.get("region_attributes", {}), class_attribute, where
                    ),
                }
            )
        records.append(
            {"file_name": file_name, "height": h, "width": w, "image_id": i, "annotations": annos}
        )
    return records


def _class_key(name):
    """Spellings of one class: case and surrounding spaces do not make another class."""
    return str(name).strip().casefold()


def class_name_variants(splits):
    """
    Class names that differ only in case or surrounding spaces.

    Returns:
        dict[str, dict[str, int]]: key -> {spelling: instances}, only keys with several spellings.
    """
    spellings = collections.defaultdict(collections.Counter)
    for recs in splits:
        for r in recs:
            for a in r["annotations"]:
                spellings[_class_key(a["category_name"])][a["category_name"]] += 1
    return {k: dict(v) for k, v in spellings.items() if len(v) > 1}


def assign_category_ids(splits, class_names=None, merge_classes=None):
    """
    Give the annotations of several splits contiguous ``category_id`` from one class list.
    Names that differ only in case or surrounding spaces are one class (logged; its name is the
    file's, or the most frequent spelling).

    Args:
        splits (list[list[dict]]): records of each split (modified in place).
        class_names (list[str]): class order; default: sorted names found in the data.
        merge_classes (str): if given, every instance becomes this one class.

    Returns:
        list[str]: class names, index = category_id.
    """
    variants = class_name_variants(splits)
    for key, spellings in variants.items():
        logger.warning(
            f"class names {sorted(spellings, key=repr)} differ only in case or spaces: one class "
            f"({', '.join(f'{k!r}: {v}' for k, v in spellings.items())} instances)"
        )
    if merge_classes:
        names = [merge_classes]
    elif class_names:
        names = [str(n).strip() for n in class_names]
        keys = collections.Counter(_class_key(n) for n in names)
        clash = sorted(n for n in names if keys[_class_key(n)] > 1)
        if clash:
            raise DatasetFormatError(
                f"the dataset's categories {clash} differ only in case or spaces; rename or merge them"
            )
    else:
        counts = collections.defaultdict(collections.Counter)
        for recs in splits:
            for r in recs:
                for a in r["annotations"]:
                    counts[_class_key(a["category_name"])][str(a["category_name"]).strip()] += 1
        names = sorted(c.most_common(1)[0][0] for c in counts.values())
    index = {_class_key(n): i for i, n in enumerate(names)}
    for recs in splits:
        for r in recs:
            for a in r["annotations"]:
                a["category_id"] = (
                    0 if merge_classes else index.get(_class_key(a["category_name"]), -1)
                )
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
            out[f"{r['file_name']}{size}"] = {
                "filename": r["file_name"],
                "size": size,
                "regions": regions,
                "file_attributes": {},
            }
        path = os.path.join(root, split, "via_region_data.json")
    elif fmt == "coco":
        images, annos = [], []
        for r in records:
            images.append(
                {
                    "id": r["image_id"],
                    "file_name": f"{split}/{r['file_name']}",
                    "height": r["height"],
                    "width": r["width"],
                }
            )
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
            dict(
                r,
                file_name=f"{split}/{r['file_name']}",
                annotations=[
                    dict(a, category_name=class_names[a["category_id"]]) for a in r["annotations"]
                ],
            )
            for r in records
        ]
        path = os.path.join(root, f"dataset_{split}.json")
    else:
        raise ValueError(f"unknown dataset format {fmt!r}: via, coco or detectron2")
    with open(path, "w") as f:
        json.dump(out, f)
    return path
