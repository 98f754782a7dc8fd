"""Large-scene prediction: tiles, stitching, map coordinates, resume, windowed reads, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import shapely
import torch
from common import REPO, tiny_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import Point, shape

from sam_prompt.scene import predict_scene
from sam_prompt.tiling import SceneError, tile_grid

ORIGIN = (500000.0, 7800000.0)  # UTM 6N, metres
PIXEL = 0.5
TRANSFORM = from_origin(*ORIGIN, PIXEL, PIXEL)


UTM6N = {"type": "name", "properties": {"name": "EPSG:32606"}}  # a GeoJSON 'crs' member


def to_map(x, y):
    return ORIGIN[0] + x * PIXEL, ORIGIN[1] - y * PIXEL


# Objects (pixel centre, radii): one inside a tile, one across the x=192 border (tile 256,
# overlap 64: tiles start at 0, 192, 384), one larger than the overlap across a corner.
OBJECTS = [
    ((100, 100), (30, 20)),
    ((192, 60), (22, 16)),
    ((450, 300), (110, 70)),
    ((600, 420), (25, 25)),
]
W, H = 700, 500


def write_scene(path, objects=OBJECTS, width=W, height=H, value=230, transform=TRANSFORM):
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.full((3, height, width), 60, np.uint8)
    for (cx, cy), (rx, ry) in objects:
        img[:, ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1] = value
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs="EPSG:32606",
        transform=transform,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    ) as dst:
        dst.write(img)
    return path


class OracleModel:
    """Finds bright blobs in each tile (what a perfect detector would): tests our plumbing."""

    needs_prompts = False

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, images, prompts):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        out = []
        for img in images:
            labels, n = ndimage.label(img[..., 0] > 200)
            inst = Instances(img.shape[:2])
            inst.pred_masks = (
                torch.from_numpy(np.stack([labels == i + 1 for i in range(n)]))
                if n
                else torch.zeros((0, *img.shape[:2]), dtype=torch.bool)
            )
            inst.scores = torch.linspace(0.9, 0.5, n) if n else torch.zeros(0)
            inst.pred_classes = torch.zeros(n, dtype=torch.int64)
            out.append(inst)
        return out


def _geojson(out):
    with open(next(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".geojson"))) as f:
        return json.load(f)


def _ellipse_map(obj):
    (cx, cy), (rx, ry) = obj
    e = shapely.affinity.scale(Point(0, 0).buffer(1, 64), rx, ry).buffer(0)
    e = shapely.affinity.translate(e, cx, cy)
    return shapely.affinity.affine_transform(e, [PIXEL, 0, 0, -PIXEL, *ORIGIN])


def test_tile_grid_covers_scene_with_overlap():
    tiles = tile_grid(700, 500, 256, 64)
    assert [t.x for t in tiles[:4]] == [0, 192, 384, 444]
    cover = np.zeros((500, 700), int)
    for t in tiles:
        cover[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert cover.min() >= 1
    assert tile_grid(100, 80, 256, 64)[0].width == 100  # smaller than one tile: one tile


def test_features_in_map_coordinates_each_object_once(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    summary = predict_scene(
        OracleModel(),
        scene,
        str(tmp_path / "out"),
        tile_size=256,
        overlap=64,
        class_names=["iwp"],
        overview_size=200,
    )
    gj = _geojson(tmp_path / "out")
    assert gj["crs"]["properties"]["name"] == "EPSG:32606"
    feats = [shape(f["geometry"]) for f in gj["features"]]
    assert len(feats) == len(OBJECTS) == summary["features"]
    assert all(f.is_valid for f in feats)
    assert all(f["properties"]["class"] == "iwp" for f in gj["features"])
    for obj in OBJECTS:
        truth = _ellipse_map(obj)
        best = max(feats, key=lambda f: f.intersection(truth).area)
        iou = best.intersection(truth).area / best.union(truth).area
        assert iou > 0.9, (obj, iou)  # whole, at the right place (in metres)
    # Windowed reading: no read larger than a tile (the overlay's overview is decimated to 200 px).
    assert summary["largest_read"] <= 256 * 256 < W * H


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    predict_scene(
        OracleModel(), scene, str(tmp_path / "full"), tile_size=256, overlap=64, batch_size=2
    )
    with pytest.raises(KeyboardInterrupt):
        predict_scene(
            OracleModel(fail_after=2),
            scene,
            str(tmp_path / "cut"),
            tile_size=256,
            overlap=64,
            batch_size=2,
        )
    with open(tmp_path / "cut" / "tiles.jsonl") as f:
        assert len(f.readlines()) == 4  # two batches of two tiles were saved
    again = OracleModel()
    summary = predict_scene(
        again, scene, str(tmp_path / "cut"), tile_size=256, overlap=64, batch_size=2
    )
    assert summary["tiles_run"] == summary["tiles"] - 4
    with open(tmp_path / "cut" / "tiles.jsonl") as f:
        tiles = [json.loads(l)["tile"] for l in f]
    assert sorted(tiles) == list(range(summary["tiles"]))  # every tile once
    a, b = _geojson(tmp_path / "full"), _geojson(tmp_path / "cut")
    assert a == b
    # Other settings in the same folder are refused rather than mixed.
    with pytest.raises(SceneError, match="other settings"):
        predict_scene(OracleModel(), scene, str(tmp_path / "cut"), tile_size=128, overlap=32)


def test_min_score_filters_the_map_not_the_coco_results(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    s = predict_scene(
        OracleModel(), scene, str(tmp_path / "out"), tile_size=256, overlap=64, min_score=0.75
    )
    gj = _geojson(tmp_path / "out")
    with open(s["outputs"]["coco"]) as f:
        coco = json.load(f)
    assert len(coco) == len(OBJECTS)
    assert 0 < len(gj["features"]) < len(OBJECTS)
    assert all(f["properties"]["score"] >= 0.75 for f in gj["features"])


def test_plain_image_without_georeference(tmp_path):
    from PIL import Image

    img = np.full((300, 400, 3), 60, np.uint8)
    img[100:160, 50:130] = 230
    Image.fromarray(img).save(tmp_path / "plain.png")
    s = predict_scene(
        OracleModel(), str(tmp_path / "plain.png"), str(tmp_path / "out"), tile_size=256, overlap=64
    )
    assert "geojson" not in s["outputs"] and os.path.exists(s["outputs"]["overlay"])
    with open(s["outputs"]["coco"]) as f:
        (r,) = json.load(f)
    assert r["bbox"] == pytest.approx([50, 100, 80, 60], abs=1)


def test_bad_inputs_have_clear_messages(tmp_path):
    garbage = tmp_path / "broken.tif"
    garbage.write_bytes(b"II*\x00" + os.urandom(200))
    with pytest.raises(SceneError, match="broken.tif"):
        predict_scene(OracleModel(), str(garbage), str(tmp_path / "o1"))
    text = tmp_path / "notes.txt"
    text.write_text("not a raster")
    with pytest.raises(SceneError, match="notes.txt: not a readable raster"):
        predict_scene(OracleModel(), str(text), str(tmp_path / "o2"))
    with pytest.raises(SceneError, match="missing.tif: not found"):
        predict_scene(OracleModel(), str(tmp_path / "missing.tif"), str(tmp_path / "o3"))
    empty = write_scene(str(tmp_path / "empty.tif"), objects=[], value=0)
    with rasterio.open(empty, "r+") as dst:
        dst.write(np.zeros((3, H, W), np.uint8))
    with pytest.raises(SceneError, match="no data"):
        predict_scene(OracleModel(), empty, str(tmp_path / "o4"), tile_size=256, overlap=64)
    small = write_scene(
        str(tmp_path / "small.tif"), objects=[((50, 40), (20, 15))], width=120, height=90
    )
    s = predict_scene(OracleModel(), small, str(tmp_path / "o5"), tile_size=256, overlap=64)
    assert s["tiles"] == 1 and s["features"] == 1


@pytest.mark.slow
def test_predict_cli_with_sam_and_geojson_prompts(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    feats = []
    for (cx, cy), (rx, ry) in OBJECTS:
        x0, y0 = to_map(cx - rx, cy - ry)
        x1, y1 = to_map(cx + rx, cy + ry)
        poly = shapely.geometry.box(x0, y1, x1, y0)
        feats.append(
            {
                "type": "Feature",
                "geometry": shapely.geometry.mapping(poly),
                "properties": {"category_id": 1},
            }
        )
    prompts = tmp_path / "prompts.geojson"
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": feats, "crs": UTM6N}))
    cfg = os.path.join(REPO, "projects", "SAMPrompt", "configs", "sam_instant_test.yaml")
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "predict.py"),
        "--config-file",
        cfg,
        "--input",
        scene,
        "--output",
        str(tmp_path / "out"),
        "--tile-size",
        "256",
        "--overlap",
        "64",
        "--min-score",
        "0",
        "--prompts",
        str(prompts),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # A SAM without weights would map noise with exit code 0: refused, the fix named.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "MODEL.WEIGHTS" in proc.stderr
    assert not list((tmp_path / "out").rglob("*.geojson"))
    det = [*cmd]  # the same for a detector
    det[det.index("--config-file") + 1] = cfg.replace("sam_instant_test", "mask_rcnn_instant_test")
    proc = subprocess.run(det, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "GeneralizedRCNN has no weights" in proc.stderr
    torch.manual_seed(0)
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
    cmd += ["MODEL.WEIGHTS", weights]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiles/s" in proc.stdout
    gj = _geojson(tmp_path / "out" / "scene")
    # One mask per prompt (a random-weight SAM may return empty masks, which are dropped).
    assert 0 < len(gj["features"]) <= len(OBJECTS)
    with open(tmp_path / "out" / "scene" / "scene_coco_results.json") as f:
        assert len(json.load(f)) == len(gj["features"])  # --min-score 0: the same features
    assert all(f["properties"]["category_id"] == 1 for f in gj["features"])
    # A SAM config without prompts is refused with a message, not a stack trace.
    cmd[cmd.index("--output") + 1] = str(tmp_path / "out2")
    at = cmd.index("--prompts")
    proc = subprocess.run(cmd[:at] + cmd[at + 2 :], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "needs prompts" in proc.stderr


# --- scenes as they come --------------------------------------------------------------------
class BoxModel:
    """A prompted model whose mask is each prompt box, filled: shows where prompts land."""

    needs_prompts = True
    prompt_type = "box"

    def __init__(self):
        self.calls = 0

    def __call__(self, images, prompts):
        self.calls += 1
        out = []
        for img, (boxes, _, classes) in zip(images, prompts):
            h, w = img.shape[:2]
            masks = torch.zeros((len(boxes), h, w), dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int)):
                masks[i, max(y0, 0) : y1, max(x0, 0) : x1] = True
            inst = Instances((h, w))
            inst.pred_masks, inst.scores = masks, torch.ones(len(boxes))
            inst.pred_classes = torch.as_tensor(classes)
            out.append(inst)
        return out


def _box_prompts(path, crs_member=None, to_wgs84=False):
    from rasterio.warp import transform_geom

    feats = []
    for (cx, cy), (rx, ry) in OBJECTS:
        (x0, y0), (x1, y1) = to_map(cx - rx, cy - ry), to_map(cx + rx, cy + ry)
        g = shapely.geometry.mapping(shapely.geometry.box(x0, y1, x1, y0))
        if to_wgs84:
            g = transform_geom("EPSG:32606", "EPSG:4326", g)
        feats.append({"type": "Feature", "geometry": g, "properties": {"category_id": 0}})
    obj = {"type": "FeatureCollection", "features": feats}
    if crs_member:
        obj["crs"] = crs_member
    path.write_text(json.dumps(obj))
    return str(path)


def test_prompts_in_any_crs_are_reprojected(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    utm = _box_prompts(tmp_path / "utm.geojson", crs_member=UTM6N)
    wgs = _box_prompts(tmp_path / "wgs.geojson", to_wgs84=True)  # RFC 7946: no 'crs' member
    a = predict_scene(
        BoxModel(),
        scene,
        str(tmp_path / "a"),
        tile_size=256,
        overlap=64,
        prompts_file=utm,
        min_score=0,
    )
    b = predict_scene(
        BoxModel(),
        scene,
        str(tmp_path / "b"),
        tile_size=256,
        overlap=64,
        prompts_file=wgs,
        min_score=0,
    )
    assert a["features"] == b["features"] == len(OBJECTS)
    ga = sorted(
        (shape(f["geometry"]) for f in _geojson(tmp_path / "a")["features"]), key=lambda g: g.bounds
    )
    gb = sorted(
        (shape(f["geometry"]) for f in _geojson(tmp_path / "b")["features"]), key=lambda g: g.bounds
    )
    for x, y in zip(ga, gb):  # the same boxes, within a pixel of reprojection rounding
        assert x.symmetric_difference(y).area < 0.05 * x.area
    # UTM coordinates read as WGS84 (a GeoJSON without 'crs'): nowhere near the scene.
    bad = _box_prompts(tmp_path / "bad.geojson")
    with pytest.raises(SceneError, match="check the prompts' CRS"):
        predict_scene(BoxModel(), scene, str(tmp_path / "c"), prompts_file=bad)
    # Valid coordinates of another place: refused rather than giving 0 features.
    far = json.loads(open(utm).read())
    for f in far["features"]:
        f["geometry"] = shapely.geometry.mapping(
            shapely.affinity.translate(shape(f["geometry"]), 1e5)
        )
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    with pytest.raises(SceneError, match="none of the 4 prompts"):
        predict_scene(
            BoxModel(), scene, str(tmp_path / "d"), prompts_file=str(tmp_path / "far.geojson")
        )


def test_raster_with_transform_but_no_crs_refuses_map_prompts(tmp_path):
    img = np.stack([_scene_array()] * 3)
    with rasterio.open(
        str(tmp_path / "scene.tif"),
        "w",
        driver="GTiff",
        width=W,
        height=H,
        count=3,
        dtype="uint8",
        transform=TRANSFORM,
    ) as dst:  # a geotransform, no CRS
        dst.write(img.astype("uint8"))
    scene = str(tmp_path / "scene.tif")
    prompts = _box_prompts(tmp_path / "p.geojson", crs_member=UTM6N)
    with pytest.raises(SceneError, match="geotransform but no CRS"):
        predict_scene(BoxModel(), scene, str(tmp_path / "o"), prompts_file=prompts)


def _write_raster(path, bands, dtype, nodata=None, colorinterp=None):
    count, height, width = bands.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs="EPSG:32606",
        transform=TRANSFORM,
        nodata=nodata,
    ) as dst:
        dst.write(bands.astype(dtype))
        if colorinterp:
            dst.colorinterp = colorinterp
    return path


def _scene_array(scale=1.0):
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W), 60.0)
    for (cx, cy), (rx, ry) in OBJECTS:
        img[((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1] = 230
    return img * scale


@pytest.mark.parametrize("dtype, nodata", [("uint16", 65535), ("float32", float("nan"))])
def test_nodata_is_excluded_from_stretch_and_predictions(tmp_path, dtype, nodata):
    img = _scene_array(scale=10)  # a 16-bit sensor's values
    img[:, 560:] = nodata  # a scene collar of nodata across the last object
    path = _write_raster(
        str(tmp_path / "s.tif"), np.stack([img] * 3), dtype, None if dtype == "float32" else nodata
    )
    model = OracleModel()
    s = predict_scene(model, path, str(tmp_path / "o"), tile_size=256, overlap=64, min_score=0)
    geoms = [shape(f["geometry"]) for f in _geojson(tmp_path / "o")["features"]]
    assert s["features"] == len(OBJECTS) - 1  # the 4th object lies in the collar (x 575..625)
    collar_x = to_map(560, 0)[0]
    assert all(g.bounds[2] <= collar_x + PIXEL for g in geoms)  # nothing predicted into nodata
    # The third object (x 340..560) reaches the collar: it is cut there, not extended into it.
    assert max(g.bounds[2] for g in geoms) == pytest.approx(collar_x, abs=PIXEL)


def test_tiles_without_data_skip_the_model(tmp_path):
    img = _scene_array(scale=10)
    img[:, 320:] = 65535  # the right half: every tile starting at x >= 384 is nodata
    path = _write_raster(str(tmp_path / "s.tif"), np.stack([img] * 3), "uint16", 65535)
    model = OracleModel()
    s = predict_scene(model, path, str(tmp_path / "o"), tile_size=256, overlap=64, batch_size=1)
    assert s["tiles_without_data"] == 6  # columns x0 = 384 and 444, three rows
    assert model.calls == s["tiles"] - 6


def test_bands_follow_the_colour_interpretation(tmp_path):
    from rasterio.enums import ColorInterp as CI

    red = _scene_array()
    dark = np.full_like(red, 60)
    bgrn = np.stack([dark, dark, red, dark])  # objects visible in the red band only
    interp = [CI.blue, CI.green, CI.red, CI.undefined]
    path = _write_raster(str(tmp_path / "bgrn.tif"), bgrn, "uint8", colorinterp=interp)
    s = predict_scene(OracleModel(), path, str(tmp_path / "o"), tile_size=256, overlap=64)
    assert s["features"] == len(OBJECTS)  # OracleModel looks at channel 0: red
    s = predict_scene(
        OracleModel(), path, str(tmp_path / "o2"), tile_size=256, overlap=64, bands=[1, 2, 3]
    )
    assert s["features"] == 0  # read as R,G,B = blue, green, red: channel 0 holds no object
    with pytest.raises(SceneError, match="--bands"):
        predict_scene(OracleModel(), path, str(tmp_path / "o3"), bands=[1, 2, 9])


def test_resume_with_another_model_is_refused(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    predict_scene(
        OracleModel(), scene, str(tmp_path / "o"), tile_size=256, overlap=64, model_id="model-a"
    )
    again = OracleModel()
    predict_scene(again, scene, str(tmp_path / "o"), tile_size=256, overlap=64, model_id="model-a")
    assert again.calls == 0  # finished: nothing run again
    with pytest.raises(SceneError, match=r"other settings \(model differ\).*another --output"):
        predict_scene(
            OracleModel(), scene, str(tmp_path / "o"), tile_size=256, overlap=64, model_id="model-b"
        )


def test_model_digest_changes_with_the_weights(tmp_path):

    from sam_prompt.scene import model_digest

    w = tmp_path / "w.pth"
    w.write_bytes(b"weights one")
    a = model_digest(tiny_cfg(MODEL__WEIGHTS=str(w)))
    assert a == model_digest(tiny_cfg(MODEL__WEIGHTS=str(w)))
    w.write_bytes(b"weights two")
    assert model_digest(tiny_cfg(MODEL__WEIGHTS=str(w))) != a
    assert model_digest(tiny_cfg(MODEL__WEIGHTS=str(w), MODEL__SAM__MASK_THRESHOLD=1.0)) != a


def test_unwritable_output_is_one_line_before_any_work(tmp_path):
    scene = write_scene(str(tmp_path / "scene.tif"))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    cfg = os.path.join(REPO, "projects", "SAMPrompt", "configs", "sam_instant_test.yaml")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "predict.py"),
            "--config-file",
            cfg,
            "--input",
            scene,
            "--output",
            str(blocker / "out"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("error: cannot write to the output folder")
    )
    assert "Traceback" not in proc.stderr


# --- GIS outputs ----------------------------------------------------------------------------
def test_geopackage_holds_what_the_geojson_holds(tmp_path):
    from sam_prompt.vector import read_features

    scene = write_scene(str(tmp_path / "scene.tif"))
    s = predict_scene(
        OracleModel(),
        scene,
        str(tmp_path / "o"),
        tile_size=256,
        overlap=64,
        min_score=0,
        formats=("geojson", "gpkg"),
        class_names=["iwp"],
    )
    g1, p1, crs1 = read_features(s["outputs"]["geojson"])
    g2, p2, crs2 = read_features(s["outputs"]["gpkg"])
    assert len(g1) == len(g2) == len(OBJECTS)
    assert "32606" in str(crs2) and p2[0]["class"] == "iwp"
    for a, b in zip(g1, g2):
        assert a.symmetric_difference(b).area < 1e-6 * a.area
    assert [p["score"] for p in p1] == [p["score"] for p in p2]


def test_merge_drops_objects_seen_in_two_overlapping_scenes(tmp_path):
    import subprocess

    from sam_prompt.vector import read_features

    # Scene b is scene a's ground 160 px (80 m) further east: objects 2 and 3 lie in both.
    shift = 160
    a = write_scene(str(tmp_path / "a.tif"))
    objs_b = [((cx - shift, cy), r) for (cx, cy), r in OBJECTS] + [((640, 200), (30, 25))]  # b only
    b = write_scene(
        str(tmp_path / "b.tif"),
        objs_b,
        transform=from_origin(ORIGIN[0] + shift * PIXEL, ORIGIN[1], PIXEL, PIXEL),
    )
    for path in (a, b):
        predict_scene(
            OracleModel(),
            path,
            str(tmp_path / "pred" / os.path.basename(path)[:-4]),
            tile_size=256,
            overlap=64,
            min_score=0,
            formats=("gpkg",),
        )
    out = tmp_path / "all.gpkg"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "merge_predictions.py"),
            "--output",
            str(out),
            str(tmp_path / "pred"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    geoms, props, _ = read_features(str(out))
    n_a = len(OBJECTS)
    n_b = sum(1 for (cx, cy), (rx, ry) in objs_b if cx - rx > 0)  # objects whole in scene b
    seen_twice = sum(1 for (cx, cy), (rx, ry) in objs_b if cx - rx > 0 and cx + rx + shift < W)
    assert len(geoms) == n_a + n_b - seen_twice
    assert {p["scene"] for p in props} == {"a", "b"}
    union = shapely.union_all(geoms)
    assert abs(union.area - sum(g.area for g in geoms)) < 0.01 * union.area  # no duplicates left
