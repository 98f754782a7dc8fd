"""The resize SAM's image encoder expects, as a Detectron2 augmentation."""

from detectron2.data import transforms as T
from PIL import Image

__all__ = ["ResizeLongestSide"]


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
