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
from rasterio.features import shapes as raster_shapes
from rasterio.windows import Window
from shapely.geometry import box as shapely_box
from shapely.geometry import shape
from shapely.strtree import STRtree

logger = logging.getLogger(__name__)

__all__ = ["Tile", "tile_grid", "SceneReader", "masks_to_polygons", "stitch", "SceneError"]


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


class SceneReader:
    """
    Reads an image or GeoTIFF window by window (never the whole scene at full resolution) and
    returns RGB uint8 tiles. Rasters of other types are scaled with the scene's 2-98 percentiles,
    estimated on a decimated read. ``largest_read`` records the largest array read (pixels).
    """

    def __init__(self, path, max_overview=1024):
        self.path = path
        try:
            self.src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as e:
            kind = "not found" if not os.path.exists(path) else "not a readable raster or image"
            raise SceneError(f"{path}: {kind} ({e})") from None
        if self.src.width == 0 or self.src.height == 0:
            raise SceneError(f"{path}: empty raster ({self.src.width}x{self.src.height})")
        self.bands = [1, 2, 3] if self.src.count >= 3 else [1, 1, 1]
        self.largest_read = 0
        self.georeferenced = self.src.crs is not None and not self.src.transform.is_identity
        scale = min(1.0, max_overview / max(self.src.width, self.src.height))
        self.overview_shape = (
            max(1, round(self.src.height * scale)),
            max(1, round(self.src.width * scale)),
        )
        self._lo = self._hi = None
        if self.src.dtypes[0] != "uint8":
            ov = self.overview()
            self._lo, self._hi = np.percentile(ov, 2), np.percentile(ov, 98)

    @property
    def width(self):
        return self.src.width

    @property
    def height(self):
        return self.src.height

    def _read(self, **kwargs):
        arr = self.src.read(self.bands, **kwargs)
        self.largest_read = max(self.largest_read, arr.shape[-1] * arr.shape[-2])
        return arr

    def overview(self):
        """The scene decimated to at most ``max_overview`` pixels a side, (h, w, 3)."""
        arr = self._read(out_shape=(3, *self.overview_shape)).transpose(1, 2, 0)
        return self._to_uint8(arr) if self._lo is not None else arr

    def _to_uint8(self, arr):
        if self._lo is None:
            return arr
        return (
            np.clip((arr.astype(np.float32) - self._lo) / max(self._hi - self._lo, 1e-6), 0, 1)
            * 255
        ).astype(np.uint8)

    def read_tile(self, tile):
        """RGB uint8 array (h, w, 3) of a tile."""
        return self._to_uint8(self._read(window=tile.window).transpose(1, 2, 0))

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
