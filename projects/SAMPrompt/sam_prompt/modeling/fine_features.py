"""Fine image features for SAM's mask decoder: edges at the mask resolution."""

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

__all__ = ["FineFeatures", "MaskRefinement"]


class FineFeatures(nn.Module):
    """
    A small convolutional stem on the preprocessed image whose output, on the grid of the mask
    decoder's upscaled embedding (4x the image embedding), is added to that embedding before the
    per-mask dot product (``MODEL.SAM.FINE_FEATURES``).

    SAM's masks are dot products with an embedding upscaled from 16-pixel patches: a small encoder
    trained from random weights cannot place mask edges on thin image structure (the dark troughs
    between ice-wedge polygons) through it. These features see the pixels. The last layer starts at
    zero, so a model with them starts as the same SAM (official weights included).

    To travel with the image embedding through the embedding cache, the chunked losses and every
    decoding path, the features are folded into extra channels of the embedding grid
    (:meth:`fold`) and unfolded where the decoder runs (:meth:`unfold`).
    """

    def __init__(
        self, *, hidden_channels, out_channels, patch_size, embed_channels, refine_channels=0
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
            LayerNorm2d(hidden_channels),
            nn.GELU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=patch_size // 8, padding=1),
            LayerNorm2d(hidden_channels),
            nn.GELU(),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )
        nn.init.zeros_(self.stem[-1].weight)
        nn.init.zeros_(self.stem[-1].bias)
        self.refinement = (
            MaskRefinement(out_channels, refine_channels) if refine_channels > 0 else None
        )

    def fold(self, images, embeddings):
        """(B, 3, S, S) preprocessed images, (B, C, h, w) embeddings -> (B, C + 16c, h, w)."""
        fine = F.pixel_unshuffle(self.stem(images), self.factor)
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
    the mask and the image together, across ~15 cells. Their first layer is a convolution of the
    concatenated (features, mask), computed as the sum of its image part (once per image) and its
    mask part (per mask). The last layer starts at zero: the model starts as without it.
    """

    def __init__(self, feature_channels, channels):
        super().__init__()
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

    def forward(self, logits, fine):
        """(N, K, H, W) mask logits, (1, c, H, W) fine features -> refined (N, K, H, W)."""
        n, k, h, w = logits.shape
        # Bounded input: the decoder's logits reach tens; the shape of the mask is what matters.
        x = self.mask(torch.tanh(logits.reshape(n * k, 1, h, w) / 4)) + self.image(fine)
        return logits + self.body(x).reshape(n, k, h, w)
