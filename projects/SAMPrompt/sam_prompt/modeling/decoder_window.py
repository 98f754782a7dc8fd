"""Windowed decoding: each prompt decoded on a window of the image embedding around it."""

import torch

__all__ = ["PromptWindows", "OUTSIDE_LOGIT"]

# The mask logit outside a prompt's window: background, sure (sigmoid ~2e-9), and finite, so that
# averages over test-time views and the mask losses stay finite.
OUTSIDE_LOGIT = -20.0


class PromptWindows:
    """
    Windows of the embedding grid around prompts (``MODEL.SAM.DECODER_WINDOW``), all of one size:
    each prompt's window holds its cells (its box, or the box of its points) grown by ``margin``
    cells each side, is centred on them and shifted to lie inside the grid.

    SAM's decoder attends from every prompt to all cells of the embedding (64 x 64 for the official
    models), and upscales all of them; small objects (ice-wedge polygons: one to three cells) need
    a few. A window is decoded as if it were the image: the positional encoding of its cells is
    that of the grid's top-left corner, and the prompt's coordinates are shifted by the window's
    origin, so prompt and cells keep their relative positions (the decoding is equivariant to
    whole-cell shifts).

    A prompt's window size depends on that prompt only (:meth:`around` groups prompts by size): its
    mask does not depend on which prompts are decoded with it.

    Args:
        starts (Tensor): (N, 2) first row and column of each window, in cells.
        side (tuple[int, int]): rows and columns of every window.
        grid (tuple[int, int]): rows and columns of the embedding.
        stride (float): input pixels per cell.
    """

    # Window sides are rounded up to a multiple of this (cells): fewer sizes, fewer decoder calls.
    SIDE_MULTIPLE = 4

    def __init__(self, starts, side, grid, stride):
        self.starts = starts
        self.side = side
        self.grid = grid
        self.stride = stride

    @classmethod
    def around(cls, boxes, points, grid, stride, margin):
        """
        The windows of prompts given in input pixels (``boxes`` (N, 4) XYXY and/or ``points``,
        (coords (N, P, 2), labels (N, P)) with padding points labelled -1), as a list of (indices
        (M,) of the prompts, their :class:`PromptWindows`) by window size; None when a window
        would cover the whole grid for every prompt (decode as SAM does) or there is no box or
        point to place one.
        """
        spans = []  # per prompt, (lo, hi) cells of x and y, inclusive
        if boxes is not None:
            cells = boxes.detach().float() / stride
            lo = cells[:, :2].floor()
            hi = torch.maximum((cells[:, 2:] - 1e-3).floor(), lo)
            spans.append((lo, hi))
        if points is not None:
            coords, labels = points
            real = (labels >= 0)[..., None]
            if not bool(real.any(1).all()):
                return None
            cells = (coords.detach().float() / stride).floor()
            big = torch.finfo(cells.dtype).max
            spans.append(
                (torch.where(real, cells, big).amin(1), torch.where(real, cells, -big).amax(1))
            )
        if not spans or len(spans[0][0]) == 0:
            return None
        h, w = grid
        top = torch.tensor([w - 1, h - 1], device=spans[0][0].device, dtype=torch.float32)
        lo = torch.stack([s[0] for s in spans]).amin(0).clamp(min=0)  # (N, 2) as (x, y)
        lo = torch.minimum(lo, top).flip(1).long()  # (y, x) from here
        hi = torch.minimum(torch.stack([s[1] for s in spans]).amax(0).clamp(min=0), top)
        hi = hi.flip(1).long()
        extent = (hi - lo).amax(1) + 1 + 2 * margin
        m = cls.SIDE_MULTIPLE
        sides = (extent + m - 1) // m * m
        if bool((sides >= max(h, w)).all()):
            return None
        groups = []
        for side in sides.unique().tolist():
            idx = (sides == side).nonzero()[:, 0]
            size = lo.new_tensor([min(side, h), min(side, w)])
            starts = ((lo[idx] + hi[idx] + 1) // 2 - size // 2).clamp(min=0)
            starts = torch.minimum(starts, lo.new_tensor(grid) - size)
            groups.append((idx, cls(starts, tuple(size.tolist()), grid, stride)))
        return groups

    def __len__(self):
        return len(self.starts)

    def shift(self, boxes, points):
        """Prompts in input pixels -> the same prompts in their windows' pixels."""
        origin = self.starts.flip(1).to(torch.float32) * self.stride  # (N, 2) as (x, y)
        if boxes is not None:
            boxes = boxes - origin.repeat(1, 2).to(boxes.dtype)
        if points is not None:
            coords, labels = points
            points = (coords - origin[:, None].to(coords.dtype), labels)
        return boxes, points

    def _cells(self, scale):
        """Flat indices (N, sh * sw * scale^2) of the windows on the grid ``scale`` times finer."""
        sh, sw = self.side[0] * scale, self.side[1] * scale
        width = self.grid[1] * scale
        device = self.starts.device
        ys = self.starts[:, 0:1] * scale + torch.arange(sh, device=device)
        xs = self.starts[:, 1:2] * scale + torch.arange(sw, device=device)
        return (ys[:, :, None] * width + xs[:, None, :]).flatten(1)

    def gather(self, x, scale=1):
        """
        (1 or N, C, h * scale, w * scale) -> each prompt's window (N, C, sh * scale, sw * scale).
        One map shared by all prompts (the image's) is indexed once: its gradient is summed into
        one map, not into one per prompt.
        """
        n, c = len(self), x.shape[1]
        idx = self._cells(scale)
        if x.shape[0] == 1:
            out = x[0].flatten(1)[:, idx].transpose(0, 1)  # (N, C, S)
        else:
            out = torch.gather(x.flatten(2), 2, idx[:, None].expand(n, c, -1))
        return out.reshape(n, c, self.side[0] * scale, self.side[1] * scale)

    def paste(self, x, scale=1, fill=OUTSIDE_LOGIT):
        """Windows (N, K, sh * scale, sw * scale) -> the grid (N, K, h * scale, w * scale)."""
        n, k = x.shape[:2]
        idx = self._cells(scale)
        h, w = self.grid[0] * scale, self.grid[1] * scale
        out = x.new_full((n, k, h * w), fill)
        out = out.scatter(2, idx[:, None].expand(n, k, -1), x.flatten(2))
        return out.reshape(n, k, h, w)
