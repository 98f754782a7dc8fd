#!/usr/bin/env python
"""
tools/predict.py at scale: 8 synthetic 1024 x 1024 GeoTIFF scenes, a small SAM prompted by pixel
boxes, in-process vs Ray Data with 1 and 2 model actors on this machine.

Each mode runs in its own process (a fresh Ray instance for the Ray modes) on the machine's 2 CPUs:
in-process with torch's 2 threads, Ray with 1 actor of 2 CPUs, or 2 actors of 1 CPU each, so that
every mode has the same cores. Times cover predicting and writing every scene, the model build and
Ray's actor start-up included, not Python or Ray start-up.

    python benchmarks/predict_scale.py [--scenes 8] [--size 1024]

Last line: ray_vs_inprocess=<scenes/s ratio, 1 worker> ray_2w_vs_1w=<scenes/s ratio>
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))
CONFIG = os.path.join(HERE, "..", "projects", "SAMPrompt", "configs", "sam_instant_test.yaml")


def make_scenes(folder, n, size, seed=0):
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    boxes = []
    yy, xx = np.mgrid[0:size, 0:size]
    centres = [(x, y) for x in range(40, size - 40, 90) for y in range(40, size - 40, 90)]
    img = np.full((size, size), 70, np.uint8)
    for cx, cy in centres:
        rx, ry = rng.uniform(15, 35, 2)
        img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = 200
        boxes.append([cx - rx, cy - ry, 2 * rx, 2 * ry])
    paths = []
    for k in range(n):
        path = os.path.join(folder, f"scene{k}.tif")
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=size,
            height=size,
            count=3,
            dtype="uint8",
            crs="EPSG:32606",
            transform=from_origin(500000 + k * 1000, 7800000, 0.5, 0.5),
            tiled=True,
            blockxsize=256,
            blockysize=256,
        ) as dst:
            dst.write(np.stack([img] * 3))
        paths.append(path)
    prompts = os.path.join(folder, "boxes.json")
    with open(prompts, "w") as f:  # COCO boxes in pixels: the same cells in every scene
        json.dump([{"bbox": b, "category_id": 0} for b in boxes], f)
    return paths, prompts


def save_weights(folder):
    """One seeded model for every mode: random weights built per process would differ."""
    import torch
    from detectron2.modeling import build_model

    from sam_prompt.config import load_config

    torch.manual_seed(0)
    path = os.path.join(folder, "model.pth")
    torch.save({"model": build_model(load_config(CONFIG)).state_dict()}, path)
    return path


def run_mode(mode, folder, paths, prompts):
    from detectron2.utils.logger import setup_logger

    from sam_prompt.config import load_config
    from sam_prompt.scene import TileModel, predict_scene

    setup_logger(name="sam_prompt")
    cfg = load_config(
        CONFIG,
        ["MODEL.SAM.PROMPTS_PER_CHUNK", 64, "MODEL.WEIGHTS", os.path.join(folder, "model.pth")],
    )
    settings = dict(
        tile_size=512,
        overlap=128,
        batch_size=4,
        prompts_file=prompts,
        min_score=0,
        strict_prompts=False,
        model_id="bench",
    )
    jobs = [(p, os.path.join(folder, mode, os.path.basename(p)[:-4])) for p in paths]
    if mode == "inprocess":
        start = time.perf_counter()
        model = TileModel(cfg)
        for p, out in jobs:
            predict_scene(model, p, out, **settings)
        return time.perf_counter() - start
    from sam_prompt.ray_predict import init_ray, predict_scenes_ray

    workers = int(mode[-1])
    init_ray("local", num_cpus=2)
    needs, ptype = TileModel.describe(cfg)
    start = time.perf_counter()
    predict_scenes_ray(
        cfg,
        jobs,
        needs_prompts=needs,
        prompt_type=ptype,
        workers=workers,
        cpus_per_worker=2 // workers,  # the cores in-process torch uses
        **settings,
    )
    return time.perf_counter() - start


def _read(path):
    with open(path) as f:
        return json.load(f)["features"]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a child process
        paths = sorted(
            os.path.join(args.folder, f) for f in os.listdir(args.folder) if f.endswith(".tif")
        )
        print(
            json.dumps(
                {
                    "seconds": run_mode(
                        args.mode, args.folder, paths, os.path.join(args.folder, "boxes.json")
                    )
                }
            )
        )
        return
    folder = tempfile.mkdtemp()
    make_scenes(folder, args.scenes, args.size)
    save_weights(folder)
    rates = {}
    for mode in ("inprocess", "ray1", "ray2"):
        proc = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--folder", folder],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
        if proc.returncode:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        rates[mode] = args.scenes / seconds
        print(f"{mode:<10} {seconds:7.1f} s  {rates[mode]:.3f} scenes/s", flush=True)
    # The same work in every mode, or the ratios mean nothing (thread counts may move a pixel).
    from shapely.geometry import shape

    for k in range(args.scenes):
        counts, areas = set(), []
        for mode in rates:
            feats = _read(os.path.join(folder, mode, f"scene{k}", f"scene{k}.geojson"))
            counts.add(len(feats))
            areas.append(sum(shape(f["geometry"]).area for f in feats))
        if len(counts) != 1 or max(areas) - min(areas) > 1e-3 * max(areas):
            sys.exit(f"scene{k}: the modes wrote different features ({counts}, areas {areas})")
    print(f"every mode wrote the same features ({args.scenes} scenes)")
    print(
        f"ray_vs_inprocess={rates['ray1'] / rates['inprocess']:.2f} ray_2w_vs_1w={rates['ray2'] / rates['ray1']:.2f}"
    )


if __name__ == "__main__":
    main()
