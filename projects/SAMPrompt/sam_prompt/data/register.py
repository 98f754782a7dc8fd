"""Register datasets found in a folder (``--dataset NAME [--data-root DIR]``)."""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..mapper import InvalidRecordError
from .check import find_problems
from .formats import assign_category_ids, load_records
from .synthetic import SyntheticIWPSpec, generate_dataset

__all__ = ["register_dataset", "find_dataset_files", "ensure_synthetic_dataset", "SYNTHETIC_NAME"]

logger = logging.getLogger(__name__)

# --dataset iwp_synthetic generates this dataset on first use.
SYNTHETIC_NAME = "iwp_synthetic"
SPLITS = ("train", "test")


def find_dataset_files(name, data_root="data"):
    """
    The train/test files of dataset ``name`` in ``data_root/name``, first found of:
    ``dataset_{train,test}.json``; ``{name}_{train,test}.json``;
    ``{train,test}/via_region_data.json``; a single ``via_region_data.json`` (then both splits
    are the same images, for development on one labelled folder).

    Returns:
        dict[str, tuple[str, str or None]]: split -> (json path, image root or None).
    """
    root = os.path.join(data_root, name)
    layouts = [
        {s: (os.path.join(root, f"dataset_{s}.json"), None) for s in SPLITS},
        {s: (os.path.join(root, f"{name}_{s}.json"), None) for s in SPLITS},
        {s: (os.path.join(root, s, "via_region_data.json"), os.path.join(root, s)) for s in SPLITS},
    ]
    for layout in layouts:
        if all(os.path.isfile(p) for p, _ in layout.values()):
            return layout
    single = os.path.join(root, "via_region_data.json")
    if os.path.isfile(single):  # one labelled folder (e.g. a validation set): train = test
        logger.warning(f"{root} has one split only: {name}_train and {name}_test are the same images")
        return {s: (single, root) for s in SPLITS}
    looked = "; ".join(" + ".join(os.path.relpath(p, root) for p, _ in l.values()) for l in layouts)
    looked += "; via_region_data.json"
    raise FileNotFoundError(f"No dataset files in {root}: looked for {looked}")


def ensure_synthetic_dataset(data_root="data", name=SYNTHETIC_NAME, spec=None):
    """Generate the synthetic IWP dataset into ``data_root/name`` unless it is there already."""
    spec = spec or SyntheticIWPSpec()
    root = os.path.join(data_root, name)
    stamp = os.path.join(root, ".spec.json")
    want = json.dumps(spec.__dict__, sort_keys=True)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read() == want:
                return root
        raise FileExistsError(
            f"{root} holds a synthetic dataset of another spec; remove it or pick another name"
        )
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"{root} exists and is not a synthetic dataset: not overwriting it")
    logger.info(f"Generating the synthetic IWP dataset in {root} ...")
    generate_dataset(root, spec, fmt="via")
    with open(stamp, "w") as f:
        f.write(want)
    return root


def _drop_invalid(records, problems, split_name):
    bad_records = {i for i, j, _ in problems if j is None}
    bad_annos = {(i, j) for i, j, _ in problems if j is not None}
    kept = []
    for i, r in enumerate(records):
        if i in bad_records:
            continue
        r["annotations"] = [a for j, a in enumerate(r["annotations"]) if (i, j) not in bad_annos]
        kept.append(r)
    for _, _, msg in problems:
        logger.warning(f"[{split_name}] skipped: {msg}")
    logger.warning(
        f"[{split_name}] skipped {len(bad_records)} images and {len(bad_annos)} annotations "
        "with problems (DATASETS.SKIP_INVALID)"
    )
    return kept


def register_dataset(
    name,
    data_root="data",
    *,
    class_attribute=None,
    merge_classes=None,
    skip_invalid=False,
):
    """
    Register ``{name}_train`` and ``{name}_test`` from ``data_root/name`` (see
    :func:`find_dataset_files`), with the metadata that ``COCOEvaluator`` needs.

    Args:
        name (str): dataset folder name. ``iwp_synthetic`` is generated on first use.
        data_root (str):
        class_attribute (str): VIA region attribute of the class name.
        merge_classes (str): if given, all classes become this one (e.g. "iwp").
        skip_invalid (bool): skip (and log) records with problems instead of raising.

    Returns:
        tuple[str, str]: the registered train and test names.
    """
    if name == SYNTHETIC_NAME:
        ensure_synthetic_dataset(data_root, name)
    files = find_dataset_files(name, data_root)
    loaded = {s: load_records(p, root, class_attribute) for s, (p, root) in files.items()}
    file_classes = loaded["train"][2] or loaded["test"][2]
    names = assign_category_ids(
        [loaded[s][0] for s in SPLITS], class_names=file_classes, merge_classes=merge_classes
    )
    registered = []
    for split in SPLITS:
        records, fmt, _ = loaded[split]
        dname = f"{name}_{split}"
        problems = find_problems(records, len(names))
        if problems and not skip_invalid:
            shown = "\n  ".join(m for _, _, m in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise InvalidRecordError(
                f"{len(problems)} problems in {files[split][0]} ({dname}):\n  {shown}{more}\n"
                "Fix the data (tools/check_dataset.py lists everything), or set "
                "DATASETS.SKIP_INVALID True to skip these records."
            )
        if problems:
            records = _drop_invalid(records, problems, dname)
        id_map = {i: i for i in range(len(names))}
        if fmt == "coco" and not merge_classes:  # evaluate with the file's own category ids
            id_map = {}
            for r in records:
                for a in r["annotations"]:
                    id_map[a["coco_category_id"]] = a["category_id"]
        if dname in DatasetCatalog.list():
            DatasetCatalog.remove(dname)
            MetadataCatalog.remove(dname)
        DatasetCatalog.register(dname, lambda records=records: records)
        MetadataCatalog.get(dname).set(
            thing_classes=names,
            thing_dataset_id_to_contiguous_id=id_map,
            evaluator_type="coco",
            source_file=files[split][0],
            source_format=fmt,
        )
        logger.info(
            f"Registered {dname}: {len(records)} images, "
            f"{sum(len(r['annotations']) for r in records)} instances, classes {names} ({fmt})"
        )
        registered.append(dname)
    return tuple(registered)
