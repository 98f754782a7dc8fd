#!/usr/bin/env python
"""
Merge the map outputs of many scenes (tools/predict.py) into one layer.

    python tools/merge_predictions.py --output all.gpkg predictions/   # every scene folder in it
    python tools/merge_predictions.py --output all.gpkg a.geojson b.gpkg [--crs EPSG:3413]

Each feature gets a `scene` attribute. Where scene footprints overlap, an object seen in two scenes
(same class, polygon IoU above --iou) is kept once, the one with the higher score (an R-tree finds
the candidates). Features are reprojected to --crs (default: the first scene's CRS).
"""

import argparse
import glob
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from sam_prompt.vector import FORMATS, merge_layers  # noqa: E402


def find_layers(paths):
    layers = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for ext in FORMATS.values():  # one layer per scene folder (GeoJSON, else GeoPackage)
                found = sorted(glob.glob(os.path.join(p, "*", "*" + ext))) or found
                if found:
                    break
            if not found:
                raise FileNotFoundError(f"{p}: no scene folders with .gpkg or .geojson outputs")
            layers += found
        elif os.path.isfile(p):
            layers.append(p)
        else:
            raise FileNotFoundError(f"{p} not found")
    return layers


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="predict.py output folders or layer files")
    parser.add_argument("--output", required=True, help=".gpkg or .geojson")
    parser.add_argument("--crs", help="output CRS (default: the first scene's)")
    parser.add_argument(
        "--iou", type=float, default=0.5, help="IoU above which two scenes' objects are one"
    )
    args = parser.parse_args(argv)
    try:
        layers = find_layers(args.inputs)
        kept, dropped = merge_layers(layers, args.output, crs=args.crs, iou_threshold=args.iou)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(
        f"merged {len(layers)} scenes into {args.output}: {kept} features ({dropped} duplicates dropped)"
    )


if __name__ == "__main__":
    main()
