"""
Vector outputs mappers open in a GIS: GeoJSON and GeoPackage (GDAL, through pyogrio), and the
merge of many scenes' predictions into one layer without the duplicates of overlapping scenes.
"""

import json
import logging
import os

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.strtree import STRtree

__all__ = ["FORMATS", "write_features", "read_features", "merge_layers"]

logger = logging.getLogger(__name__)

# --format choices and the file extension of each.
FORMATS = {"geojson": ".geojson", "gpkg": ".gpkg"}
LAYER = "predictions"


def write_features(path, geoms, props, crs):
    """
    Write polygons with their properties.

    Args:
        path (str): ``.geojson`` (with a ``crs`` member, as GDAL reads it) or ``.gpkg``.
        geoms (list[shapely geometry]): in ``crs``.
        props (list[dict]): one dict per geometry, the same keys for all.
        crs (str): e.g. "EPSG:32606".
    """
    if path.endswith(".geojson"):
        feats = [
            {"type": "Feature", "geometry": mapping(g), "properties": p}
            for g, p in zip(geoms, props)
        ]
        gj = {
            "type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": crs}},
            "features": feats,
        }
        with open(path, "w") as fh:
            json.dump(gj, fh)
        return path
    if not path.endswith(".gpkg"):
        raise ValueError(f"{path}: vector outputs are .geojson or .gpkg")
    from pyogrio.raw import write

    keys = list(props[0]) if props else ["category_id", "score"]
    fields = [np.array([p.get(k) for p in props], dtype=_dtype(props, k)) for k in keys]
    if os.path.exists(path):  # rewritten whole (outputs are rebuilt from the tile log)
        os.remove(path)
    write(
        path,
        shapely.to_wkb(np.array(geoms, dtype=object)) if geoms else np.array([], dtype=object),
        fields,
        keys,
        layer=LAYER,
        driver="GPKG",
        geometry_type="MultiPolygon",
        promote_to_multi=True,
        crs=crs,
    )
    return path


def _dtype(props, key):
    values = [p.get(key) for p in props]
    if all(isinstance(v, (int, np.integer)) for v in values):
        return np.int64
    if all(isinstance(v, (int, float, np.number)) for v in values):
        return np.float64
    return object


def read_features(path):
    """(geometries, properties, CRS) of a GeoJSON or GeoPackage written by :func:`write_features`."""
    from pyogrio.raw import read

    meta, _, wkb, fields = read(path)
    geoms = list(shapely.from_wkb(wkb)) if wkb is not None else []
    props = (
        [
            {name: (v.item() if hasattr(v, "item") else v) for name, v in zip(meta["fields"], row)}
            for row in zip(*fields)
        ]
        if len(fields)
        else [{} for _ in geoms]
    )
    return geoms, props, meta["crs"]


def merge_layers(paths, out_path, crs=None, iou_threshold=0.5):
    """
    One layer for many scenes' predictions, with a ``scene`` attribute on each feature. Where
    scene footprints overlap, the same object seen in two scenes (same class, IoU above
    ``iou_threshold``) is kept once, by score (an R-tree finds the candidates).

    Args:
        paths (list[str]): each scene's ``.geojson`` or ``.gpkg``; the scene is its file stem.
        out_path (str): ``.geojson`` or ``.gpkg``.
        crs (str): the output CRS (default: the first input's); others are reprojected.

    Returns:
        (kept, dropped): feature counts.
    """
    geoms, props = [], []
    target = CRS.from_user_input(crs) if crs else None
    for path in paths:
        g, p, src_crs = read_features(path)
        if src_crs is None:
            raise ValueError(f"{path} has no CRS: scenes can only be merged in map coordinates")
        src = CRS.from_user_input(src_crs)
        target = target or src
        if src != target:
            g = [shape(transform_geom(src, target, mapping(x))) for x in g]
        scene = os.path.splitext(os.path.basename(path))[0]
        geoms += g
        props += [dict(q, scene=scene) for q in p]
    order = sorted(range(len(geoms)), key=lambda i: -float(props[i].get("score") or 0))
    keep = np.zeros(len(geoms), dtype=bool)
    tree = STRtree(geoms) if geoms else None
    areas = shapely.area(np.array(geoms, dtype=object)) if geoms else []
    for i in order:
        suppressed = False
        for j in tree.query(geoms[i]) if tree is not None else []:
            if not keep[j] or props[j]["scene"] == props[i]["scene"]:
                continue
            if props[j].get("category_id") != props[i].get("category_id"):
                continue
            inter = geoms[i].intersection(geoms[j]).area
            if inter > iou_threshold * (areas[i] + areas[j] - inter):
                suppressed = True
                break
        keep[i] = not suppressed
    kept = [i for i in order if keep[i]]
    write_features(out_path, [geoms[i] for i in kept], [props[i] for i in kept], target.to_string())
    logger.info(
        f"merged {len(paths)} scenes into {out_path}: {len(kept)} features, {len(geoms) - len(kept)} duplicates dropped"
    )
    return len(kept), len(geoms) - len(kept)
