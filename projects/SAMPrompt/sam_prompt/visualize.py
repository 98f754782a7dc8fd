"""Ground truth beside predictions, drawn with Detectron2's Visualizer."""

import os

import numpy as np
import torch
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image
from tqdm import tqdm

from .data.images import read_image

__all__ = ["side_by_side", "write_side_by_side", "model_predictor", "CLASS_COLORS"]

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


def model_predictor(cfg, model):
    """record -> predicted Instances at the record's size, through the model's test-time mapper."""
    from detectron2.data import DatasetMapper

    from .mapper import SAMDatasetMapper
    from .modeling import uses_prompts

    mapper = (
        SAMDatasetMapper(cfg, is_train=False)
        if uses_prompts(cfg)
        else DatasetMapper(cfg, is_train=False)
    )
    model.eval()

    def predict(record):
        with torch.no_grad():
            return model([mapper(record)])[0]["instances"]

    return predict


def write_side_by_side(records, predict, metadata, folder, score_threshold=0.0):
    """
    Draw ground truth | prediction for each record into ``folder/<image name>.png``.

    Args:
        predict (callable): record -> Instances at the record's (height, width).

    Returns:
        list[str]: the files written.
    """
    os.makedirs(folder, exist_ok=True)
    paths = []
    for record in tqdm(records, desc="drawing"):
        image = read_image(record["file_name"], format="RGB")
        drawn = side_by_side(image, record, predict(record), metadata, score_threshold)
        path = os.path.join(
            folder, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png"
        )
        Image.fromarray(drawn).save(path)
        paths.append(path)
    return paths
