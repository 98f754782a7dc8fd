"""Dataset mapper: Detectron2 dataset dicts -> model inputs with prompts."""

import copy
import logging
from collections import Counter

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks, polygons_to_bitmask
from pycocotools import mask as mask_util
from shapely.geometry import Polygon

from .prompts import box_jitter, eval_rng, point_prompts

__all__ = ["SAMDatasetMapper", "InvalidRecordError", "annotation_problem", "bbox_xywh"]

logger = logging.getLogger(__name__)


class InvalidRecordError(ValueError):
    """A dataset record (image or annotation) that cannot be used."""


def _record_name(d):
    return f"{d.get('file_name', '<no file_name>')} (image_id={d.get('image_id', '?')})"


def annotation_problem(anno):
    """Return why an annotation is unusable, or None."""
    seg = anno.get("segmentation")
    if seg is None:
        return "no segmentation"
    if isinstance(seg, dict):  # RLE
        return None if mask_util.area(_rle(seg)) > 0 else "empty RLE mask"
    if not isinstance(seg, list) or len(seg) == 0:
        return "empty segmentation"
    for p in seg:
        if len(p) % 2 or len(p) < 6:
            return f"polygon with {len(p) / 2:g} points (need >= 3)"
    if "bbox" in anno:
        x0, y0, w, h = bbox_xywh(anno)
        if w <= 0 or h <= 0:
            return f"zero-area box {list(anno['bbox'])}"
    area = sum(Polygon(np.asarray(p, dtype=np.float64).reshape(-1, 2)).area for p in seg)
    return None if area > 0 else "zero-area polygon"


def bbox_xywh(anno):
    """The annotation's box as XYWH_ABS."""
    return BoxMode.convert(list(anno["bbox"]), anno.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYWH_ABS)


def _rle(seg):
    if isinstance(seg["counts"], list):  # uncompressed RLE
        seg = mask_util.frPyObjects(seg, *seg["size"])
    return seg


def _local_mask(polygons, image_size):
    """
    Rasterise transformed polygons of one instance inside the image.

    Returns:
        (mask, box): the bool mask of its tight integer box and the box (XYXY), or (None, None)
        when nothing of the instance is left inside the image.
    """
    if len(polygons) == 0:  # a crop removed every part
        return None, None
    h, w = image_size
    pts = np.concatenate(polygons)
    x0 = int(np.floor(max(pts[:, 0].min(), 0)))
    y0 = int(np.floor(max(pts[:, 1].min(), 0)))
    x1 = int(np.ceil(min(pts[:, 0].max(), w)))
    y1 = int(np.ceil(min(pts[:, 1].max(), h)))
    if x1 <= x0 or y1 <= y0:
        return None, None
    shift = np.array([x0, y0])
    mask = polygons_to_bitmask([(p - shift).ravel() for p in polygons], y1 - y0, x1 - x0)
    return _tighten(mask, x0, y0)


def _tighten(mask, x0, y0):
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None, None
    r0, r1 = np.nonzero(rows)[0][[0, -1]]
    c0, c1 = np.nonzero(cols)[0][[0, -1]]
    box = np.array([x0 + c0, y0 + r0, x0 + c1 + 1, y0 + r1 + 1], dtype=np.float64)
    return mask[r0 : r1 + 1, c0 : c1 + 1], box


class SAMDatasetMapper:
    """
    Map a Detectron2 dataset dict to the input of :class:`SAMPrompt`.

    1. Read the image (an unreadable file or a size other than the record's is an error naming
       the file).
    2. Apply the augmentations to the image and the instance polygons (or RLE masks).
    3. Drop instances that the augmentations moved out of the image; in training, when none is
       left, try another crop (``crop_retries`` times), then return None so that the data loader
       draws another image. Both are counted in the log.
    4. Make prompts: training prompts are random (jittered boxes; points sampled inside the
       mask), evaluation prompts are deterministic.

    With ``detections`` (evaluation only), the prompts are the detector's boxes of the image
    instead, with its classes (``gt_classes``) and scores (``det_scores``).

    Instances are kept at evaluation too (prompts come from them). The output ``instances`` hold
    ``gt_boxes`` (tight boxes of the visible masks), ``gt_classes``, ``gt_masks``,
    ``prompt_boxes`` (Boxes), ``prompt_points`` (N, P, 2) and ``prompt_labels`` (N, P).
    """

    @configurable
    def __init__(
        self,
        is_train,
        *,
        augmentations,
        image_format,
        prompt_type="box",
        num_positive_points=1,
        num_negative_points=0,
        box_jitter_std=0.1,
        box_jitter_max_pixels=20.0,
        crop_retries=10,
        skip_invalid=False,
        detections=None,
    ):
        if prompt_type not in ("box", "point"):
            raise ValueError(f"prompt type must be 'box' or 'point', got {prompt_type!r}")
        if prompt_type == "point" and num_positive_points < 1:
            raise ValueError("point prompts need at least one positive point per instance")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.prompt_type = prompt_type
        self.num_positive_points = num_positive_points if prompt_type == "point" else 0
        self.num_negative_points = num_negative_points if prompt_type == "point" else 0
        self.box_jitter_std = box_jitter_std
        self.box_jitter_max_pixels = box_jitter_max_pixels
        self.crop_retries = crop_retries
        self.skip_invalid = skip_invalid
        if detections is not None and (is_train or prompt_type != "box"):
            raise ValueError("detector prompts are boxes, for evaluation (not training)")
        self.detections = detections
        self.counts = Counter()
        logger.info(f"[SAMDatasetMapper] is_train={is_train} augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True, dataset_name=None):
        augs = utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        p = cfg.MODEL.SAM.PROMPT
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "prompt_type": p.TYPE,
            "num_positive_points": p.NUM_POSITIVE_POINTS,
            "num_negative_points": p.NUM_NEGATIVE_POINTS,
            "box_jitter_std": p.BOX_JITTER_STD,
            "box_jitter_max_pixels": p.BOX_JITTER_MAX_PIXELS,
            "crop_retries": cfg.INPUT.CROP.MAX_RETRIES,
            "skip_invalid": cfg.DATASETS.SKIP_INVALID,
            "detections": _detections_from_cfg(cfg, is_train, dataset_name),
        }

    # ------------------------------------------------------------------------------------------
    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = self._read_image(d)
        if self.detections is not None:
            return self._with_detections(d, image)
        annos = self._valid_annotations(d)

        attempts = 1 + (self.crop_retries if self.is_train else 0)
        for attempt in range(attempts):
            aug_input = T.AugInput(image)
            transforms = self.augmentations(aug_input)
            instances, masks = self._transform_instances(annos, transforms, aug_input.image.shape[:2])
            if len(instances) or not self.is_train:
                break
            self._count("training crops that left no instance (re-cropped)")
        if self.is_train and len(instances) == 0:
            self._count(
                f"training images with no instance after {attempts} crops (another image drawn)"
            )
            return None

        img = aug_input.image
        d["image"] = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
        self._add_prompts(instances, masks, d)
        d["instances"] = instances
        d.pop("annotations", None)
        d.pop("sem_seg_file_name", None)
        return d

    # ------------------------------------------------------------------------------------------
    def _count(self, what, record=None):
        """Count an event and log it at its 1st, 2nd, 4th, 8th, ... occurrence."""
        self.counts[what] += 1
        n = self.counts[what]
        if n & (n - 1) == 0:
            suffix = f" Last: {record}." if record else ""
            logger.warning(f"[SAMDatasetMapper] {what}: {n} so far.{suffix}")

    def _read_image(self, d):
        name = _record_name(d)
        try:
            image = utils.read_image(d["file_name"], format=self.image_format)
        except (OSError, ValueError) as e:  # missing, unreadable or not an image
            raise InvalidRecordError(f"Cannot read image {name}: {e}") from e
        h, w = image.shape[:2]
        if (d.get("height", h), d.get("width", w)) != (h, w):
            raise InvalidRecordError(
                f"Image {name} is {w}x{h} (WxH) but its record says "
                f"{d.get('width')}x{d.get('height')}"
            )
        d.setdefault("height", h)
        d.setdefault("width", w)
        return image

    def _valid_annotations(self, d):
        annos = []
        for i, anno in enumerate(d.get("annotations", [])):
            if anno.get("iscrowd", 0):
                continue
            problem = annotation_problem(anno)
            if problem is None:
                annos.append(anno)
                continue
            where = f"{_record_name(d)}, annotation {i}"
            if not self.skip_invalid:
                raise InvalidRecordError(
                    f"Invalid annotation in {where}: {problem}. Fix the data, or set "
                    "DATASETS.SKIP_INVALID True to skip such records."
                )
            self._count(f"skipped invalid annotations ({problem})", where)
        return annos

    def _transform_instances(self, annos, transforms, image_size):
        h, w = image_size
        classes, polys_out, masks, boxes = [], [], [], []
        for anno in annos:
            seg = anno["segmentation"]
            if isinstance(seg, dict):  # RLE: transform the full-size bitmask
                full = transforms.apply_segmentation(mask_util.decode(_rle(seg)).astype(np.uint8))
                local, box = _tighten(full.astype(bool), 0, 0)
                polys = None
            else:
                polys = transforms.apply_polygons(
                    [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg]
                )
                local, box = _local_mask(polys, image_size)
            if local is None:  # moved out of the image by a crop
                continue
            classes.append(anno["category_id"])
            polys_out.append(polys)
            masks.append(local)
            boxes.append(box)

        instances = Instances((h, w))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_boxes = Boxes(torch.as_tensor(np.array(boxes).reshape(-1, 4), dtype=torch.float32))
        if any(p is None for p in polys_out):  # some RLE masks: all instances as bitmasks
            full = [_paste(m, b, h, w) for m, b in zip(masks, boxes)]
            full = np.stack(full) if full else np.zeros((0, h, w), dtype=bool)
            instances.gt_masks = BitMasks(torch.as_tensor(full))
        else:
            instances.gt_masks = PolygonMasks([[p.ravel() for p in ps] for ps in polys_out])
        return instances, masks

    def _with_detections(self, d, image):
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        h, w = aug_input.image.shape[:2]
        boxes, classes, scores = self.detections.get(
            d.get("image_id"), (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.float32))
        )
        boxes = transforms.apply_box(boxes).clip(min=0) if len(boxes) else boxes
        boxes = np.minimum(boxes, [w, h, w, h])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.as_tensor(boxes[keep], dtype=torch.float32))
        instances.prompt_boxes = instances.gt_boxes.clone()
        instances.gt_classes = torch.as_tensor(classes[keep], dtype=torch.int64)
        instances.det_scores = torch.as_tensor(scores[keep], dtype=torch.float32)
        n = int(keep.sum())
        instances.prompt_points = torch.zeros((n, 0, 2))
        instances.prompt_labels = torch.zeros((n, 0), dtype=torch.int64)
        d["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        d["instances"] = instances
        d.pop("annotations", None)
        return d

    def _add_prompts(self, instances, masks, d):
        n = len(instances)
        boxes = instances.gt_boxes.tensor.numpy().astype(np.float64)
        h, w = instances.image_size
        P = self.num_positive_points + self.num_negative_points
        points = np.zeros((n, P, 2), dtype=np.float32)
        labels = np.zeros((n, P), dtype=np.int64)
        if self.is_train:
            rng = np.random.default_rng(np.random.randint(2**31))
        for i in range(n):
            if not self.is_train:
                rng = eval_rng(d.get("file_name", ""), i)
            if self.is_train and self.prompt_type == "box":
                boxes[i] = box_jitter(
                    boxes[i], rng, self.box_jitter_std, self.box_jitter_max_pixels, (h, w)
                )
            if P:
                points[i], labels[i] = point_prompts(
                    masks[i],
                    instances.gt_boxes.tensor[i].numpy(),
                    self.num_positive_points,
                    self.num_negative_points,
                    rng,
                    deterministic_first=not self.is_train,
                )
        instances.prompt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        instances.prompt_points = torch.as_tensor(points)
        instances.prompt_labels = torch.as_tensor(labels)


def _detections_from_cfg(cfg, is_train, dataset_name):
    det = cfg.MODEL.SAM.DETECTOR
    if is_train or cfg.MODEL.SAM.PROMPT.SOURCE != "detector" or not det.RESULTS_FILE:
        return None
    from .detections import load_detections

    return load_detections(det.RESULTS_FILE, dataset_name, det.SCORE_THRESHOLD)


def _paste(local, box, h, w):
    full = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box.astype(int)
    full[y0:y1, x0:x1] = local
    return full
