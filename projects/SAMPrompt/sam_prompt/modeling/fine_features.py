"""Fine image features for SAM's mask decoder: edges at the mask resolution."""

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

__all__ = ["FineFeatures"]


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

    def __init__(self, *, hidden_channels, out_channels, patch_size, embed_channels):
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
