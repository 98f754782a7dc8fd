"""Fine image features for SAM's mask decoder: edges at the mask resolution."""

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

__all__ = ["FineFeatures", "MaskRefinement"]


class _LayerNorm2d(LayerNorm2d):
    """
    SAM's LayerNorm2d (same parameters, same result) through one fused layer-norm kernel over
    channels-last pixels instead of its eight element-wise operations: the stem's first norm, on
    a 256 x 256 grid, took 8% of a training step of ``sam_small_cpu.yaml``; with this the fine
    features' forward and backward take 19-29% less time (two measurements, 2 CPU cores). The
    output is channels-last.
    """

    def forward(self, x):
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class _ResidualBlock(nn.Module):
    """x + conv1x1(GELU(conv3x3_dilated(LayerNorm(x)))), the last layer starting at zero."""

    def __init__(self, channels, dilation):
        super().__init__()
        self.body = nn.Sequential(
            _LayerNorm2d(channels),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GELU(),
            nn.Conv2d(channels, channels, 1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        return x + self.body(x)


class FineFeatures(nn.Module):
    """
    A small convolutional stem on the preprocessed image whose output, on the grid of the mask
    decoder's upscaled embedding (4x the image embedding), is added to that embedding before the
    per-mask dot product (``MODEL.SAM.FINE_FEATURES``).

    SAM's masks are dot products with an embedding upscaled from 16-pixel patches: a small encoder
    trained from random weights cannot place mask edges on thin image structure (the dark troughs
    between ice-wedge polygons) through it. These features see the pixels. The last layer starts at
    zero, so a model with them starts as the same SAM (official weights included).

    ``depth`` residual blocks (3 x 3 convolutions, dilations 1, 2, 1, 2, ...) on the mask grid
    widen what each feature sees beyond the stem's 7 pixels (``MODEL.SAM.FINE_DEPTH``).

    To travel with the image embedding through the embedding cache, the chunked losses and every
    decoding path, the features are folded into extra channels of the embedding grid
    (:meth:`fold`) and unfolded where the decoder runs (:meth:`unfold`).
    """

    def __init__(
        self,
        *,
        hidden_channels,
        out_channels,
        patch_size,
        embed_channels,
        refine_channels=0,
        rescore=False,
        depth=0,
        refine_passes=1,
    ):
        super().__init__()
        if patch_size % 8:
            raise ValueError(
                f"MODEL.SAM.FINE_FEATURES needs a patch size divisible by 8, got {patch_size}"
            )
        self.factor = 4  # the decoder upscales the embedding 4x
        self.embed_channels = embed_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, hidden_channels, 3, stride=2, padding=1),
            _LayerNorm2d(hidden_channels),
            nn.GELU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=patch_size // 8, padding=1),
            _LayerNorm2d(hidden_channels),
            nn.GELU(),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )
        # Between the stem's last activation and its output layer (a separate module: checkpoints
        # without blocks keep their parameter names).
        self.blocks = nn.Sequential(
            *(_ResidualBlock(hidden_channels, 1 + i % 2) for i in range(depth))
        )
        nn.init.zeros_(self.stem[-1].weight)
        nn.init.zeros_(self.stem[-1].bias)
        self.refinement = (
            MaskRefinement(out_channels, refine_channels, rescore=rescore, passes=refine_passes)
            if refine_channels > 0
            else None
        )

    def features(self, images):
        """(B, 3, S, S) preprocessed images -> their fine features (B, c, 4h, 4w)."""
        # Channels-last throughout: the norms' permutes are then views, not copies.
        images = images.contiguous(memory_format=torch.channels_last)
        hidden = self.stem[:-1](images)  # the blocks go before the stem's output layer
        return self.stem[-1](self.blocks(hidden))

    def fold(self, images, embeddings):
        """(B, 3, S, S) preprocessed images, (B, C, h, w) embeddings -> (B, C + 16c, h, w)."""
        fine = F.pixel_unshuffle(self.features(images), self.factor)
        return torch.cat([embeddings, fine.to(embeddings.dtype)], dim=1)

    def unfold(self, features):
        """(B, C + 16c, h, w) -> the embedding (B, C, h, w) and fine features (B, c, 4h, 4w)."""
        embedding, fine = features.split(
            [self.embed_channels, features.shape[1] - self.embed_channels], dim=1
        )
        return embedding, F.pixel_shuffle(fine, self.factor)


class MaskRefinement(nn.Module):
    """
    A per-mask convolutional refinement of the decoder's logits on the mask grid
    (``MODEL.SAM.FINE_REFINE``): the fine image features and each mask's own logits pass through
    three small convolutions whose output is added to the logits.

    The decoder's last step is linear in the fine features (a dot product per mask), so it can
    take a trough off a mask but cannot move an edge to the trough next to it; these layers see
    the mask and the image together, across ``REACH`` cells each side. Their first layer is a
    convolution of the concatenated (features, mask), computed as the sum of its image part (once
    per image) and its mask part (per mask). The last layer starts at zero: the model starts as
    without it.

    Each mask is refined in a window around it (its box grown by ``REACH`` cells each side, one
    size for all masks of a call): on the cells of the box the result is that of the whole grid,
    at the cost of the window (IWP objects cover a few cells of a 128-cell grid).

    With ``rescore`` (``MODEL.SAM.FINE_RESCORE``) it also corrects each mask's predicted IoU, which
    the decoder predicts before the fine features and this refinement shape the mask: a small head
    on the last hidden layer's features, averaged over the refined mask and over its edge (weights
    from the mask's probabilities, detached), adds to the decoder's prediction. Its last layer
    starts at zero too; the IoU loss trains it.

    ``passes`` > 1 (``MODEL.SAM.FINE_REFINE_PASSES``) refines the refined logits again, each further
    pass with its own weights (the modules of ``more``) and its own window, reaching ``REACH`` cells
    further: an edge that lies several cells off (a point's mask, whose extent the prompt does not
    give) can move to its trough. Each further pass starts as the identity, so weights of fewer
    passes load and start as they were.
    """

    REACH = 8  # receptive field radius in cells: 1 + 2 + 4 + 1

    def __init__(self, feature_channels, channels, rescore=False, passes=1):
        super().__init__()
        if passes < 1:
            raise ValueError(f"MODEL.SAM.FINE_REFINE_PASSES={passes}: at least 1")
        self.image = nn.Conv2d(feature_channels, channels, 3, padding=1)
        self.mask = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=4, dilation=4),
            nn.GELU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self.score = None
        if rescore:
            # (mean over the mask, mean over its edge) of each hidden channel, and the edge's share
            self.score = nn.Sequential(nn.Linear(2 * channels + 1, 16), nn.GELU(), nn.Linear(16, 1))
            nn.init.zeros_(self.score[-1].weight)
            nn.init.zeros_(self.score[-1].bias)
        self.more = nn.ModuleList(
            MaskRefinement(feature_channels, channels, rescore) for _ in range(passes - 1)
        )

    def forward(self, logits, fine, iou_pred=None):
        """
        (N, K, H, W) mask logits, (1, c, H, W) fine features[, (N, K) predicted IoU] -> refined
        logits (N, K, H, W)[, the predicted IoU, corrected with ``rescore``].
        """
        out = self._refine(logits, fine, iou_pred)
        for refinement in self.more:
            if iou_pred is None:
                out = refinement(out, fine)
            else:
                out = refinement(out[0], fine, out[1])
        return out

    def _refine(self, logits, fine, iou_pred=None):
        """One pass: :meth:`forward` without the further passes."""
        n, k, h, w = logits.shape
        if n == 0:
            return logits if iou_pred is None else (logits, iou_pred)
        image = self.image(fine)  # once per image, on the whole grid
        cells, (sh, sw) = self.windows(logits.detach())
        idx = cells[:, None]  # (N, 1, sh * sw) flat indices into the grid
        flat = logits.flatten(2)
        win = torch.gather(flat, 2, idx.expand(n, k, -1)).reshape(n * k, 1, sh, sw)
        img = torch.gather(image.flatten(2).expand(n, -1, -1), 2, idx.expand(n, image.shape[1], -1))
        img = img.repeat_interleave(k, dim=0).reshape(n * k, -1, sh, sw)
        # Bounded input: the decoder's logits reach tens; the shape of the mask is what matters.
        hidden = self.body[:-1](self.mask(torch.tanh(win / 4)) + img)
        delta = self.body[-1](hidden)
        refined = flat.scatter_add(2, idx.expand(n, k, -1), delta.reshape(n, k, sh * sw))
        refined = refined.reshape(n, k, h, w)
        if iou_pred is None:
            return refined
        if self.score is not None:
            iou_pred = iou_pred + self._score(hidden, win + delta).reshape(n, k).to(iou_pred.dtype)
        return refined, iou_pred

    def _score(self, hidden, logits):
        """(M, c, sh, sw) hidden features, (M, 1, sh, sw) refined logits -> (M,) IoU correction."""
        p = torch.sigmoid(logits.detach().float())
        edge = 4 * p * (1 - p)  # 1 on the outline, 0 far from it

        def mean(weights):
            total = weights.flatten(1).sum(1).clamp(min=1e-6)
            return (hidden.float() * weights).flatten(2).sum(2) / total[:, None]

        share = edge.flatten(1).sum(1) / p.flatten(1).sum(1).clamp(min=1)
        feats = torch.cat([mean(p), mean(edge), share[:, None]], dim=1)
        return self.score(feats.to(hidden.dtype))[:, 0]

    def windows(self, logits):
        """
        The window of each mask: flat grid indices (N, sh * sw) and the side (sh, sw). A window is
        centred on the box of the mask's positive cells (any of its K candidates; an empty mask:
        its highest cell) and shifted to lie inside the grid.
        """
        n, _, h, w = logits.shape
        fg = (logits > 0).any(1)
        peak = logits.amax(1).flatten(1).argmax(1)
        spans = []
        for axis, size, at_peak in ((2, h, peak // w), (1, w, peak % w)):
            occupied = fg.any(axis)  # (N, size)
            ar = torch.arange(size, device=logits.device)
            lo = torch.where(occupied, ar, size).amin(1)
            hi = torch.where(occupied, ar, -1).amax(1)
            empty = hi < 0
            spans.append((torch.where(empty, at_peak, lo), torch.where(empty, at_peak, hi)))
        extent = max(int((hi - lo).max()) for lo, hi in spans) + 2 + 2 * self.REACH
        side = -(-extent // 8) * 8
        sh, sw = min(side, h), min(side, w)
        starts = [
            ((lo + hi + 1) // 2 - s // 2).clamp(0, size - s)
            for (lo, hi), s, size in zip(spans, (sh, sw), (h, w))
        ]
        ys = starts[0][:, None] + torch.arange(sh, device=logits.device)
        xs = starts[1][:, None] + torch.arange(sw, device=logits.device)
        return (ys[:, :, None] * w + xs[:, None, :]).flatten(1), (sh, sw)
