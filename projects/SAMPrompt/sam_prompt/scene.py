"""Predict over whole scenes tile by tile (``tools/predict.py``)."""

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import shapely
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from pycocotools import mask as mask_util
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely import affinity
from shapely.geometry import shape
from tqdm import tqdm

from .checkpoint import SAMCheckpointer
from .modeling import uses_prompts
from .modeling.build_sam import sam_arch_from_cfg
from .prompts import prompt_instances
from .tiling import (
    SceneError,
    SceneReader,
    masks_to_polygons,
    stitch,
    tile_grid,
    touches_inner_edge,
)
from .transforms import ResizeLongestSide
from .vector import FORMATS, write_features

__all__ = ["TileModel", "load_prompts", "predict_scene"]

logger = logging.getLogger(__name__)


class TileModel:
    """A Detectron2 model (SAMPrompt or a detector) applied to RGB tiles with optional prompts."""

    def __init__(self, cfg):
        self.model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            SAMCheckpointer.from_config(cfg, self.model).load(cfg.MODEL.WEIGHTS)
        if hasattr(self.model, "check_prompts_trained"):  # before any tile: one prompt per object
            self.model.check_prompts_trained()
        self.model.eval()
        self.input_format = cfg.INPUT.FORMAT
        if uses_prompts(cfg):  # the mapper's resize: image and prompts share one transform
            self.resize = ResizeLongestSide(sam_arch_from_cfg(cfg)["image_size"])
        else:
            self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.needs_prompts, self.prompt_type = self.describe(cfg)

    @staticmethod
    def describe(cfg):
        """(needs prompts from a file, prompt type) of ``cfg``'s model, without building it."""
        prompted = uses_prompts(cfg)
        needs = prompted and cfg.MODEL.META_ARCHITECTURE != "DetectorPromptedSAM"
        return needs, (cfg.MODEL.SAM.PROMPT.TYPE if prompted else None)

    def __call__(self, images, prompts):
        """
        Args:
            images (list[ndarray[h, w, 3] uint8]): RGB tiles.
            prompts (list[tuple]): per tile (boxes [N, 4] or None, points [N, 2] or None,
                classes [N]) in tile pixels (used when the model needs prompts).

        Returns:
            list[Instances]: predictions at each tile's size, on the CPU.
        """
        inputs = []
        for img, (boxes, points, classes) in zip(images, prompts):
            h, w = img.shape[:2]
            arr = img if self.input_format == "RGB" else img[:, :, ::-1]
            transform = self.resize.get_transform(arr)
            x = {
                "image": torch.as_tensor(
                    np.ascontiguousarray(transform.apply_image(arr).transpose(2, 0, 1))
                )
            }
            x.update(height=h, width=w)
            if self.needs_prompts:
                x["instances"] = prompt_instances(
                    x["image"].shape[-2:],
                    classes=classes,
                    boxes=None if boxes is None else transform.apply_box(boxes),
                    points=(
                        None
                        if points is None
                        else transform.apply_coords(np.array(points, dtype=np.float64))
                    ),
                )
            inputs.append(x)
        with torch.no_grad():
            return [o["instances"].to("cpu") for o in self.model(inputs)]


def _geojson_crs(obj, path):
    """The CRS of a GeoJSON object: its (pre-RFC 7946) ``crs`` member, else WGS84 (RFC 7946)."""
    member = obj.get("crs")
    if member is None:
        return CRS.from_epsg(4326), False
    try:
        return CRS.from_user_input((member.get("properties") or {}).get("name")), True
    except Exception as e:
        raise SceneError(f"{path}: unreadable 'crs' member {member!r} ({e})") from None


def load_prompts(path, reader, strict=True):
    """
    Prompts in scene pixels from a COCO file (results list or instances dict: boxes, in pixels)
    or a GeoJSON FeatureCollection (Polygon -> its bounding box, Point -> a point; class from the
    "category_id" property).

    GeoJSON coordinates are in the CRS of its ``crs`` member, or WGS84 without one (RFC 7946), and
    are reprojected to the raster's CRS. A raster without CRS takes GeoJSON prompts as pixel
    coordinates only when it has no geotransform either and the GeoJSON declares no CRS; other
    combinations are refused. Prompts outside the scene are dropped with a warning; when none is
    inside and ``strict``, it is an error (a CRS mix-up; a run over many scenes checks that some
    scene had prompts instead).

    Returns:
        (boxes ndarray[N, 4] or None, points ndarray[N, 2] or None, classes ndarray[N])
    """
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise SceneError(f"prompts file {path} not found") from None
    except ValueError as e:
        raise SceneError(f"prompts file {path} is not JSON ({e})") from None
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        crs, declared = _geojson_crs(obj, path)
        if reader.transform_without_crs:
            raise SceneError(
                f"{reader.path} has a geotransform but no CRS, so the map coordinates of {path} "
                "cannot be placed: set the raster's CRS (gdal_edit.py -a_srs EPSG:XXXX) or give "
                "prompts in pixels (COCO JSON)"
            )
        if not reader.georeferenced and declared:
            raise SceneError(
                f"{path} is in {crs.to_string()} but {reader.path} has no CRS: georeference the "
                "raster, or give pixel prompts (a GeoJSON without 'crs', or COCO JSON)"
            )
        to_pixel = ~reader.src.transform if reader.georeferenced else None
        boxes, points, classes = [], [], []
        for i, feat in enumerate(obj.get("features") or []):
            try:
                g = shape(feat["geometry"])
            except Exception as e:
                raise SceneError(f"{path}: feature {i} has no usable geometry ({e})") from None
            if to_pixel is not None and crs != reader.src.crs:
                try:
                    g = shape(transform_geom(crs, reader.src.crs, feat["geometry"]))
                except Exception as e:
                    raise SceneError(
                        f"{path}: feature {i} cannot be reprojected from {crs.to_string()} to "
                        f"{reader.src.crs.to_string()} ({e}): check the prompts' CRS (a GeoJSON "
                        "without a 'crs' member is WGS84)"
                    ) from None
            if to_pixel is not None:
                g = affinity.affine_transform(
                    g,
                    [to_pixel.a, to_pixel.b, to_pixel.d, to_pixel.e, to_pixel.xoff, to_pixel.yoff],
                )
            if g.geom_type == "Point":
                points.append([g.x, g.y])
            elif g.geom_type in ("Polygon", "MultiPolygon"):
                boxes.append(list(g.bounds))
            else:
                raise SceneError(
                    f"{path}: feature {i} is a {g.geom_type}; prompts are Points or Polygons"
                )
            classes.append(int((feat.get("properties") or {}).get("category_id", 0)))
        if boxes and points:
            raise SceneError(f"{path}: mixes Point and Polygon prompts; use one kind per run")
    else:
        anns = obj["annotations"] if isinstance(obj, dict) else obj
        boxes = [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ]
        points, classes = [], [int(a.get("category_id", 0)) for a in anns]
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4) if boxes else None
    points = np.array(points, dtype=np.float64).reshape(-1, 2) if points else None
    classes = np.array(classes, dtype=np.int64)
    extent = boxes if boxes is not None else None if points is None else np.hstack([points, points])
    if extent is not None:
        inside = (
            (extent[:, 2] > 0)
            & (extent[:, 3] > 0)
            & (extent[:, 0] < reader.width)
            & (extent[:, 1] < reader.height)
        )
        if not inside.any() and strict:
            raise SceneError(
                f"none of the {len(extent)} prompts of {path} falls inside {reader.path} "
                f"({reader.width}x{reader.height} px): check the prompts' CRS"
            )
        if not inside.all():
            logger.warning(
                f"{path}: {int((~inside).sum())} prompts outside {reader.path} are ignored"
            )
            boxes = None if boxes is None else boxes[inside]
            points = None if points is None else points[inside]
            classes = classes[inside]
    return boxes, points, classes


def _assign(prompts, tiles):
    """Each prompt goes to one tile: one holding it whole, nearest the tile centre."""
    boxes, points, classes = prompts
    b = boxes if boxes is not None else np.concatenate([points, points], axis=1)
    t = np.array([[t.x, t.y, t.x + t.width, t.y + t.height] for t in tiles], dtype=np.float64)
    inside = (
        (b[:, None, 0] >= t[None, :, 0])
        & (b[:, None, 1] >= t[None, :, 1])
        & (b[:, None, 2] <= t[None, :, 2])
        & (b[:, None, 3] <= t[None, :, 3])
    )
    centre_b = (b[:, None, :2] + b[:, None, 2:]) / 2
    centre_t = (t[None, :, :2] + t[None, :, 2:]) / 2
    dist = np.abs(centre_b - centre_t).max(-1)
    inter = np.clip(
        np.minimum(b[:, None, 2:], t[None, :, 2:]) - np.maximum(b[:, None, :2], t[None, :, :2]),
        0,
        None,
    ).prod(-1)
    choice = np.where(inside.any(1), np.where(inside, dist, np.inf).argmin(1), inter.argmax(1))
    per_tile = {}
    for i, k in enumerate(choice):
        per_tile.setdefault(int(k), []).append(i)
    out = {}
    for k, idx in per_tile.items():
        off = np.array([tiles[k].x, tiles[k].y], dtype=np.float64)
        out[k] = (
            None if boxes is None else boxes[idx] - np.tile(off, 2),
            None if points is None else points[idx] - off,
            classes[idx],
        )
    return out


def _empty_prompts():
    return (np.zeros((0, 4)), None, np.zeros(0, dtype=np.int64))


def file_digest(path, chunk=1 << 20):
    """sha1 of a file's content (model weights: a resumed run must use the same model)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_digest(cfg):
    """A digest of the config and the weights of a model: what makes its predictions."""
    h = hashlib.sha1(cfg.dump().encode())
    for path in (cfg.MODEL.WEIGHTS, getattr(cfg.MODEL, "SAM", {}).get("CHECKPOINT", "")):
        if path:
            h.update(file_digest(path).encode())
    return h.hexdigest()


class TileLog:
    """
    ``tiles.jsonl`` of an output folder: one line per finished tile, so that a run resumes where
    it stopped; a line cut by an interruption is dropped (that tile is redone).
    """

    def __init__(self, path):
        self.path = path
        self.done = set()
        if os.path.exists(path):
            with open(path) as f:
                lines = f.readlines()
            kept = []
            for line in lines:
                try:
                    self.done.add(json.loads(line)["tile"])
                    kept.append(line)
                except (ValueError, KeyError):
                    break
            if len(kept) != len(lines):
                with open(path, "w") as f:
                    f.writelines(kept)

    def append(self, lines):
        with open(self.path, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)

    def records(self, tiles):
        """(detections as stitch() takes them, number of tiles without data)."""
        boxes = {t.index: (t.x, t.y, t.x + t.width, t.y + t.height) for t in tiles}
        records, empty = [], 0
        with open(self.path) as f:
            lines = sorted((json.loads(line) for line in f), key=lambda r: r["tile"])
        for r in lines:  # tile order: the same stitching whatever order tiles finished in
            empty += r["empty"]
            for d in r["dets"]:
                records.append(
                    {
                        "geometry": shapely.from_wkt(d["wkt"]),
                        "score": d["score"],
                        "category_id": d["category_id"],
                        "cut": d["cut"],
                        "tile": boxes[r["tile"]],
                    }
                )
        return records, empty


def ensure_writable(folder):
    """Create ``folder`` and write a file there, or raise a one-line SceneError."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise SceneError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None


def check_output_folder(folder, settings):
    """
    Create ``folder`` (a one-line error when it cannot be written) and claim it for ``settings``:
    a folder holding a run with other settings (another model, tiling or input) is refused.
    """
    ensure_writable(folder)
    run_file = os.path.join(folder, "run.json")
    if os.path.exists(run_file):
        with open(run_file) as f:
            previous = json.load(f)
        if previous != settings:
            changed = sorted(
                k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
            )
            raise SceneError(
                f"{folder} holds a run with other settings ({', '.join(changed)} differ): give "
                "another --output, or remove that folder to start again"
            )
    else:
        with open(run_file, "w") as f:
            json.dump(settings, f, indent=1)


def tile_detections(inst, tile, valid, cut_check):
    """Log records of one tile's predictions (masks kept inside the tile's valid pixels)."""
    dets = []
    if inst is None or not len(inst):
        return dets
    masks = inst.pred_masks.numpy() & valid[None]
    for g, s, c in zip(
        masks_to_polygons(masks, tile), inst.scores.tolist(), inst.pred_classes.tolist()
    ):
        if g is None:
            continue
        dets.append(
            {
                "wkt": shapely.to_wkt(g, rounding_precision=3),
                "score": s,
                "category_id": c,
                "cut": cut_check(g),
            }
        )
    return dets


@dataclass(frozen=True)
class PredictSettings:
    """
    How scenes are predicted, the same for both backends (:func:`predict_scene`,
    :func:`sam_prompt.ray_predict.predict_scenes_ray`).

    Attributes:
        tile_size, overlap (int): tiles and the pixels neighbours share (>= the largest object).
        batch_size (int): tiles per model call.
        prompts_file (str): COCO JSON or GeoJSON prompts (see :func:`load_prompts`), or None.
        class_names (list[str]): names written beside the class ids.
        overview_size (int): longest side of the overlay PNG.
        min_score (float): the map outputs and overlay keep features scoring at least this (the
            COCO results keep all, for AP).
        bands (list[int]): the raster's R, G, B band numbers (default: by colour interpretation).
        model_id (str): identifies the model (:func:`model_digest`); a folder holding a run of
            another model is refused.
        strict_prompts (bool): a scene none of whose prompts falls inside it is an error (a run
            over many scenes checks that some scene had prompts instead).
        formats (tuple[str]): map outputs of georeferenced scenes: "geojson" and/or "gpkg".
    """

    tile_size: int = 512
    overlap: int = 128
    batch_size: int = 4
    prompts_file: Optional[str] = None
    class_names: Optional[list] = None
    overview_size: int = 1024
    min_score: float = 0.5
    bands: Optional[list] = None
    model_id: Optional[str] = None
    strict_prompts: bool = True
    formats: tuple = ("geojson",)

    def run_json(self, path, bands):
        """What ties an output folder to a run (see :func:`check_output_folder`)."""
        return {
            "input": os.path.abspath(path),
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "prompts": os.path.abspath(self.prompts_file) if self.prompts_file else None,
            "bands": bands,
            "model": self.model_id,
        }


@dataclass
class ScenePlan:
    """What is known about one scene before any tile runs (both backends use it)."""

    path: str
    out_dir: str
    reader: SceneReader
    tiles: list
    per_tile: dict  # tile index -> prompts in tile pixels
    log: TileLog
    prompted: bool

    @property
    def num_prompts(self):
        return sum(len(p[2]) for p in self.per_tile.values())

    @property
    def todo(self):
        return [t for t in self.tiles if t.index not in self.log.done]


def plan_scene(path, out_dir, settings, *, needs_prompts, prompt_type):
    """
    Open a scene, claim its output folder (refusing one that holds another run), cut it into
    tiles, assign the prompts to tiles and read what a previous run finished.
    """
    s = settings
    if needs_prompts and not s.prompts_file:
        raise SceneError(
            "this SAM model needs prompts: give --prompts FILE, or set MODEL.SAM.PROMPT.SOURCE "
            "detector with MODEL.SAM.DETECTOR.CONFIG_FILE/WEIGHTS"
        )
    reader = SceneReader(path, max_overview=s.overview_size, bands=s.bands)
    try:
        check_output_folder(out_dir, s.run_json(path, reader.bands))
        tiles = tile_grid(reader.width, reader.height, s.tile_size, s.overlap)
        per_tile = {}
        if s.prompts_file:
            per_tile = _prompts_per_tile(
                needs_prompts, prompt_type, reader, s.prompts_file, tiles, s.strict_prompts
            )
        log = TileLog(os.path.join(out_dir, "tiles.jsonl"))
    except Exception:
        reader.close()
        raise
    return ScenePlan(path, out_dir, reader, tiles, per_tile, log, bool(s.prompts_file))


def finish_scene(plan, settings, *, seconds=0.0, tiles_run=0):
    """Stitch the scene's logged tiles and write its outputs; returns the run's summary."""
    records, empty = plan.log.records(plan.tiles)
    try:
        if empty == len(plan.tiles):
            raise SceneError(f"{plan.path}: the scene holds no data (every tile is nodata or zero)")
        features = records if plan.prompted else stitch(records)
        outputs = _write_outputs(
            plan.reader,
            features,
            plan.out_dir,
            plan.path,
            settings.class_names,
            settings.min_score,
            settings.formats,
        )
    finally:
        plan.reader.close()
    return {
        "tiles": len(plan.tiles),
        "tiles_run": tiles_run,
        "tiles_without_data": empty,
        "seconds": seconds,
        "tiles_per_s": tiles_run / seconds if seconds > 0 and tiles_run else float("nan"),
        "features": len(features),
        "prompts": plan.num_prompts,
        "outputs": outputs,
        "largest_read": plan.reader.largest_read,
    }


def predict_scene(model, path, out_dir, settings=None, **kwargs):
    """
    Predict one scene into ``out_dir`` in this process (resuming from its ``tiles.jsonl``).
    :mod:`sam_prompt.ray_predict` runs the same plan on a Ray cluster.

    Args:
        model: a :class:`TileModel` (or any callable with ``needs_prompts``).
        settings (PredictSettings): or its fields as keyword arguments.

    Returns:
        dict: summary (tiles, tiles_run, tiles_without_data, seconds, tiles_per_s, features,
        prompts, outputs, largest_read).
    """
    settings = settings or PredictSettings(**kwargs)
    plan = plan_scene(
        path,
        out_dir,
        settings,
        needs_prompts=model.needs_prompts,
        prompt_type=getattr(model, "prompt_type", None),
    )
    try:
        start = time.time()
        todo = plan.todo
        desc = os.path.basename(path)
        with tqdm(total=len(plan.tiles), initial=len(plan.log.done), unit="tile", desc=desc) as bar:
            for i in range(0, len(todo), settings.batch_size):
                batch = todo[i : i + settings.batch_size]
                plan.log.append(
                    predict_tiles(model, plan.reader, batch, plan.per_tile, plan.prompted)
                )
                bar.update(len(batch))
        seconds = time.time() - start
    except BaseException:
        plan.reader.close()
        raise
    return finish_scene(plan, settings, seconds=seconds, tiles_run=len(todo))


def _prompts_per_tile(needs_prompts, prompt_type, reader, prompts_file, tiles, strict=True):
    prompts = load_prompts(prompts_file, reader, strict)
    kinds = {"box": prompts[0] is not None, "point": prompts[1] is not None}
    if needs_prompts and len(prompts[2]) and not kinds[prompt_type]:
        given = "points" if kinds["point"] else "boxes (polygons)"
        raise SceneError(
            f"{prompts_file} holds {given} but the model takes {prompt_type} prompts "
            "(MODEL.SAM.PROMPT.TYPE)"
        )
    return _assign(prompts, tiles) if len(prompts[2]) else {}


def predict_tiles(model, reader, tiles, per_tile, prompted):
    """
    Log lines of ``tiles`` (one model call for those that hold data and, for a model that needs
    them, prompts).
    """
    read = [reader.read_tile(t) for t in tiles]
    prompts = [per_tile.get(t.index, _empty_prompts()) for t in tiles]
    run = [
        k
        for k, (_, valid) in enumerate(read)
        if valid.any() and (not model.needs_prompts or len(prompts[k][2]))
    ]
    preds = dict(
        zip(run, model([read[k][0] for k in run], [prompts[k] for k in run]) if run else [])
    )
    lines = []
    for k, t in enumerate(tiles):
        valid = read[k][1]

        def cut_check(g, t=t):
            return False if prompted else touches_inner_edge(g, t, reader.width, reader.height)

        dets = tile_detections(preds.get(k), t, valid, cut_check)
        lines.append({"tile": t.index, "empty": not valid.any(), "dets": dets})
    return lines


def _write_outputs(reader, features, out_dir, path, class_names, min_score, formats=("geojson",)):
    stem = os.path.splitext(os.path.basename(path))[0]
    outputs = {}
    # COCO results in scene pixels (polygon exteriors; holes are not representable there).
    results = []
    for f in features:
        polys = [
            p for p in getattr(f["geometry"], "geoms", [f["geometry"]]) if p.geom_type == "Polygon"
        ]
        rings = [
            np.asarray(p.exterior.coords)[:-1].ravel().tolist()
            for p in polys
            if len(p.exterior.coords) >= 4
        ]
        if not rings:
            continue
        rle = mask_util.merge(mask_util.frPyObjects(rings, reader.height, reader.width))
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, x1, y1 = f["geometry"].bounds
        results.append(
            {
                "image_id": 0,
                "category_id": f["category_id"],
                "segmentation": rle,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": f["score"],
            }
        )
    outputs["coco"] = os.path.join(out_dir, f"{stem}_coco_results.json")
    with open(outputs["coco"], "w") as fh:
        json.dump(results, fh)

    confident = [f for f in features if f["score"] >= min_score]
    if reader.georeferenced:
        t = reader.src.transform
        geoms, props = [], []
        for f in confident:
            geoms.append(
                shapely.make_valid(
                    affinity.affine_transform(f["geometry"], [t.a, t.b, t.d, t.e, t.xoff, t.yoff])
                )
            )
            p = {"category_id": f["category_id"], "score": round(f["score"], 4)}
            if class_names:
                known = 0 <= f["category_id"] < len(class_names)
                p["class"] = class_names[f["category_id"]] if known else None
            props.append(p)
        for fmt in formats:
            outputs[fmt] = write_features(
                os.path.join(out_dir, stem + FORMATS[fmt]), geoms, props, reader.src.crs.to_string()
            )

    outputs["overlay"] = os.path.join(out_dir, f"{stem}_overlay.png")
    _overlay(reader, confident, outputs["overlay"])
    return outputs


def _overlay(reader, features, path):
    """Features filled (by class colour) and outlined over the decimated scene."""
    from PIL import Image
    from rasterio.features import rasterize

    from .visualize import CLASS_COLORS

    image = reader.overview().astype(np.float32)
    h, w = image.shape[:2]
    sx, sy = w / reader.width, h / reader.height
    shapes = [
        (affinity.scale(f["geometry"], xfact=sx, yfact=sy, origin=(0, 0)), i + 1)
        for i, f in enumerate(features)
    ]
    if shapes:
        labels = rasterize(shapes, out_shape=(h, w), fill=0, dtype="int32", all_touched=True)
        palette = (
            np.array(
                [(0, 0, 0)] + [CLASS_COLORS[f["category_id"] % len(CLASS_COLORS)] for f in features]
            )
            * 255
        )
        inside = labels > 0
        image[inside] = 0.55 * image[inside] + 0.45 * palette[labels[inside]]
        edge = np.zeros_like(inside)
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        image[edge] = 0.3 * palette[np.maximum(labels, np.roll(labels, 1, axis=1))[edge]]
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
