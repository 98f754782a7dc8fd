"""Prompts from a detector: a COCO results file, or a Detectron2 detector run in the same process."""

import json
import logging
import os
from collections import defaultdict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["load_detections", "build_detector"]

logger = logging.getLogger(__name__)


def load_detections(results_file, dataset_name, score_threshold=0.0):
    """
    Read a COCO results file into {image_id: (boxes XYXY ndarray[N, 4], classes ndarray[N],
    scores ndarray[N])}, classes mapped to contiguous ids through the dataset's metadata.
    """
    try:
        with open(results_file) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"detector results file not found: {results_file}") from None
    except ValueError as e:
        raise ValueError(f"detector results file {results_file} is not JSON: {e}") from e
    if not isinstance(results, list) or any(
        not {"image_id", "bbox", "score", "category_id"} <= set(r) for r in results[:1]
    ):
        raise ValueError(
            f"{results_file}: expected a COCO results list of {{image_id, category_id, bbox, score}}"
        )
    meta = MetadataCatalog.get(dataset_name) if dataset_name else None
    to_contiguous = getattr(meta, "thing_dataset_id_to_contiguous_id", None) or {}
    per_image = defaultdict(list)
    for i, r in enumerate(results):
        if r["score"] < score_threshold:
            continue
        if to_contiguous and r["category_id"] not in to_contiguous:
            raise ValueError(
                f"{results_file}, result {i}: category_id {r['category_id']} is not a class of {dataset_name}"
            )
        box = BoxMode.convert(list(r["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        per_image[r["image_id"]].append(
            (box, to_contiguous.get(r["category_id"], r["category_id"]), r["score"])
        )
    out = {}
    for image_id, dets in per_image.items():
        boxes, classes, scores = zip(*dets)
        out[image_id] = (
            np.array(boxes, dtype=np.float64),
            np.array(classes, dtype=np.int64),
            np.array(scores, dtype=np.float32),
        )
    logger.info(
        f"Loaded {sum(len(v[0]) for v in out.values())} detections for {len(out)} images from {results_file}"
    )
    return out


def build_detector(config_file, weights, device):
    """
    A Detectron2 detector (any meta-architecture returning pred_boxes/pred_classes/scores) in
    eval mode with frozen weights, and the resize its test-time mapper would apply.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import transforms as T
    from detectron2.modeling import build_model

    from .config import load_config

    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"detector config not found: {config_file} (MODEL.SAM.DETECTOR.CONFIG_FILE)"
        )
    cfg = load_config(config_file, ["MODEL.DEVICE", device])
    model = build_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    else:
        logger.warning("MODEL.SAM.DETECTOR.WEIGHTS is empty: the detector has random weights")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return model, resize, cfg.INPUT.FORMAT


def run_detector(detector, resize, detector_format, batched_inputs, input_format):
    """Detections of each input image, in that image's pixel coordinates (the mapper's frame)."""
    inputs = []
    for x in batched_inputs:
        img = x["image"]
        h, w = img.shape[-2:]
        arr = img.permute(1, 2, 0).cpu().numpy()
        if detector_format != input_format:
            arr = arr[:, :, ::-1]
        arr = resize.get_transform(arr).apply_image(arr)
        inputs.append(
            {
                "image": torch.as_tensor(np.ascontiguousarray(arr.transpose(2, 0, 1))),
                "height": h,
                "width": w,
            }
        )
    with torch.no_grad():
        return [o["instances"] for o in detector(inputs)]
