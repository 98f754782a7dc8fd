#!/usr/bin/env python
"""
COCO segm + bbox evaluation time: pycocotools (detectron2's path without its compiled ops, and
always with TEST.DETECTIONS_PER_IMAGE != 100) vs faster-coco-eval (SAMCOCOEvaluator's path).

Synthetic tiles like IWP ones (many small objects, predictions a few pixels off, random scores);
both evaluators see the same ground truth and results and must give the same AP.

    python benchmarks/eval_speed.py [--images 130] [--objects 60] [--size 512]

Last line: coco_eval_speedup=<pycocotools seconds / faster-coco-eval seconds>
"""

import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from detectron2.evaluation.coco_evaluation import COCOevalMaxDets  # noqa: E402
from faster_coco_eval import COCOeval_faster  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask))
    r["counts"] = r["counts"].decode("ascii")
    return r


def make_case(images, objects, size, seed=0):
    rng = np.random.default_rng(seed)
    imgs, anns, results = [], [], []
    for i in range(images):
        imgs.append({"id": i, "height": size, "width": size})
        for k in range(objects):
            x, y = rng.integers(0, size - 40, 2)
            w, h = rng.integers(8, 40, 2)
            m = np.zeros((size, size), np.uint8)
            m[y : y + h, x : x + w] = 1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1 + k % 2,
                    "iscrowd": 0,
                    "segmentation": rle(m),
                    "area": float(w * h),
                    "bbox": [float(x), float(y), float(w), float(h)],
                }
            )
            dx, dy = rng.integers(-3, 4, 2)
            p = np.zeros_like(m)
            p[max(y + dy, 0) : y + dy + h, max(x + dx, 0) : x + dx + w] = 1
            results.append(
                {
                    "image_id": i,
                    "category_id": 1 + k % 2,
                    "segmentation": rle(p),
                    "bbox": [float(max(x + dx, 0)), float(max(y + dy, 0)), float(w), float(h)],
                    "score": float(rng.random()),
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": imgs,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    gt.createIndex()
    return gt, results


def run(cls, gt, results, iou_type):
    res = copy.deepcopy(results)
    if iou_type == "segm":
        for r in res:
            r.pop("bbox")
    start = time.perf_counter()
    ev = cls(gt, gt.loadRes(res), iou_type)
    ev.params.maxDets = [1, 10, 1000]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return time.perf_counter() - start, ev.stats[:3]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=130)
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    gt, results = make_case(args.images, args.objects, args.size)
    totals = {"pycocotools": 0.0, "faster-coco-eval": 0.0}
    for iou_type in ("segm", "bbox"):
        stats = {}
        for name, cls in (("pycocotools", COCOevalMaxDets), ("faster-coco-eval", COCOeval_faster)):
            seconds, stats[name] = run(cls, gt, results, iou_type)
            totals[name] += seconds
            print(
                f"{iou_type:<5} {name:<17} {seconds:7.2f} s  AP/AP50/AP75 {np.round(stats[name] * 100, 2).tolist()}"
            )
        diff = np.abs(stats["pycocotools"] - stats["faster-coco-eval"]).max() * 100
        print(f"{iou_type:<5} largest AP difference: {diff:.4f}")
    print(
        f"{args.images} images x {args.objects} objects: pycocotools {totals['pycocotools']:.2f} s, "
        f"faster-coco-eval {totals['faster-coco-eval']:.2f} s"
    )
    print(f"coco_eval_speedup={totals['pycocotools'] / totals['faster-coco-eval']:.1f}")


if __name__ == "__main__":
    main()
