#!/usr/bin/env python
"""
Check a dataset before training: statistics and every problem found, each naming file and record.
Every image is decoded (EXIF orientation applied), as training will read it.

    python tools/check_dataset.py --dataset NAME [--data-root data] [--class-attribute ATTR]
        [--test-fraction 0.2]
    python tools/check_dataset.py --json path/to/via_region_data.json [--image-root DIR]

Exit status 1 when there are problems.
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from sam_prompt.data import (  # noqa: E402
    DatasetFormatError,
    assign_category_ids,
    class_name_variants,
    find_dataset_files,
    find_problems,
    load_records,
    split_by_name,
    summarize,
)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="NAME", help="a dataset folder in --data-root")
    src.add_argument("--json", metavar="FILE", help="one dataset file (Detectron2, COCO or VIA)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--image-root", help="folder of the images of --json (default: its folder)")
    parser.add_argument("--class-attribute", help="VIA region attribute holding the class")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="DATASETS.TEST_FRACTION: how one annotation file is split into train and test",
    )
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="read image headers only (faster; misses truncated files)",
    )
    args = parser.parse_args(argv)

    try:
        files = (
            find_dataset_files(args.dataset, args.data_root)
            if args.dataset
            else {"all": (args.json, args.image_root)}
        )
        loaded = {s: load_records(p, root, args.class_attribute) for s, (p, root) in files.items()}
        file_classes = next((d.class_names for d in loaded.values() if d.class_names), None)
        splits = [d.records for d in loaded.values()]
        variants = class_name_variants(splits)
        classes = assign_category_ids(splits, class_names=file_classes)
    except (DatasetFormatError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 1
    total = 0
    for split, d in loaded.items():
        print(f"== {split}: {files[split][0]} ({d.fmt})")
        print("classes: " + ", ".join(classes))
        for key, spellings in variants.items():
            listed = ", ".join(f"{k!r} ({v})" for k, v in spellings.items())
            print(f"class-name variants, trained as one class: {listed}")
        for line in summarize(d.records, classes):
            print(line)
        if split == "all" and args.dataset:
            if args.test_fraction > 0:
                train, test = split_by_name(d.records, args.test_fraction)
                print(
                    f"split by file-name hash (DATASETS.TEST_FRACTION {args.test_fraction:g}): "
                    f"{len(train)} train / {len(test)} test images"
                )
            else:
                print("DATASETS.TEST_FRACTION 0: train and test would be the same images")
        problems = find_problems(d.records, len(classes), decode_images=not args.headers_only)
        total += len(problems)
        if problems:
            print(f"{len(problems)} problems:")
            for _, _, message in problems:
                print(f"  {message}")
        else:
            print("no problems")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
