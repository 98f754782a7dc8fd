#!/usr/bin/env python
"""
Does iterative training (MODEL.SAM.ITERATIVE) make corrective clicks work? Trains the demo model
(projects/SAMPrompt/configs/sam_demo_cpu.yaml, synthetic IWP tiles, the demo's 1000 iterations)
with single prompts, then continues it with iterative rounds for --iterative-iters iterations
(each iterative step decodes every prompt once per round, so it costs rounds x a single step:
the default 3 click + 1 mask-only rounds for 300 iterations take about the demo's time again), and
evaluates both interactively (the first prompt, then up to 19 corrective clicks at the interior
of the largest error region, with the previous logits as mask prompt).

    python benchmarks/interactive_clicks.py [--prompt point|box] [--iters 1000]
        [--iterative-iters 300] [--click-rounds 3] [--mask-only-rounds 1] [KEY VALUE ...]

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
    parser.add_argument("--iterative-iters", type=int, default=300)
    parser.add_argument("--click-rounds", type=int, default=3)
    parser.add_argument("--mask-only-rounds", type=int, default=1)
    parser.add_argument("--output", default="output/interactive_clicks")
    parser.add_argument("--config-file", default=DEMO)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    setup_logger(name="sam_prompt")
    rows = {}
    single_weights = os.path.join(args.output, f"{args.prompt}_single", "model_final.pth")
    for name, iterative in (("single", False), ("iterative", True)):
        iters = args.iterative_iters if iterative else args.iters
        opts = [
            "MODEL.SAM.PROMPT.TYPE", args.prompt,
            "MODEL.SAM.ITERATIVE.ENABLED", iterative,
            "SOLVER.MAX_ITER", iters,
            "SOLVER.STEPS", (int(0.8 * iters),),
            "OUTPUT_DIR", os.path.join(args.output, f"{args.prompt}_{name}"),
            "TEST.EVAL_PERIOD", 0,
        ]  # fmt: skip
        if iterative:  # continues the single-prompt model
            opts += [
                "MODEL.WEIGHTS", single_weights,
                "SOLVER.BASE_LR", 5e-4,
                "SOLVER.WARMUP_ITERS", 20,
                "MODEL.SAM.ITERATIVE.CLICK_ROUNDS", args.click_rounds,
                "MODEL.SAM.ITERATIVE.MASK_ONLY_ROUNDS", args.mask_only_rounds,
            ]  # fmt: skip
        cfg = load_config(args.config_file, opts + list(args.opts))
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
