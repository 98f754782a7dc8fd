"""Dataset mapper: Detectron2 dataset dicts -> model inputs with prompts."""

import copy
import logging
from collections import Counter

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks, polygons_to_bitmask
from pycocotools import mask as mask_util

from .data.check import InvalidRecordError, annotation_problem, record_name, rle, size_problem
from .data.images import read_image
from .modeling.build_sam import sam_arch_from_cfg
from .prompts import GroundTruthPrompts, prompt_instances, validate_prompt_source
from .transforms import ResizeLongestSide, build_augmentation, without_random_flip

__all__ = ["SAMDatasetMapper", "detector_train_mapper", "mask_targets"]

logger = logging.getLogger(__name__)


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
    box = np.array([x0 + c0, y0 + r0, x0 + c1 + 1, y0 + r1 + 1], dtype=np.int64)
    return mask[r0 : r1 + 1, c0 : c1 + 1], box


def mask_targets(masks, boxes, image_size, stride):
    """
    Instance masks on the mask decoder's grid: a cell is foreground when at least half of its
    ``stride`` x ``stride`` pixels are.

    Args:
        masks (list[ndarray[h, w] bool]): each instance's mask within its box.
        boxes (ndarray[N, 4] int): XYXY boxes of the masks.
        image_size (tuple[int, int]): (H, W) of the image.
        stride (int): image pixels per decoder cell.

    Returns:
        Tensor[N, ceil(H / stride), ceil(W / stride)] bool
    """
    H, W = image_size
    gh, gw = -(-H // stride), -(-W // stride)
    out = np.zeros((len(masks), gh, gw), dtype=bool)
    for i, (m, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        bx0, by0 = x0 // stride, y0 // stride
        bx1, by1 = -(-x1 // stride), -(-y1 // stride)
        canvas = np.zeros(((by1 - by0) * stride, (bx1 - bx0) * stride), dtype=np.float32)
        oy, ox = y0 - by0 * stride, x0 - bx0 * stride
        canvas[oy : oy + m.shape[0], ox : ox + m.shape[1]] = m
        cells = canvas.reshape(by1 - by0, stride, bx1 - bx0, stride).mean(axis=(1, 3))
        out[i, by0:by1, bx0:bx1] = cells >= 0.5
    return torch.from_numpy(out)


class SAMDatasetMapper:
    """
    Map a Detectron2 dataset dict to the input of :class:`SAMPrompt`.

    1. Read the image (:func:`sam_prompt.data.images.read_image`: EXIF applied, 16-bit images
       stretched, not clipped). An unreadable file or a size other than the record's is an error
       naming the file; in training with ``skip_invalid`` it is a counted skip.
    2. Apply the augmentations, then :class:`ResizeLongestSide` to the encoder size, to the image
       and the instance polygons (or RLE masks): one transform for image, masks and prompts.
    3. Drop instances that the augmentations moved out of the image; in training, when none is
       left, try another crop (``crop_retries`` times), then return None so that the data loader
       draws another image. Both are counted in the log.
    4. Make prompts (:class:`sam_prompt.prompts.GroundTruthPrompts`), or take them from a
       detector's results (``detections``, evaluation only).
    5. In training, rasterise the loss targets once, on the mask decoder's grid
       (``gt_mask_targets``).

    Instances are kept at evaluation too (prompts come from them). The output ``instances`` hold
    the prompt fields of :func:`sam_prompt.prompts.prompt_instances` and, for ground-truth
    prompts, ``gt_boxes`` (tight boxes of the visible masks), ``gt_classes`` and ``gt_masks``.
    """

    @configurable
    def __init__(
        self,
        is_train,
        *,
        augmentations,
        image_format,
        prompts,
        target_stride=4,
        crop_retries=10,
        skip_invalid=False,
        detections=None,
    ):
        """
        Args:
            is_train (bool):
            augmentations (list[Augmentation]): ending with the resize to the encoder size.
            image_format (str): INPUT.FORMAT.
            prompts (GroundTruthPrompts):
            target_stride (int): image pixels per cell of the mask decoder's output.
            crop_retries (int): see INPUT.CROP.MAX_RETRIES.
            skip_invalid (bool): DATASETS.SKIP_INVALID.
            detections (dict): image_id -> (boxes XYXY, classes, scores) of a detector
                (:func:`sam_prompt.detections.load_detections`), replacing ground-truth prompts.
        """
        if detections is not None and is_train:
            raise ValueError("detector prompts are for evaluation, not training")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.prompts = prompts
        self.target_stride = int(target_stride)
        self.crop_retries = crop_retries
        self.skip_invalid = skip_invalid
        self.detections = detections
        self.counts = Counter()
        logger.info(f"[SAMDatasetMapper] is_train={is_train} augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True, dataset_name=None):
        source = validate_prompt_source(cfg)
        arch = sam_arch_from_cfg(cfg)
        augs = build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        augs.append(ResizeLongestSide(arch["image_size"]))
        detections = None
        if source == "results_file" and not is_train:
            from .detections import load_detections

            det = cfg.MODEL.SAM.DETECTOR
            detections = load_detections(det.RESULTS_FILE, dataset_name, det.SCORE_THRESHOLD)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "prompts": GroundTruthPrompts.from_config(cfg),
            "target_stride": decoder_stride(arch),
            "crop_retries": cfg.INPUT.CROP.MAX_RETRIES,
            "skip_invalid": cfg.DATASETS.SKIP_INVALID,
            "detections": detections,
        }

    # ------------------------------------------------------------------------------------------
    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = self._read_image(d)
        if image is None:
            return None
        if self.detections is not None:
            return self._with_detections(d, image)
        annos = self._valid_annotations(d)

        attempts = 1 + (self.crop_retries if self.is_train else 0)
        for _ in range(attempts):
            aug_input = T.AugInput(image)
            transforms = self.augmentations(aug_input)
            size = aug_input.image.shape[:2]
            instances, masks, boxes = self._transform_instances(annos, transforms, size)
            if len(instances) or not self.is_train:
                break
            self._count("training crops that left no instance (re-cropped)")
        if self.is_train and len(instances) == 0:
            self._count(
                f"training images with no instance after {attempts} crops (another image drawn)"
            )
            return None

        prompts = self.prompts(
            boxes, masks, instances.gt_classes.numpy(), size, self.is_train, d.get("file_name", "")
        )
        for name, value in instances.get_fields().items():
            prompts.set(name, value)
        if self.is_train:
            prompts.gt_mask_targets = mask_targets(masks, boxes, size, self.target_stride)
        d["image"] = _to_chw(aug_input.image)
        d["instances"] = prompts
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
        name = record_name(d)
        try:
            image = read_image(d["file_name"], format=self.image_format)
        except (OSError, ValueError, SyntaxError) as e:  # missing, truncated or not an image
            image, problem = None, f"Cannot read image {name}: {e}"
        else:
            h, w = image.shape[:2]
            problem = size_problem(d, h, w)
            problem = problem and f"{name}: {problem}"
        if problem is None:
            d.setdefault("height", h)
            d.setdefault("width", w)
            return image
        if self.is_train and self.skip_invalid:
            self._count("skipped unreadable images (DATASETS.SKIP_INVALID)", problem)
            return None
        raise InvalidRecordError(problem)

    def _valid_annotations(self, d):
        annos = []
        for i, anno in enumerate(d.get("annotations", [])):
            if anno.get("iscrowd", 0):
                continue
            problem = annotation_problem(anno)
            if problem is None:
                annos.append(anno)
                continue
            where = f"{record_name(d)}, annotation {i}"
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
                full = transforms.apply_segmentation(mask_util.decode(rle(seg)).astype(np.uint8))
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

        boxes = np.array(boxes, dtype=np.int64).reshape(-1, 4)
        instances = Instances((h, w))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        if any(p is None for p in polys_out):  # some RLE masks: all instances as bitmasks
            full = [_paste(m, b, h, w) for m, b in zip(masks, boxes)]
            full = np.stack(full) if full else np.zeros((0, h, w), dtype=bool)
            instances.gt_masks = BitMasks(torch.as_tensor(full))
        else:
            instances.gt_masks = PolygonMasks([[p.ravel() for p in ps] for ps in polys_out])
        return instances, masks, boxes

    def _with_detections(self, d, image):
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        h, w = aug_input.image.shape[:2]
        empty = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.float32))
        boxes, classes, scores = self.detections.get(d.get("image_id"), empty)
        boxes = transforms.apply_box(boxes).clip(min=0) if len(boxes) else boxes
        boxes = np.minimum(boxes, [w, h, w, h])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        d["image"] = _to_chw(aug_input.image)
        d["instances"] = prompt_instances(
            (h, w), boxes=boxes[keep], classes=classes[keep], scores=scores[keep]
        )
        d.pop("annotations", None)
        return d


def decoder_stride(arch):
    """Encoder-input pixels per cell of SAM's mask decoder output (4x the embedding grid)."""
    patch = arch["patch_size"]
    if patch % 4:
        raise ValueError(
            f"SAM patch size {patch} is not a multiple of 4 (the mask decoder upsamples 4x)"
        )
    return patch // 4


def _to_chw(image):
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _paste(local, box, h, w):
    full = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box.astype(int)
    full[y0:y1, x0:x1] = local
    return full


def detector_train_mapper(cfg):
    """Detectron2's training mapper (models without prompts: the Mask R-CNN baseline), with this
    project's augmentations, so that ``INPUT.RANDOM_FLIP "d4"`` works there too."""
    return DatasetMapper(
        without_random_flip(cfg), is_train=True, augmentations=build_augmentation(cfg, True)
    )
