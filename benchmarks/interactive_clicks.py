#!/usr/bin/env python
"""
Does iterative training (MODEL.SAM.ITERATIVE) make corrective clicks work? Trains the demo model
(projects/SAMPrompt/configs/sam_demo_cpu.yaml, synthetic IWP tiles, the demo's iteration budget)
twice, with single-prompt and with iterative training, and evaluates both interactively (the
first prompt, then up to 19 corrective clicks at the interior of the largest error region).

    python benchmarks/interactive_clicks.py [--prompt point|box] [--iters 1000] [KEY VALUE ...]

KEY VALUE overrides apply to both runs (e.g. DATASETS.TRAIN/TEST and DATASETS.ROOT for real data).
Last line: noc90_iterative=<x> noc90_single=<y> miou5_minus_miou1=<z (iterative model)>
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))

from detectron2.utils.logger import setup_logger  # noqa: E402

from sam_prompt.config import load_config  # noqa: E402
from sam_prompt.engine import Trainer, register_cfg_datasets, train_and_test  # noqa: E402

DEMO = os.path.join(HERE, "..", "projects", "SAMPrompt", "configs", "sam_demo_cpu.yaml")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", default="point", choices=("point", "box"))
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--output", default="output/interactive_clicks")
    parser.add_argument("--config-file", default=DEMO)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    setup_logger(name="sam_prompt")
    rows = {}
    for name, iterative in (("single", False), ("iterative", True)):
        cfg = load_config(
            args.config_file,
            [
                "MODEL.SAM.PROMPT.TYPE",
                args.prompt,
                "MODEL.SAM.ITERATIVE.ENABLED",
                iterative,
                "SOLVER.MAX_ITER",
                args.iters,
                "SOLVER.STEPS",
                (int(0.8 * args.iters),),
                "OUTPUT_DIR",
                os.path.join(args.output, f"{args.prompt}_{name}"),
                "TEST.EVAL_PERIOD",
                0,
                *args.opts,
            ],
        )
        register_cfg_datasets(cfg)
        start = time.time()
        model, _, seconds = train_and_test(cfg)
        eval_cfg = cfg.clone()
        eval_cfg.defrost()
        eval_cfg.MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS = 20
        eval_cfg.freeze()
        model.interactive_clicks = 20
        results = Trainer.test(eval_cfg, model)
        rows[name] = dict(results["interactive"], AP=results["segm"]["AP"], train_s=seconds)
        print(f"[{name}] {time.time() - start:.0f} s: {rows[name]}", flush=True)
    keys = [
        "train_s",
        "AP",
        "mIoU@1",
        "mIoU@3",
        "mIoU@5",
        "mIoU@10",
        "NoC@85",
        "NoC@90",
        "never@90",
    ]
    print(f"\n{args.prompt} prompts, {cfg.DATASETS.TEST[0]}: " + " | ".join(keys))
    for name, r in rows.items():
        print(f"{name:<10} " + " | ".join(f"{r[k]:.1f}" for k in keys))
    it, single = rows["iterative"], rows["single"]
    print(
        f"noc90_iterative={it['NoC@90']:.2f} noc90_single={single['NoC@90']:.2f} "
        f"miou5_minus_miou1={it['mIoU@5'] - it['mIoU@1']:.1f}"
    )


if __name__ == "__main__":
    main()
