"""SAM's resize, and the 8 rotations and reflections of overhead imagery (the views of test-time
augmentation and the random D4 augmentation of training), as Detectron2 augmentations."""

import itertools

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

__all__ = [
    "ResizeLongestSide",
    "TEST_AUG_VIEWS",
    "view_image",
    "unview_image",
    "view_xy",
    "view_boxes",
    "DihedralTransform",
    "RandomDihedral",
    "build_augmentation",
]

RANDOM_FLIPS = ("none", "horizontal", "vertical", "d4")

# Views of an image for test-time augmentation (MODEL.SAM.TEST_AUG), each (transpose, flip left to
# right, flip top to bottom), applied in that order; the first is the image itself. "d4": the 8
# rotations and reflections of the square, all equally likely in overhead imagery.
TEST_AUG_VIEWS = {
    "": ((False, False, False),),
    "flip": ((False, False, False), (False, True, False)),
    "d4": tuple(itertools.product((False, True), repeat=3)),
}


def view_image(t, view):
    """(..., H, W) -> the same in ``view``."""
    transpose, flip_x, flip_y = view
    if transpose:
        t = t.transpose(-1, -2)
    if flip_x:
        t = t.flip(-1)
    if flip_y:
        t = t.flip(-2)
    return t


def unview_image(t, view):
    """(..., H', W') in ``view`` -> (..., H, W): the inverse of :func:`view_image`."""
    transpose, flip_x, flip_y = view
    if flip_y:
        t = t.flip(-2)
    if flip_x:
        t = t.flip(-1)
    if transpose:
        t = t.transpose(-1, -2)
    return t


def view_xy(xy, view, size):
    """(..., 2) continuous (x, y) in an image of ``size`` (H, W) -> the same points in ``view``."""
    transpose, flip_x, flip_y = view
    h, w = size
    if transpose:
        xy, (h, w) = xy.flip(-1), (w, h)
    x, y = xy.unbind(-1)
    return torch.stack([w - x if flip_x else x, h - y if flip_y else y], dim=-1)


def view_boxes(boxes, view, size):
    """(N, 4) XYXY boxes in an image of ``size`` (H, W) -> the same boxes in ``view``."""
    corners = view_xy(boxes.reshape(-1, 2, 2), view, size)
    return torch.cat([corners.amin(1), corners.amax(1)], dim=1)


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
    An image of ``h`` x ``w`` shown in one of the views of :data:`TEST_AUG_VIEWS` ``["d4"]``, as a
    Detectron2 transform, with the geometry of the test-time augmentation: exact on pixels,
    points, boxes and polygons; its inverse is another view.
    """

    def __init__(self, h, w, view):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        t = torch.from_numpy(np.array(img))  # (H, W) or (H, W, C)
        if t.ndim == 3:
            return view_image(t.movedim(-1, 0), self.view).movedim(0, -1).contiguous().numpy()
        return view_image(t, self.view).contiguous().numpy()

    def apply_coords(self, coords):
        xy = torch.from_numpy(np.array(coords, dtype=np.float64))
        return view_xy(xy, self.view, (self.h, self.w)).numpy()

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation)

    def inverse(self):
        transpose, flip_x, flip_y = self.view
        if not transpose:
            return self
        # Undone in the transposed image, the flip left to right is a flip top to bottom.
        return DihedralTransform(self.w, self.h, (True, flip_y, flip_x))


class RandomDihedral(T.Augmentation):
    """Each of the 8 rotations and reflections of the image with probability 1/8."""

    def get_transform(self, image):
        view = TEST_AUG_VIEWS["d4"][np.random.randint(8)]
        if not any(view):
            return T.NoOpTransform()
        return DihedralTransform(*image.shape[:2], view)


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
