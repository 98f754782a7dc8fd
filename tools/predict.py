#!/usr/bin/env python
"""
Predict over large images and GeoTIFF scenes, tile by tile.

    python tools/predict.py --config-file CFG --input scene.tif [more.tif folder/ ...] --output DIR \
        [--tile-size 512] [--overlap 128] [--batch-size 4] [--prompts boxes.geojson] \
        MODEL.WEIGHTS output/model_final.pth [KEY VALUE ...]

SAM models take prompts from a detector (MODEL.SAM.PROMPT.SOURCE detector with
MODEL.SAM.DETECTOR.CONFIG_FILE/WEIGHTS) or from --prompts (COCO JSON boxes in pixels, or GeoJSON
Polygons/Points in the raster's CRS); Mask R-CNN configs run on their own.

Per input, DIR/<name>/ receives <name>_coco_results.json (scene pixels), <name>_overlay.png
(downsampled), <name>.geojson (georeferenced inputs: polygons in the raster's CRS with class and
score) and tiles.jsonl. Running again with the same DIR resumes where it stopped.
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from detectron2.utils.logger import setup_logger  # noqa: E402

from sam_prompt.checkpoint import CheckpointError  # noqa: E402
from sam_prompt.config import load_config  # noqa: E402
from sam_prompt.scene import (  # noqa: E402
    PredictSettings,
    TileModel,
    ensure_writable,
    model_digest,
    predict_scene,
)
from sam_prompt.tiling import SceneError  # noqa: E402
from sam_prompt.vector import FORMATS, merge_layers  # noqa: E402

EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")


def expand_inputs(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(
                os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(EXTENSIONS)
            )
            if not found:
                raise SceneError(f"{p}: no images ({', '.join(EXTENSIONS)}) in this folder")
            out += found
        else:
            out.append(p)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="images, GeoTIFFs or folders")
    parser.add_argument("--output", required=True)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument(
        "--overlap",
        type=int,
        default=128,
        help="pixels shared by neighbouring tiles (>= the largest object)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--overview-size", type=int, default=1024, help="longest side of the overlay PNG"
    )
    parser.add_argument("--prompts", help="COCO JSON or GeoJSON prompts for SAM models")
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.5,
        help="GeoJSON/overlay keep features scoring at least this (COCO results keep all)",
    )
    parser.add_argument("--class-names", help="comma-separated names written to the GeoJSON")
    parser.add_argument(
        "--bands",
        help="the raster's red, green, blue band numbers, e.g. 3,2,1 (default: from the raster's "
        "colour interpretation, else 1,2,3)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray: without ADDRESS a local Ray instance; 'auto' or host:port joins a "
        "cluster started with `ray start --head`",
    )
    parser.add_argument("--workers", type=int, default=1, help="model actors (--ray)")
    parser.add_argument(
        "--cpus-per-worker",
        type=int,
        default=1,
        help="CPUs (torch threads) each model actor reserves when it has no GPU (--ray)",
    )
    parser.add_argument(
        "--format",
        default="geojson",
        help="map outputs of georeferenced scenes, comma-separated: geojson, gpkg (GeoPackage)",
    )
    parser.add_argument(
        "--merge",
        metavar="FILE",
        help="also write all scenes' features to one .gpkg/.geojson layer (duplicates where scenes "
        "overlap dropped, 'scene' attribute added); tools/merge_predictions.py does it later",
    )
    parser.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=0,
        help="GPUs each model actor reserves (--ray)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="sam_prompt")

    try:
        ensure_writable(args.output)  # before any work
        inputs = expand_inputs(args.input)
        bands = [int(b) for b in args.bands.split(",")] if args.bands else None
        formats = tuple(f.strip() for f in args.format.split(","))
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise SceneError(f"--format {','.join(unknown)}: choose among {', '.join(FORMATS)}")
        cfg = load_config(args.config_file, args.opts)
        arch = cfg.MODEL.META_ARCHITECTURE
        sam_weights = "SAM" in arch and cfg.MODEL.SAM.CHECKPOINT
        if arch not in ("FilledPromptBox", "InscribedEllipse") and not (
            cfg.MODEL.WEIGHTS or sam_weights
        ):  # a map from random weights, with exit code 0
            raise SceneError(
                f"{arch} has no weights: give MODEL.WEIGHTS (a trained model_final.pth)"
                + (" or MODEL.SAM.CHECKPOINT (an official sam_vit_*.pth)" if "SAM" in arch else "")
            )
        model_id = model_digest(cfg)
        names = args.class_names.split(",") if args.class_names else None
        settings = PredictSettings(
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            prompts_file=args.prompts,
            class_names=names,
            overview_size=args.overview_size,
            min_score=args.min_score,
            bands=bands,
            model_id=model_id,
            strict_prompts=len(inputs) == 1,  # many scenes: checked over the run, below
            formats=formats,
        )
        jobs = [
            (p, os.path.join(args.output, os.path.splitext(os.path.basename(p))[0])) for p in inputs
        ]
        if args.ray:
            from sam_prompt.ray_predict import init_ray, predict_scenes_ray

            init_ray(args.ray)
            needs, prompt_type = TileModel.describe(cfg)
            summaries = predict_scenes_ray(
                cfg,
                jobs,
                settings,
                needs_prompts=needs,
                prompt_type=prompt_type,
                workers=args.workers,
                num_gpus_per_worker=args.num_gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker,
            )
        else:
            model = TileModel(cfg)
            summaries = [predict_scene(model, p, out, settings) for p, out in jobs]
        for (path, out_dir), s in zip(jobs, summaries):
            print(
                f"{path}: {s['features']} features from {s['tiles']} tiles "
                f"({s['tiles_run']} run now, {s['tiles_per_s']:.2f} tiles/s, "
                f"{s['tiles_without_data']} without data skipped) -> {out_dir}"
            )
            for kind, p in s["outputs"].items():
                print(f"  {kind}: {p}")
        if args.merge:
            layers = [s["outputs"][formats[0]] for s in summaries if formats[0] in s["outputs"]]
            kept, dropped = merge_layers(layers, args.merge)
            print(
                f"merged {len(layers)} scenes into {args.merge}: {kept} features ({dropped} duplicates dropped)"
            )
        if args.prompts and not any(s["prompts"] for s in summaries):
            raise SceneError(
                f"none of the prompts of {args.prompts} falls inside any scene: check their CRS"
            )
    except (SceneError, CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
