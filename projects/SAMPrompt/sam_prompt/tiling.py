"""
Large-scene prediction: windowed reading, overlapping tiles, stitching, and the outputs mappers
open in QGIS (GeoJSON in the raster's CRS), plus COCO results and a downsampled overlay.

A run writes one line per finished tile to ``tiles.jsonl`` in its output folder; running again
with the same folder skips those tiles, so an interrupted run resumes without duplicates. The
final files are always rebuilt from ``tiles.jsonl``.
"""

import logging
import os
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.features import shapes as raster_shapes
from rasterio.windows import Window
from shapely.geometry import box as shapely_box
from shapely.geometry import shape
from shapely.strtree import STRtree

from .data.images import stretch_range, stretch_to_uint8

logger = logging.getLogger(__name__)

__all__ = [
    "Tile",
    "tile_grid",
    "SceneReader",
    "pick_bands",
    "masks_to_polygons",
    "stitch",
    "SceneError",
]


class SceneError(ValueError):
    """An input that cannot be predicted on (unreadable, not a raster, empty)."""


@dataclass(frozen=True)
class Tile:
    index: int
    x: int
    y: int
    width: int
    height: int

    @property
    def window(self):
        return Window(self.x, self.y, self.width, self.height)


def _starts(length, tile, step):
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_grid(width, height, tile_size, overlap):
    """Overlapping tiles covering a width x height scene (the last row/column flush with its edge)."""
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap {overlap} must be in [0, tile size {tile_size})")
    step = tile_size - overlap
    tiles = []
    for y in _starts(height, tile_size, step):
        for x in _starts(width, tile_size, step):
            tiles.append(
                Tile(len(tiles), x, y, min(tile_size, width - x), min(tile_size, height - y))
            )
    return tiles


def pick_bands(src, bands=None):
    """
    The (red, green, blue) band numbers of a raster: ``bands`` when given (e.g. (3, 2, 1)), else
    those its colour interpretation names red, green and blue, else bands 1-3 (one band: grey).
    """
    if bands:
        bands = [int(b) for b in bands]
        if len(bands) != 3 or not all(1 <= b <= src.count for b in bands):
            raise SceneError(f"--bands {bands}: give three band numbers in 1..{src.count}")
        return bands
    interp = list(src.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in interp for c in wanted):
        return [interp.index(c) + 1 for c in wanted]
    return [1, 2, 3] if src.count >= 3 else [1, 1, 1]


class SceneReader:
    """
    Reads an image or GeoTIFF window by window (never the whole scene at full resolution) and
    returns RGB uint8 tiles with their valid-pixel masks.

    * Bands: see :func:`pick_bands` (colour interpretation first, so B,G,R,NIR is read as R,G,B).
    * Nodata: the raster's mask (nodata value, alpha or mask band) and NaN are invalid pixels;
      they are excluded from the stretch and come out black with ``valid`` False.
    * Rasters other than uint8 are stretched between the 2nd and 98th percentiles of their valid
      pixels, estimated on a decimated read (the same stretch training images get).

    ``largest_read`` records the largest array read (pixels).
    """

    def __init__(self, path, max_overview=1024, bands=None):
        self.path = path
        try:
            self.src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as e:
            kind = "not found" if not os.path.exists(path) else "not a readable raster or image"
            raise SceneError(f"{path}: {kind} ({e})") from None
        if self.src.width == 0 or self.src.height == 0:
            raise SceneError(f"{path}: empty raster ({self.src.width}x{self.src.height})")
        self.bands = pick_bands(self.src, bands)
        self.largest_read = 0
        self.georeferenced = self.src.crs is not None and not self.src.transform.is_identity
        # A geotransform without a CRS: map coordinates of unknown meaning.
        self.transform_without_crs = self.src.crs is None and not self.src.transform.is_identity
        # Without any nodata description, all-zero tiles are taken as no data (scene collars).
        self.declares_nodata = self.src.nodata is not None or any(
            MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in self.src.mask_flag_enums
        )
        scale = min(1.0, max_overview / max(self.src.width, self.src.height))
        self.overview_shape = (
            max(1, round(self.src.height * scale)),
            max(1, round(self.src.width * scale)),
        )
        self._range = None
        if self.src.dtypes[self.bands[0] - 1] != "uint8":
            arr, valid = self._read(out_shape=(3, *self.overview_shape))
            if not valid.any():
                raise SceneError(f"{path}: the scene holds no valid pixel (all nodata)")
            self._range = stretch_range(arr, valid[None])

    @property
    def width(self):
        return self.src.width

    @property
    def height(self):
        return self.src.height

    def _read(self, **kwargs):
        """(bands array (3, h, w), valid mask (h, w))"""
        arr = self.src.read(self.bands, **kwargs)
        valid = self.src.read_masks(self.bands, **kwargs).min(axis=0) > 0
        if np.issubdtype(arr.dtype, np.floating):
            valid &= np.isfinite(arr).all(axis=0)
        self.largest_read = max(self.largest_read, arr.shape[-1] * arr.shape[-2])
        return arr, valid

    def _to_uint8(self, arr, valid):
        if self._range is not None:
            arr = stretch_to_uint8(arr, *self._range)
        arr = arr.transpose(1, 2, 0).copy()
        arr[~valid] = 0
        return arr

    def overview(self):
        """The scene decimated to at most ``max_overview`` pixels a side, (h, w, 3) uint8."""
        return self._to_uint8(*self._read(out_shape=(3, *self.overview_shape)))

    def read_tile(self, tile):
        """
        Returns:
            (image, valid): RGB uint8 (h, w, 3) of a tile (invalid pixels black) and its valid
            pixels (h, w) bool; a tile with no valid pixel is to be skipped.
        """
        arr, valid = self._read(window=tile.window)
        image = self._to_uint8(arr, valid)
        if not self.declares_nodata and not image.any():
            valid = np.zeros_like(valid)
        return image, valid

    def close(self):
        self.src.close()


def masks_to_polygons(masks, tile):
    """
    Predicted masks of a tile -> shapely geometries in scene pixel coordinates (x, y), one
    (Multi)Polygon per mask (None for an empty mask).
    """
    out = []
    to_scene = Affine.translation(tile.x, tile.y)
    for m in masks:
        m = np.ascontiguousarray(m.astype(np.uint8))
        # Pixel-edge outlines, simplified by half a pixel (drops the staircase vertices).
        parts = [
            shape(g).simplify(0.5)
            for g, v in raster_shapes(m, mask=m.astype(bool), transform=to_scene)
            if v
        ]
        parts = [p for p in parts if not p.is_empty]
        if not parts:
            out.append(None)
            continue
        # Connected components of one mask are disjoint: no union needed.
        geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        out.append(geom if geom.is_valid else shapely.make_valid(geom))
    return out


def touches_inner_edge(geom, tile, scene_w, scene_h, tol=0.5):
    """Whether ``geom`` reaches an edge of ``tile`` that is not an edge of the scene (cut object)."""
    x0, y0, x1, y1 = geom.bounds
    return (
        (tile.x > 0 and x0 <= tile.x + tol)
        or (tile.y > 0 and y0 <= tile.y + tol)
        or (tile.x + tile.width < scene_w and x1 >= tile.x + tile.width - tol)
        or (tile.y + tile.height < scene_h and y1 >= tile.y + tile.height - tol)
    )


def _nms(geoms, iou_threshold):
    """Greedy non-maximum suppression of score-sorted geometries by polygon IoU -> keep mask."""
    keep = np.zeros(len(geoms), dtype=bool)
    if not geoms:
        return keep
    arr = np.array(geoms, dtype=object)
    areas = shapely.area(arr)
    bounds = shapely.bounds(arr)
    tree = STRtree(arr)
    for i, g in enumerate(arr):
        js = tree.query(g)
        js = js[keep[js]]  # only already kept (higher-scoring) neighbours can suppress
        if len(js):
            # IoU <= (box intersection) / max(area): skip pairs that cannot reach the threshold.
            lo = np.maximum(bounds[js, :2], bounds[i, :2])
            hi = np.minimum(bounds[js, 2:], bounds[i, 2:])
            box_inter = np.clip(hi - lo, 0, None).prod(1)
            js = js[box_inter > iou_threshold * np.maximum(areas[js], areas[i])]
        if len(js):
            inter = shapely.area(shapely.intersection(g, arr[js]))
            iou = inter / np.maximum(areas[js] + areas[i] - inter, 1e-9)
            if (iou > iou_threshold).any():
                continue
        keep[i] = True
    return keep


def stitch(detections, iou_threshold=0.5):
    """
    One feature per object across overlapping tiles.

    Args:
        detections (list[dict]): "geometry" (shapely, scene pixels), "score", "category_id",
            "cut" (touches an inner tile edge), "tile" (the tile's x0, y0, x1, y1).

    Objects wholly inside some tile are kept from that tile (duplicates from other tiles that
    also hold them whole are suppressed by IoU); an object cut by tile borders is the union of
    its parts from neighbouring tiles (parts that agree, IoU > 0.5, where the tiles overlap),
    unless a whole copy of it exists.

    Returns:
        list[dict]: the stitched detections, highest score first.
    """
    whole = sorted((d for d in detections if not d["cut"]), key=lambda d: -d["score"])
    keep = _nms([d["geometry"] for d in whole], iou_threshold)
    kept = [d for d, k in zip(whole, keep) if k]
    tree_geoms = [d["geometry"] for d in kept]
    whole_tree = STRtree(tree_geoms) if tree_geoms else None

    cut = [d for d in detections if d["cut"]]
    if cut:
        geoms = [d["geometry"] for d in cut]
        tree = STRtree(geoms)
        parent = list(range(len(cut)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, g in enumerate(geoms):
            for j in tree.query(g, predicate="intersects"):
                a, b = cut[i], cut[j]
                if j <= i or a["tile"] == b["tile"] or a["category_id"] != b["category_id"]:
                    continue
                # The same object seen from two tiles: its two parts agree where the tiles overlap.
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["tile"], b["tile"]
                shared = shapely_box(max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1))
                pa, pb = g.intersection(shared), geoms[j].intersection(shared)
                inter = pa.intersection(pb).area
                if inter > 0.5 * (pa.area + pb.area - inter):
                    parent[find(i)] = find(j)
        groups = {}
        for i in range(len(cut)):
            groups.setdefault(find(i), []).append(cut[i])
        for members in groups.values():
            geom = shapely.make_valid(shapely.union_all([m["geometry"] for m in members]))
            best = max(members, key=lambda m: m["score"])
            if whole_tree is not None:
                near = [tree_geoms[k] for k in whole_tree.query(geom)]
                if any(g.intersection(geom).area > 0.5 * min(g.area, geom.area) for g in near):
                    continue  # a whole copy of this object was kept
            kept.append(dict(best, geometry=geom, cut=False))
    return sorted(kept, key=lambda d: -d["score"])
