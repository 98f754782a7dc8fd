"""
Image embeddings computed once and re-used while the image encoder is frozen
(``MODEL.SAM.EMBEDDING_CACHE``).

An embedding is keyed by the exact encoder input (the pixels after the mapper's transforms: a
flipped or cropped image is another key), the channel order, and a digest of the encoder's
weights, so that a cached embedding is never stale: loading other weights changes the digest.
"""

import hashlib
import logging
import os
from collections import OrderedDict

import torch

__all__ = ["EmbeddingCache", "module_digest"]

logger = logging.getLogger(__name__)


def module_digest(module):
    """sha1 of a module's state (names, shapes, dtypes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class EmbeddingCache:
    """
    Args:
        location (str): "memory", or a folder (created) whose ``<key>.pt`` files outlive the
            process and are shared by processes (written atomically).
        dtype (torch.dtype): storage type: float32 (exact) or float16 (half the size).
        max_bytes (int): memory cache only: least recently used embeddings are dropped beyond it.
    """

    def __init__(self, location, dtype=torch.float32, max_bytes=4 << 30):
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"embedding cache dtype must be float32 or float16, got {dtype}")
        self.location = location
        self.dtype = dtype
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = 0
        self._memory = OrderedDict()
        self._bytes = 0
        if location != "memory":
            os.makedirs(location, exist_ok=True)

    @staticmethod
    def key(image, input_format, encoder_digest):
        """Key of one input image tensor (C, H, W) as given to the model."""
        image = image.detach().cpu().contiguous()
        h = hashlib.sha1(
            f"{tuple(image.shape)}:{image.dtype}:{input_format}:{encoder_digest}".encode()
        )
        h.update(image.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def get(self, key):
        if self.location == "memory":
            value = self._memory.get(key)
            if value is not None:
                self._memory.move_to_end(key)
        else:
            path = os.path.join(self.location, key + ".pt")
            value = torch.load(path, map_location="cpu") if os.path.isfile(path) else None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key, embedding):
        value = embedding.detach().to("cpu", self.dtype).clone()
        if self.location == "memory":
            self._memory[key] = value
            self._bytes += value.numel() * value.element_size()
            while self._bytes > self.max_bytes and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
        else:
            path = os.path.join(self.location, key + ".pt")
            tmp = f"{path}.{os.getpid()}.tmp"
            torch.save(value, tmp)
            os.replace(tmp, path)
