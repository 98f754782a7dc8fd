#!/usr/bin/env python
"""
Train and evaluate SAMPrompt (and the other models of projects/SAMPrompt) with Detectron2.

A superset of detectron2's own tools/train_net.py: configs that are not SAMPrompt's (Mask R-CNN,
LVIS, semantic or panoptic segmentation, Cityscapes, VOC) train with detectron2's mapper and are
evaluated by the evaluators detectron2's script would build.

    python tools/train_net.py --config-file projects/SAMPrompt/configs/sam_box.yaml \
        --dataset iwp [--data-root data] [--prompt point] [--num-gpus 1] [KEY VALUE ...]
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""

import os
import sys

# Import the project by folder (as Detectron2's own projects are): copying projects/SAMPrompt and
# this file into any Detectron2 checkout is all that is needed.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from detectron2.engine import launch  # noqa: E402

from sam_prompt.checkpoint import SAMCheckpointer  # noqa: E402
from sam_prompt.engine import Trainer, argument_parser, setup  # noqa: E402


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SAMCheckpointer.from_config(cfg, model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
