#!/usr/bin/env python
"""
Throughput of tiled scene prediction (tools/predict.py's loop) on the CPU with small models.

Writes a synthetic georeferenced scene (a mosaic of synthetic IWP tiles, every cell a box prompt),
then predicts it with (a) the tiny SAM of sam_instant_test.yaml prompted by those boxes and (b)
the MViTv2 Mask R-CNN of mask_rcnn_instant_test.yaml (random weights: speed only; its hundreds of
junk detections per tile make the stitching and writing slower than a trained model's would).
Prints tiles/s of the tile loop (read, model, polygons) and the total time with stitching and
the output files.

    python benchmarks/predict_tiles.py [--scene-tiles 4] [--tile-size 256] [--overlap 64]
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from sam_prompt.config import load_config  # noqa: E402
from sam_prompt.data import SyntheticIWPSpec, generate_tile  # noqa: E402
from sam_prompt.scene import TileModel, predict_scene  # noqa: E402

CONFIGS = os.path.join(HERE, "..", "projects", "SAMPrompt", "configs")


def write_scene(folder, n, size=256):
    spec = SyntheticIWPSpec(image_size=size)
    mosaic = np.zeros((n * size, n * size, 3), np.uint8)
    feats = []
    transform = from_origin(500000.0, 7800000.0, 0.5, 0.5)
    for i in range(n * n):
        img, annos = generate_tile(spec, "test", i)
        oy, ox = (i // n) * size, (i % n) * size
        mosaic[oy : oy + size, ox : ox + size] = img
        for a in annos:
            x0, y0, x1, y1 = a["bbox"]
            (mx0, my0), (mx1, my1) = transform * (x0 + ox, y0 + oy), transform * (x1 + ox, y1 + oy)
            ring = [[mx0, my0], [mx1, my0], [mx1, my1], [mx0, my1], [mx0, my0]]
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"category_id": a["category_id"]},
                }
            )
    path = os.path.join(folder, "scene.tif")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=n * size,
        height=n * size,
        count=3,
        dtype="uint8",
        crs="EPSG:32606",
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(mosaic.transpose(2, 0, 1))
    prompts = os.path.join(folder, "prompts.geojson")
    with open(prompts, "w") as f:
        json.dump({"type": "FeatureCollection", "features": feats}, f)
    return path, prompts, len(feats)


def model(config):
    return TileModel(load_config(os.path.join(CONFIGS, config)))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scene-tiles", type=int, default=3, help="scene side in synthetic 256-px tiles"
    )
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    scene, prompts, n_prompts = write_scene(folder, args.scene_tiles)
    side = args.scene_tiles * 256
    print(
        f"scene {side}x{side} px, {n_prompts} box prompts, tiles {args.tile_size} px, overlap {args.overlap}, CPU"
    )
    for name, config, p in (
        ("tiny SAM + box prompts", "sam_instant_test.yaml", prompts),
        ("Mask R-CNN MViTv2-T (256 px)", "mask_rcnn_instant_test.yaml", None),
    ):
        t0 = time.time()
        s = predict_scene(
            model(config),
            scene,
            os.path.join(folder, config),
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            prompts_file=p,
            overview_size=256,
        )
        print(
            f"{name:<30} tiles={s['tiles']:>3} features={s['features']:>5} "
            f"loop={s['seconds']:.1f}s tiles_per_s={s['tiles_per_s']:.2f} total={time.time() - t0:.1f}s "
            f"largest_read_px={s['largest_read']}"
        )


if __name__ == "__main__":
    main()
