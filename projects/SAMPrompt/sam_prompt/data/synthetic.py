"""
Synthetic ice-wedge-polygon (IWP) tiles: a deterministic stand-in for satellite imagery.

Each tile is a network of Voronoi-like polygonal cells separated by darker troughs. ``lowcenter``
cells have a wet (dark, bluish) centre, ``highcenter`` cells a raised, brighter, drier one. Texture,
noise and uneven illumination make them less trivial. Every cell is labelled with the polygon of its
interior (cells cut by the tile border too), and tiles are written in the formats of real data
(see :mod:`sam_prompt.data.formats`).

``style="realistic"`` draws every tile's look at random instead, towards the variety of real
imagery (used to pretrain the small SAM of ``sam_small_cpu.yaml``, see ``make pretrain``): cell
scale, trough width and contrast (dark or bright troughs, some barely visible), false-colour
palettes, multi-scale coloured texture, vegetation patches that ignore the cells, raised rims of
lowcenter cells, blur, noise, and partial labels (some cells drawn but not labelled, as in
hand-labelled tiles).
"""

import logging
import os
from dataclasses import dataclass

import numpy as np
import shapely
from PIL import Image, ImageDraw
from scipy import ndimage
from shapely.geometry import MultiPoint, box

logger = logging.getLogger(__name__)

CLASSES = ("highcenter", "lowcenter")


@dataclass
class SyntheticIWPSpec:
    """What to generate. Same spec and seed -> byte-identical files."""

    num_train: int = 24
    num_test: int = 8
    image_size: int = 256
    # Mean distance between neighbouring cell centres, in pixels.
    cell_spacing: float = 48.0
    # Trough width between cells, in pixels.
    trough_width: float = 5.0
    # Fraction of cells that are lowcenter.
    lowcenter_fraction: float = 0.4
    # Cells (after clipping to the tile) smaller than this many pixels are merged into troughs.
    min_cell_area: float = 60.0
    seed: int = 0
    # "clean" (the demo's fixed look) or "realistic" (drawn per tile; the three fields above are
    # then ranges' centres, see _realistic_tile).
    style: str = "clean"


def _cells(rng, spec):
    """Cell polygons of one tile (clipped to it), with their classes."""
    s = spec.image_size
    step = spec.cell_spacing
    # Jittered grid of seeds, extending past the tile so that border cells look natural.
    coords = np.arange(-step, s + step, step)
    gx, gy = np.meshgrid(coords, coords)
    seeds = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-0.4, 0.4, (gx.size, 2)) * step
    seeds[:, 0] += rng.uniform(0, step)
    seeds[:, 1] += rng.uniform(0, step)
    tile = box(0, 0, s, s)
    region = box(-2 * step, -2 * step, s + 2 * step, s + 2 * step)
    voronoi = shapely.voronoi_polygons(MultiPoint(seeds), extend_to=region)
    cells = []
    for cell in voronoi.geoms:
        inner = cell.buffer(-spec.trough_width / 2, join_style="round")
        # Soften the corners a little, as real polygons are rounded.
        inner = inner.buffer(-spec.trough_width / 2).buffer(spec.trough_width / 2)
        inner = inner.intersection(tile)
        if inner.is_empty or inner.area < spec.min_cell_area:
            continue
        if inner.geom_type != "Polygon":  # a sliver split by the border: keep the largest part
            inner = max(inner.geoms, key=lambda g: g.area)
            if inner.geom_type != "Polygon" or inner.area < spec.min_cell_area:
                continue
        inner = inner.simplify(0.3)
        cls = int(rng.random() < spec.lowcenter_fraction)
        cells.append((inner, cls))
    return cells


def _render(rng, spec, cells):
    s = spec.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    illumination = 30 * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    texture = ndimage.gaussian_filter(rng.normal(size=(s, s)), 6) * 60

    canvas = Image.new("F", (s, s), -1.0)
    wet_canvas = Image.new("F", (s, s), 0.0)
    draw, wet_draw = ImageDraw.Draw(canvas), ImageDraw.Draw(wet_canvas)
    for poly, cls in cells:
        draw.polygon(
            [tuple(p) for p in np.asarray(poly.exterior.coords)], fill=1.0 if cls == 0 else 0.4
        )
        if cls == 1:  # lowcenter: a wet centre
            r = np.sqrt(poly.area / np.pi)
            centre = poly.buffer(-0.35 * r)
            if not centre.is_empty and centre.geom_type == "Polygon":
                wet_draw.polygon([tuple(p) for p in np.asarray(centre.exterior.coords)], fill=1.0)
    height = ndimage.gaussian_filter(np.asarray(canvas), 1.0)
    wet = ndimage.gaussian_filter(np.asarray(wet_canvas), 2.0)

    base = np.array([128, 120, 100], dtype=np.float32)  # tundra
    img = base + (illumination + texture)[..., None]
    img += (28 * height)[..., None]  # troughs darker, high centres brighter
    img += wet[..., None] * np.array([-55, -40, -10], dtype=np.float32)  # water: dark, bluish
    img += rng.normal(scale=5, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    n = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return n / max(float(n.std()), 1e-6)


def _realistic_tile(rng, spec):
    """Cells and image of one tile whose look is drawn at random (``style="realistic"``)."""
    s = spec.image_size
    look = dict(
        cell_spacing=spec.cell_spacing * rng.uniform(0.35, 1.0),
        trough_width=spec.trough_width * rng.uniform(0.3, 1.2),
        lowcenter_fraction=rng.uniform(0.1, 0.8),
    )
    tile_spec = SyntheticIWPSpec(**{**spec.__dict__, **look, "style": "clean"})
    cells = _cells(rng, tile_spec)

    inside = Image.new("F", (s, s), 0.0)
    wet_canvas = Image.new("F", (s, s), 0.0)
    low_canvas = Image.new("F", (s, s), 0.0)
    draw, wet_draw, low_draw = (ImageDraw.Draw(c) for c in (inside, wet_canvas, low_canvas))
    for poly, cls in cells:
        ring = [tuple(p) for p in np.asarray(poly.exterior.coords)]
        draw.polygon(ring, fill=1.0)
        if cls == 1:
            low_draw.polygon(ring, fill=1.0)
            centre = poly.buffer(-0.35 * np.sqrt(poly.area / np.pi))
            if not centre.is_empty and centre.geom_type == "Polygon":
                wet_draw.polygon([tuple(p) for p in np.asarray(centre.exterior.coords)], fill=1.0)
    inside = np.asarray(inside)
    trough = 1.0 - ndimage.gaussian_filter(inside, rng.uniform(0.5, 1.5))
    # Raised rims: lowcenter cells brighter near their edges.
    depth = ndimage.distance_transform_edt(inside > 0.5)
    rim = np.exp(-depth / rng.uniform(1.5, 4.0)) * np.asarray(low_canvas)
    wet = ndimage.gaussian_filter(np.asarray(wet_canvas), rng.uniform(1.0, 3.0))

    def colour(scale):
        return rng.normal(0, scale, 3).astype(np.float32)

    ground = rng.uniform(60, 190, 3).astype(np.float32)  # false colour: any hue
    img = np.broadcast_to(ground, (s, s, 3)).astype(np.float32)
    for sigma in (0.7, 2.0, 6.0, 20.0):  # coloured texture at several scales
        img = img + _smooth_noise(rng, (s, s), sigma)[..., None] * colour(rng.uniform(2, 10))
    # Vegetation (or water, or snow) patches that ignore the cells.
    patches = _smooth_noise(rng, (s, s), rng.uniform(4, 12)) > rng.uniform(1.0, 2.5)
    patches = ndimage.gaussian_filter(patches.astype(np.float32), 1.0)
    img += patches[..., None] * colour(35)
    # Troughs darker (most tiles) or brighter, some barely visible.
    sign = -1.0 if rng.random() < 0.8 else 1.0
    img += trough[..., None] * sign * rng.uniform(15, 70) * rng.uniform(0.6, 1.0, 3)
    img += rim[..., None] * rng.uniform(0, 40)
    img += wet[..., None] * (colour(20) - rng.uniform(10, 50))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    img += (rng.uniform(0, 50) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)))[
        ..., None
    ]
    img = ndimage.gaussian_filter(img, (rng.uniform(0, 1.2),) * 2 + (0,))
    img += rng.normal(scale=rng.uniform(2, 10), size=img.shape)
    # Partial labels: some cells are drawn but not labelled.
    labelled = rng.random(len(cells)) < rng.uniform(0.7, 1.0)
    cells = [c for c, keep in zip(cells, labelled) if keep]
    return cells, np.clip(img, 0, 255).astype(np.uint8)


def generate_tile(spec, split, index):
    """
    One synthetic tile.

    Returns:
        image (ndarray[H, W, 3] uint8 RGB), annotations (list[dict] with "polygon" (ndarray[K, 2])
        and "category_id" (0 = highcenter, 1 = lowcenter)).
    """
    rng = np.random.default_rng([spec.seed, {"train": 0, "test": 1}[split], index])
    if spec.style == "realistic":
        cells, image = _realistic_tile(rng, spec)
    elif spec.style == "clean":
        cells = _cells(rng, spec)
        image = _render(rng, spec, cells)
    else:
        raise ValueError(f"SyntheticIWPSpec.style={spec.style!r}: 'clean' or 'realistic'")
    annos = []
    for poly, cls in cells:
        xy = np.round(np.asarray(poly.exterior.coords)[:-1], 2)
        annos.append(
            {
                "segmentation": [xy.ravel().tolist()],
                "bbox": [float(v) for v in (*xy.min(0), *xy.max(0))],
                "bbox_mode": 0,  # BoxMode.XYXY_ABS
                "category_id": cls,
            }
        )
    return image, annos


def generate_dataset(root, spec=SyntheticIWPSpec(), fmt="via"):
    """
    Write a synthetic IWP dataset under ``root`` (``train/`` and ``test/``) in format ``fmt``
    (see :func:`sam_prompt.data.formats.write_dataset`). Returns ``root``.
    """
    from .formats import write_dataset

    for split, n in (("train", spec.num_train), ("test", spec.num_test)):
        records = []
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(n):
            image, annos = generate_tile(spec, split, i)
            file_name = f"iwp_{split}_{i:04d}.png"
            Image.fromarray(image).save(os.path.join(root, split, file_name))
            records.append(
                {
                    "file_name": file_name,
                    "height": image.shape[0],
                    "width": image.shape[1],
                    "image_id": i,
                    "annotations": annos,
                }
            )
        write_dataset(root, split, records, CLASSES, fmt)
    logger.info(f"Wrote synthetic IWP dataset ({spec}) to {root} as {fmt}")
    return root
