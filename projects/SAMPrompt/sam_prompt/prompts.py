"""
Prompts made from ground-truth instances.

Training prompts are random (jittered boxes, points sampled inside the mask); evaluation prompts are
deterministic (tight boxes, the interior point farthest from the mask boundary first), so that
repeated evaluations of one model give identical numbers.

Coordinates are continuous pixel coordinates (x, y) of the image given to the model: the centre of
pixel (row r, column c) is (c + 0.5, r + 0.5).
"""

import zlib

import numpy as np
from scipy import ndimage

# Label of a padding point, ignored by SAM's prompt encoder.
PAD_LABEL = -1


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
    # Pad so that the image border counts as boundary too.
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([c + 0.5, r + 0.5])


def _sample_pixels(region, k, rng):
    rows, cols = np.nonzero(region)
    if len(rows) == 0 or k == 0:
        return np.zeros((0, 2))
    idx = rng.choice(len(rows), size=k, replace=len(rows) < k)
    return np.stack([cols[idx] + 0.5, rows[idx] + 0.5], axis=1)


def point_prompts(mask, box, num_positive, num_negative, rng, deterministic_first=False):
    """
    Point prompts for one instance.

    Args:
        mask (ndarray[h, w] bool): the instance mask within ``box`` (non-empty).
        box (ndarray[4]): integer XYXY box of the mask in image coordinates; ``mask`` covers it.
        num_positive (int): points inside the mask.
        num_negative (int): points inside the box but outside the mask; a box with no such pixel
            gives padding points (label -1), which SAM ignores.
        rng (np.random.Generator):
        deterministic_first (bool): the first positive point is :func:`interior_point`.

    Returns:
        points (ndarray[P, 2]), labels (ndarray[P] int): P = num_positive + num_negative;
        labels are 1 (positive), 0 (negative) or -1 (padding).
    """
    offset = np.asarray(box[:2], dtype=np.float64)
    pos = []
    if deterministic_first and num_positive > 0:
        pos.append(interior_point(mask)[None])
        num_positive -= 1
    pos.append(_sample_pixels(mask, num_positive, rng))
    pos = np.concatenate(pos) + offset
    neg = _sample_pixels(~mask, num_negative, rng) + offset
    n_pad = num_negative - len(neg)
    points = np.concatenate([pos, neg, np.zeros((n_pad, 2))])
    labels = np.array([1] * len(pos) + [0] * len(neg) + [PAD_LABEL] * n_pad, dtype=np.int64)
    return points, labels


def eval_rng(file_name, instance_index):
    """A generator whose state depends only on the record and instance (stable across runs)."""
    return np.random.default_rng([zlib.crc32(str(file_name).encode()), instance_index])
