"""
Prompts: one schema for every source (ground truth, a detector, a user's file).

Every prompt source builds its prompts with :func:`prompt_instances`, an :class:`Instances` whose
fields are

* ``prompt_boxes`` (Boxes, XYXY): the box prompt, or the box of the instance or point;
* ``prompt_points`` (Tensor[N, P, 2]) and ``prompt_labels`` (Tensor[N, P]: 1 positive, 0
  negative, -1 padding); P may be 0;
* ``prompt_classes`` (Tensor[N] int64): the class each prediction is reported under;
* ``prompt_scores`` (Tensor[N], optional): a detector's confidence, which then ranks the masks.

Ground-truth prompts (:class:`GroundTruthPrompts`) are random in training (jittered boxes, points
sampled inside the mask) and deterministic at evaluation (tight boxes; the first point chosen by
``MODEL.SAM.PROMPT.EVAL_POINT``), so that repeated evaluations of one model give identical numbers.

Coordinates are continuous pixel coordinates (x, y) of the image given to the model: the centre of
pixel (row r, column c) is (c + 0.5, r + 0.5).
"""

import zlib

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from scipy import ndimage

__all__ = [
    "PAD_LABEL",
    "EVAL_POINTS",
    "prompt_instances",
    "GroundTruthPrompts",
    "validate_prompt_source",
    "box_jitter",
    "interior_point",
    "point_depth",
    "point_prompts",
]

# Label of a padding point, ignored by SAM's prompt encoder.
PAD_LABEL = -1
# How the first point of an evaluation point prompt is placed (MODEL.SAM.PROMPT.EVAL_POINT).
EVAL_POINTS = ("interior", "center", "random")
TRAIN_POINTS = ("uniform", "inner")


def prompt_instances(image_size, *, classes, boxes=None, points=None, labels=None, scores=None):
    """
    Prompts of one image in the one schema every part of SAMPrompt reads.

    Args:
        image_size (tuple[int, int]): (h, w) of the image given to the model.
        classes (array-like[N]): class of each prompt (reported as ``pred_classes``).
        boxes (array-like[N, 4] or None): XYXY box prompts. Without boxes, ``prompt_boxes`` is the
            box around each prompt's points (1 px around a single point).
        points (array-like[N, P, 2] or [N, 2] or None): point prompts; [N, 2] is one point each.
        labels (array-like[N, P] or None): point labels; default: all positive.
        scores (array-like[N] or None): confidence of each prompt (a detector's score).

    Returns:
        Instances
    """
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.int64).reshape(-1)
    n = len(classes)
    points = np.zeros((n, 0, 2), np.float32) if points is None else np.asarray(points, np.float32)
    if points.ndim == 2:  # one point per prompt
        points = points[:, None, :]
    if points.ndim != 3 or points.shape[0] != n or points.shape[2] != 2:
        raise ValueError(f"prompt points of shape {points.shape}: expected ({n}, P, 2)")
    points = torch.as_tensor(points)
    if labels is None:
        labels = torch.ones(points.shape[:2], dtype=torch.int64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(points.shape[:2])
    if boxes is None:
        if points.shape[1] == 0:
            raise ValueError("prompts need boxes, points or both")
        valid = (labels >= 0)[..., None]
        lo = torch.where(valid, points, torch.full_like(points, float("inf"))).amin(1)
        hi = torch.where(valid, points, torch.full_like(points, float("-inf"))).amax(1)
        boxes = torch.cat([lo - 0.5, hi + 0.5], dim=1)
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(n, 4)
    inst = Instances(tuple(int(s) for s in image_size))
    inst.prompt_boxes = Boxes(boxes)
    inst.prompt_points = points
    inst.prompt_labels = labels
    inst.prompt_classes = classes
    if scores is not None:
        inst.prompt_scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32).reshape(n)
    return inst


def validate_prompt_source(cfg):
    """
    Check ``MODEL.SAM.PROMPT`` and ``MODEL.SAM.DETECTOR`` once, with messages naming the keys.

    Returns:
        str: "ground_truth", "results_file" or "detector" (a detector run in the process).
    """
    p, det = cfg.MODEL.SAM.PROMPT, cfg.MODEL.SAM.DETECTOR
    if p.TYPE not in ("box", "point"):
        raise ValueError(f"MODEL.SAM.PROMPT.TYPE={p.TYPE!r}: expected 'box' or 'point'")
    if p.EVAL_POINT not in EVAL_POINTS:
        raise ValueError(
            f"MODEL.SAM.PROMPT.EVAL_POINT={p.EVAL_POINT!r}: expected one of {EVAL_POINTS}"
        )
    if p.SOURCE == "ground_truth":
        if det.CONFIG_FILE or det.RESULTS_FILE:
            raise ValueError(
                "MODEL.SAM.DETECTOR.CONFIG_FILE / RESULTS_FILE are set but MODEL.SAM.PROMPT.SOURCE is "
                "'ground_truth': set MODEL.SAM.PROMPT.SOURCE detector to use the detector, or clear them"
            )
        return "ground_truth"
    if p.SOURCE != "detector":
        raise ValueError(
            f"MODEL.SAM.PROMPT.SOURCE={p.SOURCE!r}: expected 'ground_truth' or 'detector'"
        )
    if p.TYPE != "box":
        raise ValueError(
            "MODEL.SAM.PROMPT.SOURCE detector gives box prompts: set MODEL.SAM.PROMPT.TYPE box"
        )
    if bool(det.CONFIG_FILE) == bool(det.RESULTS_FILE):
        state = "both are set" if det.CONFIG_FILE else "neither is set"
        raise ValueError(
            "MODEL.SAM.PROMPT.SOURCE detector needs exactly one of MODEL.SAM.DETECTOR.CONFIG_FILE "
            f"(a detector run in the process) and MODEL.SAM.DETECTOR.RESULTS_FILE (its COCO results); {state}"
        )
    if det.SCORE_MODE not in ("detector", "detector_x_iou"):
        raise ValueError(
            f"MODEL.SAM.DETECTOR.SCORE_MODE={det.SCORE_MODE!r}: expected 'detector' or 'detector_x_iou'"
        )
    return "detector" if det.CONFIG_FILE else "results_file"


class GroundTruthPrompts:
    """
    Prompts made from ground-truth instances (``MODEL.SAM.PROMPT``).

    Args:
        prompt_type (str): "box" or "point".
        num_positive_points, num_negative_points (int): points per instance (point prompts).
        box_jitter_std, box_jitter_max_pixels (float): training box noise (see :func:`box_jitter`).
        eval_point (str): first evaluation point: "interior" (farthest from the boundary),
            "center" (the box centre, outside concave shapes) or "random" (seeded per record).
    """

    def __init__(
        self,
        prompt_type="box",
        num_positive_points=1,
        num_negative_points=0,
        box_jitter_std=0.1,
        box_jitter_max_pixels=20.0,
        eval_point="interior",
        train_point="uniform",
    ):
        if prompt_type not in ("box", "point"):
            raise ValueError(f"prompt type must be 'box' or 'point', got {prompt_type!r}")
        if prompt_type == "point" and num_positive_points < 1:
            raise ValueError("point prompts need at least one positive point per instance")
        if eval_point not in EVAL_POINTS:
            raise ValueError(f"eval point must be one of {EVAL_POINTS}, got {eval_point!r}")
        if train_point not in TRAIN_POINTS:
            raise ValueError(f"train point must be one of {TRAIN_POINTS}, got {train_point!r}")
        self.prompt_type = prompt_type
        self.num_positive = num_positive_points if prompt_type == "point" else 0
        self.num_negative = num_negative_points if prompt_type == "point" else 0
        self.box_jitter_std = box_jitter_std
        self.box_jitter_max_pixels = box_jitter_max_pixels
        self.eval_point = eval_point
        self.train_point = train_point

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.SAM.PROMPT
        return cls(
            p.TYPE,
            p.NUM_POSITIVE_POINTS,
            p.NUM_NEGATIVE_POINTS,
            p.BOX_JITTER_STD,
            p.BOX_JITTER_MAX_PIXELS,
            p.EVAL_POINT,
            p.TRAIN_POINT,
        )

    def _first_train_point(self):
        # None: the first point is drawn with the others (SAM's uniform sampling)
        return None if self.train_point == "uniform" else self.train_point

    def __call__(self, boxes, masks, classes, image_size, is_train, record_key=""):
        """
        Args:
            boxes (ndarray[N, 4]): tight integer XYXY boxes of the instance masks.
            masks (list[ndarray[h, w] bool]): each instance's mask within its box.
            classes (ndarray[N]):
            image_size (tuple[int, int]): (h, w).
            is_train (bool): random prompts (training) or deterministic ones (evaluation).
            record_key (str): seeds evaluation prompts (e.g. the file name).

        Returns:
            Instances: see :func:`prompt_instances`.
        """
        n = len(boxes)
        prompt_boxes = np.asarray(boxes, dtype=np.float64).reshape(n, 4).copy()
        P = self.num_positive + self.num_negative
        points = np.zeros((n, P, 2), dtype=np.float32)
        labels = np.zeros((n, P), dtype=np.int64)
        rng = np.random.default_rng(np.random.randint(2**31)) if is_train else None
        for i in range(n):
            if not is_train:
                rng = eval_rng(record_key, i)
            if is_train and self.prompt_type == "box":
                prompt_boxes[i] = box_jitter(
                    prompt_boxes[i],
                    rng,
                    self.box_jitter_std,
                    self.box_jitter_max_pixels,
                    image_size,
                )
            if P:
                points[i], labels[i] = point_prompts(
                    masks[i],
                    boxes[i],
                    self.num_positive,
                    self.num_negative,
                    rng,
                    first=self._first_train_point() if is_train else self.eval_point,
                )
        return prompt_instances(
            image_size, classes=classes, boxes=prompt_boxes, points=points, labels=labels
        )


def box_jitter(box, rng, std_fraction, max_pixels, image_size):
    """
    Move each side of an XYXY box by normal noise (SAM paper, training with box prompts).

    Args:
        box (ndarray[4]): XYXY box.
        rng (np.random.Generator):
        std_fraction (float): noise std as a fraction of the box width (x) or height (y).
        max_pixels (float): noise is clipped to +-max_pixels.
        image_size (tuple[int, int]): (h, w); the result stays inside the image and keeps
            positive width and height.

    Returns:
        ndarray[4]
    """
    x0, y0, x1, y1 = box.astype(np.float64)
    w, h = x1 - x0, y1 - y0
    std = std_fraction * np.array([w, h, w, h])
    noise = np.clip(rng.normal(size=4) * std, -max_pixels, max_pixels)
    j = box + noise
    H, W = image_size
    j[[0, 2]] = np.clip(j[[0, 2]], 0, W)
    j[[1, 3]] = np.clip(j[[1, 3]], 0, H)
    if j[2] - j[0] < 1 or j[3] - j[1] < 1:  # noise collapsed the box: keep the original
        return box.astype(np.float64)
    return j


def interior_point(mask):
    """
    The pixel centre of ``mask`` farthest from its boundary (ties: first in row-major order).
    Unlike the box centre, it lies inside concave and ring-shaped masks.

    Args:
        mask (ndarray[H, W] bool): non-empty.

    Returns:
        ndarray[2]: (x, y)
    """
    dist = _boundary_distance(mask)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([c + 0.5, r + 0.5])


def point_depth(masks, points):
    """
    How deep each point lies in each of its masks: its distance from the mask's boundary over the
    mask's greatest (1 at the mask's most interior pixel; 0 outside the mask or for an empty one).

    Args:
        masks (ndarray[N, K, H, W] bool)
        points (ndarray[N, 2]): (x, y), continuous pixel coordinates of the masks.

    Returns:
        ndarray[N, K] float64
    """
    n, k, h, w = masks.shape
    cols = np.clip(np.floor(points[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(int), 0, h - 1)
    depth = np.zeros((n, k))
    for i, j in zip(*np.nonzero(masks[np.arange(n), :, rows, cols])):
        mask = masks[i, j]
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        # The mask's box holds all of it: its distances are those of the whole grid.
        dist = _boundary_distance(mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])
        depth[i, j] = dist[rows[i] - ys[0], cols[i] - xs[0]] / dist.max()
    return depth


def _boundary_distance(mask):
    """Distance of each pixel of ``mask`` to its boundary; the image border counts as boundary."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _sample_pixels(region, k, rng):
    rows, cols = np.nonzero(region)
    if len(rows) == 0 or k == 0:
        return np.zeros((0, 2))
    idx = rng.choice(len(rows), size=k, replace=len(rows) < k)
    return np.stack([cols[idx] + 0.5, rows[idx] + 0.5], axis=1)


def _first_point(mask, how, rng):
    if how == "inner":  # probability proportional to the distance from the boundary
        dist = _boundary_distance(mask).ravel()
        r, c = np.unravel_index(rng.choice(dist.size, p=dist / dist.sum()), mask.shape)
        return np.array([c + 0.5, r + 0.5])
    if how == "interior":
        return interior_point(mask)
    if how == "center":  # the box centre (may fall outside a concave mask)
        h, w = mask.shape
        return np.array([w / 2.0, h / 2.0])
    return _sample_pixels(mask, 1, rng)[0]


def point_prompts(mask, box, num_positive, num_negative, rng, first=None):
    """
    Point prompts for one instance.

    Args:
        mask (ndarray[h, w] bool): the instance mask within ``box`` (non-empty).
        box (ndarray[4]): integer XYXY box of the mask in image coordinates; ``mask`` covers it.
        num_positive (int): points inside the mask.
        num_negative (int): points inside the box but outside the mask; a box with no such pixel
            gives padding points (label -1), which SAM ignores.
        rng (np.random.Generator):
        first (str or None): how the first positive point is placed (at evaluation
            "interior", "center" or "random", see :data:`EVAL_POINTS`; in training "inner", see
            ``MODEL.SAM.PROMPT.TRAIN_POINT``); None: sampled like the others.

    Returns:
        points (ndarray[P, 2]), labels (ndarray[P] int): P = num_positive + num_negative;
        labels are 1 (positive), 0 (negative) or -1 (padding).
    """
    offset = np.asarray(box[:2], dtype=np.float64)
    pos = []
    if first is not None and num_positive > 0:
        pos.append(_first_point(mask, first, rng)[None])
        num_positive -= 1
    pos.append(_sample_pixels(mask, num_positive, rng))
    pos = np.concatenate(pos) + offset
    neg = _sample_pixels(~mask, num_negative, rng) + offset
    n_pad = num_negative - len(neg)
    points = np.concatenate([pos, neg, np.zeros((n_pad, 2))])
    labels = np.array([1] * len(pos) + [0] * len(neg) + [PAD_LABEL] * n_pad, dtype=np.int64)
    return points, labels


def eval_rng(record_key, instance_index):
    """A generator whose state depends only on the record and instance (stable across runs)."""
    return np.random.default_rng([zlib.crc32(str(record_key).encode()), instance_index])
