"""COCO evaluation that stays fast without detectron2's compiled ops (faster-coco-eval)."""

import copy
import itertools
import logging
import numbers

from detectron2.evaluation import COCOEvaluator

__all__ = ["SAMCOCOEvaluator", "has_compiled_ops", "has_faster_coco_eval"]

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
