"""SAM's resize and the random D4 augmentation of overhead imagery, as Detectron2 augmentations."""

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["ResizeLongestSide", "DihedralTransform", "RandomDihedral", "build_augmentation"]

RANDOM_FLIPS = ("none", "horizontal", "vertical", "d4")


class ResizeLongestSide(T.Augmentation):
    """
    Resize so that the longest side equals ``size`` (SAM's ``ResizeLongestSide``: the other side
    is rounded half up), as a Detectron2 transform that applies to the image, polygons, masks and
    boxes alike. The model then only normalises and pads bottom-right.
    """

    def __init__(self, size, interp=Image.BILINEAR):
        super().__init__()
        self.size = int(size)
        self.interp = interp

    @staticmethod
    def output_size(h, w, size):
        scale = size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def get_transform(self, image):
        h, w = image.shape[:2]
        nh, nw = self.output_size(h, w, self.size)
        if (nh, nw) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, nh, nw, self.interp)


class DihedralTransform(T.Transform):
    """
    One of the 8 rotations and reflections of an image (the dihedral group D4): a horizontal
    and/or vertical flip, then optionally a transpose (rows and columns swapped). Exact on
    pixels, points, boxes and polygons; its inverse is another one.
    """

    def __init__(self, h, w, hflip, vflip, transpose):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        if self.hflip:
            img = img[:, ::-1]
        if self.vflip:
            img = img[::-1]
        if self.transpose:
            img = np.swapaxes(img, 0, 1)
        return np.ascontiguousarray(img)

    def apply_coords(self, coords):
        coords = np.array(coords, dtype=np.float64 if coords.dtype.kind != "f" else coords.dtype)
        if self.hflip:
            coords[:, 0] = self.w - coords[:, 0]
        if self.vflip:
            coords[:, 1] = self.h - coords[:, 1]
        if self.transpose:
            coords = coords[:, ::-1].copy()
        return coords

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation)

    def inverse(self):
        if not self.transpose:
            return self
        # Transposing turns the image's horizontal flip into the vertical one and back.
        return DihedralTransform(self.w, self.h, self.vflip, self.hflip, True)


class RandomDihedral(T.Augmentation):
    """Each of the 8 rotations and reflections of the image with probability 1/8."""

    def get_transform(self, image):
        h, w = image.shape[:2]
        hflip, vflip, transpose = (self._rand_range(size=3) < 0.5).tolist()
        if not (hflip or vflip or transpose):
            return T.NoOpTransform()
        return DihedralTransform(h, w, hflip, vflip, transpose)


def build_augmentation(cfg, is_train):
    """
    Detectron2's augmentations (``detection_utils.build_augmentation``), with one more value of
    ``INPUT.RANDOM_FLIP``: ``"d4"``, which draws each of the 8 rotations and reflections of the
    image with probability 1/8 (overhead imagery has no "up"; the training counterpart of
    ``MODEL.SAM.TEST_AUG d4``).
    """
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in RANDOM_FLIPS:
        raise ValueError(
            f"INPUT.RANDOM_FLIP={flip!r}: expected one of {', '.join(map(repr, RANDOM_FLIPS))}"
        )
    if flip != "d4":
        return utils.build_augmentation(cfg, is_train)
    augs = utils.build_augmentation(without_random_flip(cfg), is_train)
    if is_train:
        augs.append(RandomDihedral())
    return augs


def without_random_flip(cfg):
    """A copy of ``cfg`` with ``INPUT.RANDOM_FLIP "none"``, for Detectron2 functions that read the
    key but do not know ``"d4"``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg
