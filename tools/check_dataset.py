#!/usr/bin/env python
"""
Check a dataset before training: statistics and every problem found, each naming file and record.

    python tools/check_dataset.py --dataset NAME [--data-root data] [--class-attribute ATTR]
    python tools/check_dataset.py --json path/to/via_region_data.json [--image-root DIR]

Exit status 1 when there are problems.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt"))

from sam_prompt.data import (  # noqa: E402
    assign_category_ids,
    find_dataset_files,
    find_problems,
    load_records,
    summarize,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="NAME", help="a dataset folder in --data-root")
    src.add_argument("--json", metavar="FILE", help="one dataset file (Detectron2, COCO or VIA)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--image-root", help="folder of the images of --json (default: its folder)")
    parser.add_argument("--class-attribute", help="VIA region attribute holding the class")
    parser.add_argument("--decode", action="store_true", help="decode every image (finds truncated files)")
    args = parser.parse_args(argv)

    if args.dataset:
        files = find_dataset_files(args.dataset, args.data_root)
    else:
        files = {"all": (args.json, args.image_root)}
    loaded = {s: load_records(p, root, args.class_attribute) for s, (p, root) in files.items()}
    file_classes = next((c for _, _, c in loaded.values() if c), None)
    classes = assign_category_ids([r for r, _, _ in loaded.values()], class_names=file_classes)
    total = 0
    for split, (records, fmt, _) in loaded.items():
        print(f"== {split}: {files[split][0]} ({fmt})")
        print("classes: " + ", ".join(classes))
        for line in summarize(records, classes):
            print(line)
        problems = find_problems(records, len(classes), decode_images=args.decode)
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
