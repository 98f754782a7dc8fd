#!/usr/bin/env python
"""
Draw ground truth (left) beside predictions (right) over dataset images, as PNG files.

Predictions from a model:
    python tools/visualize.py --config-file CFG --dataset-name iwp_test --output vis/ \
        MODEL.WEIGHTS output/sam_box/model_final.pth
Predictions from a results file written by COCOEvaluator:
    python tools/visualize.py --config-file CFG --dataset-name iwp_test --output vis/ \
        --results output/sam_box/coco_instances_results.json
"""

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402

from sam_prompt.checkpoint import SAMCheckpointer  # noqa: E402
from sam_prompt.config import load_config  # noqa: E402
from sam_prompt.engine import Trainer, register_cfg_datasets  # noqa: E402
from sam_prompt.visualize import model_predictor, write_side_by_side  # noqa: E402


def instances_from_results(results, record, meta):
    """COCO results of one image -> Instances (pred_masks, pred_classes, scores)."""
    h, w = record["height"], record["width"]
    to_contiguous = getattr(meta, "thing_dataset_id_to_contiguous_id", None) or {}
    inst = Instances((h, w))
    if results:
        masks = np.stack([mask_util.decode(r["segmentation"]).astype(bool) for r in results])
    else:
        masks = np.zeros((0, h, w), dtype=bool)
    inst.pred_masks = torch.from_numpy(masks)
    inst.pred_classes = torch.tensor(
        [to_contiguous.get(r["category_id"], r["category_id"]) for r in results], dtype=torch.int64
    )
    inst.scores = torch.tensor([r["score"] for r in results], dtype=torch.float32)
    return inst


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset-name", help="default: the config's first DATASETS.TEST")
    parser.add_argument(
        "--results", help="coco_instances_results.json to draw instead of running the model"
    )
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--max-images", type=int, default=20)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts)
    register_cfg_datasets(cfg)
    name = args.dataset_name or cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    records = DatasetCatalog.get(name)[: args.max_images]

    if args.results:
        with open(args.results) as f:
            by_image = defaultdict(list)
            for r in json.load(f):
                by_image[r["image_id"]].append(r)
        predict = lambda r: instances_from_results(
            by_image.get(r["image_id"], []), r, meta
        )  # noqa: E731
    else:
        model = Trainer.build_model(cfg)
        SAMCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
        predict = model_predictor(cfg, model)

    write_side_by_side(records, predict, meta, args.output, args.score_threshold)
    print(f"wrote {len(records)} images to {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
