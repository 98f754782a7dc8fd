"""
Corrective clicks: simulated in training (SAM's iterative rounds) and, deterministically, in the
interactive evaluation (clicks at the interior of the largest error region).

Coordinates are those of the encoder input; masks live on the mask decoder's low-resolution grid
(training) or at the input resolution (evaluation).
"""

import numpy as np
import torch
from scipy import ndimage

from ..prompts import PAD_LABEL

__all__ = ["sample_clicks", "append_clicks", "corrective_click", "interactive_metrics"]


def sample_clicks(pred, target, stride, generator=None):
    """
    One click per instance, sampled uniformly in its error region (SAM): positive in a false
    negative pixel, negative in a false positive one; a padding click where there is no error.

    Args:
        pred, target (Tensor[N, h, w] bool): prediction and ground truth on a grid of ``stride``
            input pixels per cell.

    Returns:
        (coords Tensor[N, 1, 2], labels Tensor[N, 1])
    """
    n, h, w = target.shape
    error = (pred ^ target).flatten(1)
    has_error = error.any(1)
    weights = torch.where(
        has_error[:, None], error.float(), torch.ones_like(error, dtype=torch.float)
    )
    idx = torch.multinomial(weights, 1, generator=generator)[:, 0]
    rows, cols = idx // w, idx % w
    coords = torch.stack([(cols + 0.5) * stride, (rows + 0.5) * stride], dim=1).float()
    positive = target.flatten(1).gather(1, idx[:, None])[:, 0]
    labels = torch.where(
        has_error, positive.long(), torch.full_like(positive, PAD_LABEL, dtype=torch.long)
    )
    return coords[:, None], labels[:, None]


def append_clicks(points, coords, labels):
    """Add one click per instance to point prompts (None: no points yet)."""
    if points is None:
        return coords, labels
    return torch.cat([points[0], coords.to(points[0])], 1), torch.cat(
        [points[1], labels.to(points[1])], 1
    )


def corrective_click(pred, gt):
    """
    The next click of the interactive evaluation, deterministic: the interior point (farthest
    from its boundary) of the largest connected error region; positive if it lies in the object.

    Args:
        pred, gt (ndarray[H, W] bool):

    Returns:
        ((x, y), label) in pixel coordinates, or None when the prediction is exact.
    """
    error = pred ^ gt
    if not error.any():
        return None
    ys, xs = np.nonzero(error)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = error[y0:y1, x0:x1]
    labels, n = ndimage.label(crop)
    if n > 1:
        sizes = ndimage.sum(crop, labels, index=np.arange(1, n + 1))
        crop = labels == (int(np.argmax(sizes)) + 1)
    dist = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    y, x = y0 + r, x0 + c
    return (x + 0.5, y + 0.5), int(gt[y, x])


def interactive_metrics(ious, thresholds=(0.85, 0.9), report=(1, 3, 5, 10)):
    """
    Args:
        ious (ndarray[N, C]): IoU of each instance after 1..C clicks (the first prompt is click 1).

    Returns:
        dict: mIoU@k (percent) for k in ``report``, NoC@85 and NoC@90 (clicks to reach the IoU;
        C when never reached) and the share of instances (percent) that never reach 90%.
    """
    ious = np.asarray(ious, dtype=np.float64)
    n, c = ious.shape
    out = {
        f"mIoU@{k}": 100 * float(ious[:, k - 1].mean()) if n else float("nan")
        for k in report
        if k <= c
    }
    for t in thresholds:
        reached = ious >= t
        first = np.where(reached.any(1), reached.argmax(1) + 1, c)
        out[f"NoC@{round(t * 100)}"] = float(first.mean()) if n else float("nan")
    out["never@90"] = 100 * float((~(ious >= 0.9).any(1)).mean()) if n else float("nan")
    out["instances"] = n
    return out
