#!/usr/bin/env python
"""
One table, one dataset, one CPU budget: does fine-tuned SAM beat a supervised detector, does SAM
refine a detector's masks, and does it beat trivial masks drawn from the prompt box? Trains and
evaluates (COCOEvaluator, the same for every row):

  1. Mask R-CNN with an MViTv2 backbone (no prompts at test time);
  2. SAM fine-tuned with ground-truth box prompts;
  3. SAM of row 2 fine-tuned further with ground-truth point prompts (the point recipe);
  4. SAM of row 2 prompted by the boxes of row 1 (no ground truth at test time);
  5. the filled prompt box and 6. the ellipse inscribed in it (ground-truth boxes; trivial floors).

    python tools/compare.py --dataset iwp-val --data-root ../shared/data [--output output/compare]
        [--maskrcnn-config ...] [--sam-config ...] [--point-config ...] [--maskrcnn-iters N]
        [--sam-iters N] [--point-iters N] [KEY VALUE ...]

KEY VALUE overrides apply to every row (e.g. DATASETS.SKIP_INVALID True). Each run lives in its
own folder under --output and is reused (or resumed) when run again; the table gives the training
time of each row (summed over resumed runs). AP and AP75 come first: with ground-truth boxes as
prompts AP50 is near 100 for any mask that roughly fills its box. SAM rows are evaluated without
test-time augmentation (MODEL.SAM.TEST_AUG ''), which would take the run past 30 minutes on 2 cores
(40 min with d4); give MODEL.SAM.TEST_AUG d4 to have it.
"""

import argparse
import json
import logging
import math
import os
import sys
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from detectron2.utils.logger import setup_logger  # noqa: E402

from sam_prompt.config import load_config  # noqa: E402
from sam_prompt.engine import Trainer, register_cfg_datasets, train_and_test  # noqa: E402

CONFIGS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt", "configs"
)
METRICS = ("AP", "AP75", "AP50")


def make_cfg(config_file, args, out, *opts):
    return load_config(
        config_file,
        [
            "DATASETS.TRAIN",
            (f"{args.dataset}_train",),
            "DATASETS.TEST",
            (f"{args.dataset}_test",),
            "DATASETS.ROOT",
            args.data_root,
            "OUTPUT_DIR",
            os.path.join(args.output, out),
            "TEST.EVAL_PERIOD",
            0,
            *opts,
        ],
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="iwp_synthetic")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--output", default="output/compare")
    parser.add_argument(
        "--maskrcnn-config", default=os.path.join(CONFIGS, "mask_rcnn_instant_test.yaml")
    )
    parser.add_argument("--sam-config", default=os.path.join(CONFIGS, "sam_small_cpu.yaml"))
    parser.add_argument(
        "--point-config",
        default=os.path.join(CONFIGS, "sam_small_point_cpu.yaml"),
        help="point-prompt fine-tuning of the box model (its MODEL.WEIGHTS is row 2's model)",
    )
    parser.add_argument("--maskrcnn-iters", type=int, default=200)
    parser.add_argument("--sam-iters", type=int, default=900)
    parser.add_argument(
        "--point-iters", type=int, default=300, help="point-prompt fine-tuning of the box model"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every row")
    args = parser.parse_args(argv)
    start = time.time()
    setup_logger(name="sam_prompt")
    setup_logger()

    rows = []

    def record(name, prompts, results, seconds=None):
        rows.append((name, prompts, seconds, {k: results["segm"][k] for k in METRICS}))
        print(
            f"[compare] {name}: segm AP {results['segm']['AP']:.1f} ({time.time() - start:.0f} s)",
            flush=True,
        )

    def iters(n):
        return [
            "SOLVER.MAX_ITER",
            n,
            "SOLVER.STEPS",
            (int(n * 0.8),),
            "SOLVER.CHECKPOINT_PERIOD",
            max(n // 2, 1),
        ]

    def cfg(config_file, out, *opts):
        return make_cfg(config_file, args, out, "MODEL.SAM.TEST_AUG", "", *opts, *args.opts)

    mrcnn = cfg(args.maskrcnn_config, "mask_rcnn", *iters(args.maskrcnn_iters))
    register_cfg_datasets(mrcnn)
    _, res, secs = train_and_test(mrcnn)
    record("Mask R-CNN (MViTv2)", "none", res, secs)
    detections = os.path.join(mrcnn.OUTPUT_DIR, "coco_instances_results.json")

    sam_box = cfg(
        args.sam_config, "sam_box", "MODEL.SAM.PROMPT.TYPE", "box", *iters(args.sam_iters)
    )
    box_model, res, secs = train_and_test(sam_box)
    record("SAM, box prompts", "ground-truth boxes", res, secs)

    # Point prompts start from row 2's weights, as SAM's point prompting starts from its
    # pretraining: a SAM trained from random weights with one point collapses to empty masks.
    sam_point = cfg(
        args.point_config,
        "sam_point",
        "MODEL.SAM.PROMPT.TYPE",
        "point",
        "MODEL.WEIGHTS",
        os.path.join(sam_box.OUTPUT_DIR, "model_final.pth"),
        *iters(args.point_iters),
    )
    _, res, secs = train_and_test(sam_point)
    record("SAM, point prompts (from row 2)", "ground-truth points", res, secs)

    sam_det = cfg(
        args.sam_config,
        "sam_detector",
        "MODEL.SAM.PROMPT.TYPE",
        "box",
        "MODEL.SAM.PROMPT.SOURCE",
        "detector",
        "MODEL.SAM.DETECTOR.RESULTS_FILE",
        detections,
    )
    record("SAM prompted by Mask R-CNN", "detector boxes", Trainer.test(sam_det, box_model))

    for arch, name in (
        ("FilledPromptBox", "filled prompt box"),
        ("InscribedEllipse", "ellipse in prompt box"),
    ):
        base = cfg(args.sam_config, arch, "MODEL.META_ARCHITECTURE", arch)
        record(
            f"{name} (trivial)", "ground-truth boxes", Trainer.test(base, Trainer.build_model(base))
        )

    header = ["method", "prompts at test time", "train+eval s", *METRICS]
    lines = [
        f"segm AP on {args.dataset}_test (COCOEvaluator; Mask R-CNN {args.maskrcnn_iters} iterations, "
        f"SAM {args.sam_iters} iterations (box), then {args.point_iters} more (point); "
        f"{time.time() - start:.0f} s in all)",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]

    def fmt(v):  # nan: no predictions at all
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"

    for name, prompts, secs, m in rows:
        cells = [
            name,
            prompts,
            "-" if secs is None else f"{secs:.0f}",
            *(fmt(m[k]) for k in METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "comparison.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "comparison.json"), "w") as f:
        clean = lambda v: None if math.isnan(v) else v  # noqa: E731
        json.dump(
            [
                {
                    "method": n,
                    "prompts": p,
                    "train_seconds": t,
                    **{k: clean(v) for k, v in m.items()},
                }
                for n, p, t, m in rows
            ],
            f,
            indent=1,
        )
    print(f"\nwritten to {os.path.abspath(args.output)}/comparison.md")
    logging.shutdown()


if __name__ == "__main__":
    main()
