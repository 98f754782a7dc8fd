"""tools/predict.py on Ray Data (a local 2-CPU Ray instance): the same answer as in-process,
resume across the cluster."""

import json
import os

import pytest
import shapely
from common import tiny_cfg
from shapely.geometry import shape
from test_scene import OBJECTS, UTM6N, _geojson, to_map, write_scene

pytestmark = pytest.mark.slow  # a local Ray instance and model actors start in each test

ray = pytest.importorskip(
    "ray", reason="Ray is an extra (pip install -e .[ray]); make test installs it"
)

from sam_prompt.ray_predict import init_ray, predict_scenes_ray  # noqa: E402
from sam_prompt.scene import TileModel, predict_scene  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


def _scenes(folder):
    """Three small GeoTIFFs (shifted copies of the test scene) and box prompts for all."""
    paths, feats = [], []
    for k, dx in enumerate((0, 40, 80)):
        objs = [((cx + dx, cy), r) for (cx, cy), r in OBJECTS]
        paths.append(write_scene(os.path.join(folder, f"scene{k}.tif"), objs))
        for (cx, cy), (rx, ry) in objs:
            (x0, y0), (x1, y1) = to_map(cx - rx, cy - ry), to_map(cx + rx, cy + ry)
            poly = shapely.geometry.box(x0, y1, x1, y0)
            feats.append(
                {
                    "type": "Feature",
                    "geometry": shapely.geometry.mapping(poly),
                    "properties": {"category_id": k % 2},
                }
            )
    prompts = os.path.join(folder, "prompts.geojson")
    with open(prompts, "w") as f:
        json.dump({"type": "FeatureCollection", "features": feats, "crs": UTM6N}, f)
    return paths, prompts


# A deterministic prompted model that goes through TileModel (resize, prompts, batching).
CFG = dict(MODEL__META_ARCHITECTURE="InscribedEllipse")
SETTINGS = dict(
    tile_size=256, overlap=64, batch_size=3, min_score=0, model_id="ellipse", strict_prompts=False
)


def _features(out_dir):
    gj = _geojson(out_dir)
    return sorted(
        (
            (shape(f["geometry"]), f["properties"]["category_id"], f["properties"]["score"])
            for f in gj["features"]
        ),
        key=lambda t: t[0].bounds,
    )


def test_ray_gives_the_in_process_answer(cluster, tmp_path):
    paths, prompts = _scenes(str(tmp_path))
    cfg = tiny_cfg(**CFG)
    model = TileModel(cfg)
    jobs = [(p, str(tmp_path / "ray" / os.path.basename(p)[:-4])) for p in paths]
    local = [
        predict_scene(
            model,
            p,
            str(tmp_path / "local" / os.path.basename(p)[:-4]),
            prompts_file=prompts,
            **SETTINGS,
        )
        for p in paths
    ]
    needs, ptype = TileModel.describe(cfg)
    remote = predict_scenes_ray(
        cfg,
        jobs,
        needs_prompts=needs,
        prompt_type=ptype,
        workers=2,
        prompts_file=prompts,
        **SETTINGS,
    )
    for p, a, b in zip(paths, local, remote):
        assert a["features"] == b["features"] >= len(OBJECTS) - 1
        fa = _features(tmp_path / "local" / os.path.basename(p)[:-4])
        fb = _features(tmp_path / "ray" / os.path.basename(p)[:-4])
        for (ga, ca, sa), (gb, cb, sb) in zip(fa, fb):
            assert ca == cb and sa == sb
            assert ga.equals_exact(gb, 1e-6)


def test_interrupted_ray_run_resumes_to_identical_outputs(cluster, tmp_path):
    paths, prompts = _scenes(str(tmp_path))
    cfg = tiny_cfg(**CFG)
    needs, ptype = TileModel.describe(cfg)
    run = lambda out: predict_scenes_ray(  # noqa: E731
        cfg,
        [(p, str(tmp_path / out / os.path.basename(p)[:-4])) for p in paths],
        needs_prompts=needs,
        prompt_type=ptype,
        workers=1,
        prompts_file=prompts,
        **SETTINGS,
    )
    full = run("full")
    # An interruption: keep the first lines of each scene's log and drop the outputs.
    for p in paths:
        folder = tmp_path / "full" / os.path.basename(p)[:-4]
        cut = tmp_path / "cut" / os.path.basename(p)[:-4]
        cut.mkdir(parents=True)
        (cut / "run.json").write_text((folder / "run.json").read_text())
        lines = (folder / "tiles.jsonl").read_text().splitlines(True)
        (cut / "tiles.jsonl").write_text("".join(lines[:3]) + lines[3][:10])  # a line cut short
    resumed = run("cut")
    for p, a, b in zip(paths, full, resumed):
        name = os.path.basename(p)[:-4]
        assert b["tiles_run"] == a["tiles"] - 3
        for ext in (".geojson", "_coco_results.json"):
            assert (tmp_path / "full" / name / f"{name}{ext}").read_bytes() == (
                tmp_path / "cut" / name / f"{name}{ext}"
            ).read_bytes()


def test_model_actor_uses_the_cpus_it_reserved():
    # A worker process's torch threads follow the OMP_NUM_THREADS it was started with, not the
    # actor's reservation: an actor of 2 CPUs on 1 thread runs at half speed.
    import torch

    from sam_prompt.ray_predict import _TileActor

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _TileActor(tiny_cfg(), {}, 2)
        assert torch.get_num_threads() == 2
        _TileActor(tiny_cfg(), {}, 0)  # with a GPU: left as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
