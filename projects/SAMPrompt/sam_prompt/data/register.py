"""Register datasets found in a folder (``--dataset NAME [--data-root DIR]``)."""

import hashlib
import json
import logging
import os
import time

from detectron2.data import DatasetCatalog, MetadataCatalog

from .check import InvalidRecordError, find_problems
from .formats import assign_category_ids, load_records
from .synthetic import SyntheticIWPSpec, generate_dataset

__all__ = [
    "register_dataset",
    "find_dataset_files",
    "ensure_synthetic_dataset",
    "split_by_name",
    "in_test_split",
    "SYNTHETIC_NAME",
]

logger = logging.getLogger(__name__)

# --dataset iwp_synthetic generates this dataset on first use.
SYNTHETIC_NAME = "iwp_synthetic"
# Synthetic datasets generated on first use, by name: the demo's, and the varied tiles that
# pretrain sam_small_cpu.yaml's model (make pretrain; 400 training tiles of 256 px).
SYNTHETIC_SPECS = {
    SYNTHETIC_NAME: SyntheticIWPSpec(),
    "iwp_synthetic_realistic": SyntheticIWPSpec(style="realistic", num_train=400, num_test=32),
}
SPLITS = ("train", "test")


def find_dataset_files(name, data_root="data"):
    """
    The annotation files of dataset ``name`` in ``data_root/name``, first found of:
    ``dataset_{train,test}.json``; ``{name}_{train,test}.json``;
    ``{train,test}/via_region_data.json``; then one file for all images, split by
    :func:`split_by_name`: ``via_region_data.json``, ``{name}.json`` or ``dataset.json``.

    Returns:
        dict[str, tuple[str, str or None]]: split ("train" and "test", or "all") -> (json path,
        image root or None).
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
    singles = ["via_region_data.json", f"{name}.json", "dataset.json"]
    for single in singles:
        path = os.path.join(root, single)
        if os.path.isfile(path):
            return {"all": (path, root)}
    looked = "; ".join(" + ".join(os.path.relpath(p, root) for p, _ in l.values()) for l in layouts)
    raise FileNotFoundError(f"No dataset files in {root}: looked for {looked}; or one of {singles}")


def in_test_split(file_name, test_fraction):
    """
    Whether an image belongs to the test split: decided by a hash of its file name alone, so
    adding or removing other images never moves it.
    """
    digest = hashlib.sha1(os.path.basename(file_name).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def split_by_name(records, test_fraction):
    """Disjoint (train, test) records of one annotation file (see :func:`in_test_split`)."""
    train, test = [], []
    for r in records:
        (test if in_test_split(r["file_name"], test_fraction) else train).append(r)
    return train, test


def ensure_synthetic_dataset(data_root="data", name=SYNTHETIC_NAME, spec=None):
    """Generate the synthetic IWP dataset into ``data_root/name`` unless it is there already."""
    spec = spec or SYNTHETIC_SPECS.get(name, SyntheticIWPSpec())
    root = os.path.join(data_root, name)
    stamp = os.path.join(root, ".spec.json")
    want = spec.__dict__
    if os.path.isfile(stamp):
        try:
            with open(stamp) as f:
                written = json.load(f)
        except ValueError:
            written = None
        # Fields added since a stamp was written take their defaults, which generate what the
        # code generated before them (e.g. style "clean"): older datasets stay valid.
        if isinstance(written, dict) and {**SyntheticIWPSpec().__dict__, **written} == want:
            return root
        raise FileExistsError(
            f"{root} holds a synthetic dataset of another spec; remove it or pick another name"
        )
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"{root} exists and is not a synthetic dataset: not overwriting it")
    logger.info(f"Generating the synthetic IWP dataset in {root} ...")
    generate_dataset(root, spec, fmt="via")
    with open(stamp, "w") as f:
        json.dump(want, f, sort_keys=True)
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
    test_fraction=0.2,
):
    """
    Register ``{name}_train`` and ``{name}_test`` from ``data_root/name`` (see
    :func:`find_dataset_files`), with the metadata that ``COCOEvaluator`` needs. Every image is
    decoded once here, so that a broken file is found now, not at the iteration that draws it.

    Args:
        name (str): dataset folder name. ``iwp_synthetic`` and ``iwp_synthetic_realistic``
            are generated on first use.
        data_root (str):
        class_attribute (str): VIA region attribute of the class name.
        merge_classes (str): if given, all classes become this one (e.g. "iwp").
        skip_invalid (bool): skip (and log) records with problems instead of raising.
        test_fraction (float): for a dataset with one annotation file: the share of images
            (by a hash of the file name) in the test split; 0 = both splits are all images.

    Returns:
        tuple[str, str]: the registered train and test names.
    """
    if name in SYNTHETIC_SPECS:
        ensure_synthetic_dataset(data_root, name)
    files = find_dataset_files(name, data_root)
    loaded = {s: load_records(p, root, class_attribute) for s, (p, root) in files.items()}
    file_classes = next((d.class_names for d in loaded.values() if d.class_names), None)
    dataset_ids = next((d.dataset_ids for d in loaded.values() if d.class_names), None)
    names = assign_category_ids(
        [d.records for d in loaded.values()], class_names=file_classes, merge_classes=merge_classes
    )
    # COCO files keep their own category ids (results files of other tools use them).
    if dataset_ids is not None and not merge_classes:
        id_map = {dataset_id: i for i, dataset_id in enumerate(dataset_ids)}
    else:
        id_map = {i: i for i in range(len(names))}

    checked = {}
    start = time.time()
    for split, d in loaded.items():
        problems = find_problems(d.records, len(names))
        fatal = [m for i, _, m in problems if i is None]  # the whole file: nothing to skip
        if fatal:
            raise InvalidRecordError(f"{files[split][0]} ({name}): {'; '.join(fatal)}")
        if problems and not skip_invalid:
            shown = "\n  ".join(m for _, _, m in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise InvalidRecordError(
                f"{len(problems)} problems in {files[split][0]} ({name}):\n  {shown}{more}\n"
                "Fix the data (tools/check_dataset.py lists everything), or set "
                "DATASETS.SKIP_INVALID True to skip these records."
            )
        checked[split] = (
            _drop_invalid(d.records, problems, f"{name}_{split}") if problems else d.records
        )
    logger.info(
        f"Checked {name}: {sum(len(r) for r in checked.values())} images decoded in {time.time() - start:.1f} s"
    )

    if "all" in checked:
        records = checked["all"]
        if test_fraction <= 0:
            logger.warning(
                f"{files['all'][0]} is one annotation file and DATASETS.TEST_FRACTION is 0: "
                f"{name}_train and {name}_test are the same {len(records)} images (development only)"
            )
            splits = {"train": records, "test": records}
        else:
            train, test = split_by_name(records, test_fraction)
            splits = {"train": train, "test": test}
            logger.info(
                f"{name}: one annotation file, split by file-name hash (DATASETS.TEST_FRACTION "
                f"{test_fraction:g}): {len(train)} train / {len(test)} test images"
            )
    else:
        splits = checked
    registered = []
    for split in SPLITS:
        records = splits[split]
        dname = f"{name}_{split}"
        if split == "train" and not any(r["annotations"] for r in records):
            raise InvalidRecordError(f"{dname} has no usable annotation left to train on")
        if not records:
            raise InvalidRecordError(
                f"{dname} has no images ({files.get(split, files.get('all'))[0]}); with one annotation "
                "file, change DATASETS.TEST_FRACTION"
            )
        if dname in DatasetCatalog.list():
            DatasetCatalog.remove(dname)
            MetadataCatalog.remove(dname)
        DatasetCatalog.register(dname, lambda records=records: records)
        source, _ = files.get(split, files.get("all"))
        MetadataCatalog.get(dname).set(
            thing_classes=names,
            thing_dataset_id_to_contiguous_id=id_map,
            evaluator_type="coco",
            source_file=source,
            source_format=loaded[split if split in loaded else "all"].fmt,
        )
        logger.info(
            f"Registered {dname}: {len(records)} images, "
            f"{sum(len(r['annotations']) for r in records)} instances, classes {names}"
        )
        registered.append(dname)
    return tuple(registered)
