"""Ground truth beside predictions, drawn with Detectron2's Visualizer."""

import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["side_by_side", "CLASS_COLORS"]

# One colour per class (RGB in [0, 1]); the same for ground truth and predictions.
CLASS_COLORS = [
    (1.0, 0.55, 0.0),
    (0.1, 0.55, 1.0),
    (0.2, 0.85, 0.2),
    (0.9, 0.2, 0.6),
    (0.95, 0.9, 0.1),
    (0.6, 0.3, 0.9),
]


def _color(c):
    return CLASS_COLORS[int(c) % len(CLASS_COLORS)]


def side_by_side(image_rgb, record, predictions, metadata, score_threshold=0.0):
    """
    Args:
        image_rgb (ndarray[H, W, 3] uint8):
        record (dict): dataset dict (its polygons are the ground truth).
        predictions (Instances): with pred_masks, pred_classes and scores, at (H, W).
        metadata: the dataset's metadata (thing_classes).
        score_threshold (float): predictions scoring less are not drawn.

    Returns:
        ndarray[H, 2W + gap, 3] uint8: ground truth (left) and predictions (right).
    """
    annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    gt = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    gt = gt.overlay_instances(
        masks=[a["segmentation"] for a in annos] or None,
        assigned_colors=[_color(a["category_id"]) for a in annos] or None,
        alpha=0.4,
    ).get_image()
    keep = predictions.scores >= score_threshold
    predictions = predictions[keep].to("cpu")
    pred = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    pred = pred.overlay_instances(
        masks=predictions.pred_masks.numpy() if len(predictions) else None,
        assigned_colors=[_color(c) for c in predictions.pred_classes.tolist()] or None,
        alpha=0.4,
    ).get_image()
    gap = np.full((image_rgb.shape[0], 8, 3), 255, dtype=np.uint8)
    return np.concatenate([gt, gap, pred], axis=1)
