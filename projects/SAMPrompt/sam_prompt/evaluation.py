"""COCO evaluation that stays fast without detectron2's compiled ops (faster-coco-eval)."""

import copy
import itertools
import json
import logging
import numbers
import os

import numpy as np
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

__all__ = ["SAMCOCOEvaluator", "InteractiveEvaluator", "has_compiled_ops", "has_faster_coco_eval"]

logger = logging.getLogger(__name__)


def has_compiled_ops():
    """Whether detectron2 was built with its C++/CUDA ops (e.g. the fast COCOeval)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalEvaluateImages")


def has_faster_coco_eval():
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


class SAMCOCOEvaluator(COCOEvaluator):
    """
    :class:`COCOEvaluator` (same arguments, outputs and results file) whose AP is computed by
    ``faster-coco-eval``'s C++ ``COCOeval_faster`` when ``use_faster_coco_eval`` is set: the same
    numbers as pycocotools, tens of times faster than its Python ``evaluateImg``, also for
    ``max_dets_per_image`` other than 100 (where detectron2 always falls back to pycocotools).
    """

    def __init__(self, *args, use_faster_coco_eval=None, **kwargs):
        super().__init__(*args, **kwargs)
        if use_faster_coco_eval is None:
            use_faster_coco_eval = not has_compiled_ops() and has_faster_coco_eval()
        self._use_faster_coco_eval = use_faster_coco_eval

    def _eval_predictions(self, predictions, img_ids=None):
        if not self._use_faster_coco_eval:
            return super()._eval_predictions(predictions, img_ids)
        if self._do_evaluation and not all(
            isinstance(i, numbers.Integral) for i in self._coco_api.getImgIds()
        ):  # faster-coco-eval takes integer image ids only
            self._logger.info("Image ids are not all integers: evaluating with pycocotools")
            return super()._eval_predictions(predictions, img_ids)
        # The parent maps classes to dataset ids (in place) and writes the results file.
        do_evaluation, self._do_evaluation = self._do_evaluation, False
        try:
            super()._eval_predictions(predictions, img_ids)
        finally:
            self._do_evaluation = do_evaluation
        if not self._do_evaluation:
            return
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._logger.info("Evaluating predictions with faster-coco-eval ...")
        for task in sorted(tasks):
            coco_eval = (
                evaluate_coco(self._coco_api, coco_results, task, img_ids, self._max_dets_per_image)
                if coco_results
                else None  # nothing predicted: detectron2 reports NaN
            )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )


def evaluate_coco(coco_gt, coco_results, iou_type, img_ids=None, max_dets_per_image=None):
    """COCO evaluation of ``coco_results`` by faster-coco-eval (same protocol as pycocotools)."""
    from faster_coco_eval import COCOeval_faster

    if iou_type == "segm":  # mask AP uses mask areas (as detectron2 does)
        coco_results = copy.deepcopy(coco_results)
        for c in coco_results:
            c.pop("bbox", None)
    coco_dt = coco_gt.loadRes(coco_results)
    coco_eval = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=logger.info)
    coco_eval.params.maxDets = list(max_dets_per_image or [1, 10, 100])
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class InteractiveEvaluator(DatasetEvaluator):
    """
    Click metrics of an interactive evaluation (``MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS``): the
    model reports each instance's IoU after 1..C clicks (``interactive_ious``, the first prompt
    being click 1); this evaluator reports mIoU@1/3/5/10, NoC@85, NoC@90 (C when never reached)
    and the share of instances never reaching 90%, appends them to ``metrics.json`` and draws
    mIoU against clicks in ``interactive_miou.png`` in the output folder.
    """

    def __init__(self, dataset_name, output_dir=None, distributed=True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self.reset()

    def reset(self):
        self._ious = []

    def process(self, inputs, outputs):
        for o in outputs:
            if "interactive_ious" not in o:
                raise ValueError(
                    "the model reports no interactive_ious: set MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS"
                )
            self._ious.append(o["interactive_ious"].cpu().numpy())

    def evaluate(self):
        from detectron2.utils import comm

        from .modeling.clicks import interactive_metrics

        ious = self._ious
        if self._distributed:
            comm.synchronize()
            ious = list(itertools.chain(*comm.gather(ious, dst=0)))
            if not comm.is_main_process():
                return {}
        ious = (
            np.concatenate([i for i in ious if len(i)])
            if any(len(i) for i in ious)
            else np.zeros((0, 1))
        )
        metrics = interactive_metrics(ious)
        curve = 100 * ious.mean(0) if len(ious) else np.zeros(0)
        logger.info(
            f"Interactive evaluation of {self._dataset_name} ({len(ious)} instances): "
            + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "instances")
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "metrics.json"), "a") as f:
                f.write(json.dumps({f"interactive/{k}": v for k, v in metrics.items()}) + "\n")
            _plot_curve(
                curve, self._dataset_name, os.path.join(self._output_dir, "interactive_miou.png")
            )
        return {"interactive": metrics}


def _plot_curve(curve, name, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3)
    ax.set_xlabel("clicks (the first prompt is click 1)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"Interactive segmentation: {name}")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
