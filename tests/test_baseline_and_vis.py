"""The filled-box baseline (known AP answers) and the visualisation command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from common import REPO, polygon_ellipse, shapes_image, tiny_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from sam_prompt.engine import Trainer


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _register(name, records):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])


def _evaluate_baseline(name, out, arch="FilledPromptBox", evaluator=None):
    cfg = tiny_cfg(MODEL__META_ARCHITECTURE=arch, DATASETS__TEST=(name,), OUTPUT_DIR=out)
    return Trainer.test(cfg, build_model(cfg), evaluators=evaluator and [evaluator(cfg, name)])


def test_filled_box_is_perfect_on_rectangles(tmp_path):
    recs = [
        shapes_image(
            str(tmp_path / "r.png"), [(rect(10, 10, 60, 40), 0), (rect(100, 50, 180, 150), 1)]
        ),
    ]
    _register("rects", recs)
    res = _evaluate_baseline("rects", str(tmp_path / "out"))
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["bbox"]["AP"] == pytest.approx(100.0)


def test_filled_box_is_poor_on_ellipses(tmp_path):
    # An ellipse fills pi/4 = 79% of its box: IoU 0.79 -> matches at thresholds 0.5..0.75 only.
    recs = [shapes_image(str(tmp_path / "e.png"), [(polygon_ellipse(80, 80, 50, 40, 64), 0)])]
    _register("ellipses", recs)
    res = _evaluate_baseline("ellipses", str(tmp_path / "out"))
    assert res["segm"]["AP50"] == pytest.approx(100.0)
    assert res["segm"]["AP"] == pytest.approx(60.0, abs=0.5)  # 6 of 10 IoU thresholds


@pytest.mark.parametrize(
    "shape, expected_ap",
    [
        (lambda: polygon_ellipse(80, 80, 50, 40, 64), 100.0),  # the ellipse of its own box
        (lambda: rect(30, 40, 130, 120), 60.0),  # pi/4 of the box: IoU 0.785, 6 of 10 thresholds
    ],
)
def test_inscribed_ellipse_known_answers(tmp_path, shape, expected_ap):
    _register("ellipse_case", [shapes_image(str(tmp_path / "e.png"), [(shape(), 0)])])
    res = _evaluate_baseline("ellipse_case", str(tmp_path / "out"), arch="InscribedEllipse")
    assert res["segm"]["AP"] == pytest.approx(expected_ap, abs=0.5)


def test_faster_coco_eval_gives_pycocotools_ap(tmp_path):
    from sam_prompt.engine import coco_evaluator
    from sam_prompt.evaluation import SAMCOCOEvaluator

    shapes = [
        (polygon_ellipse(40 + 60 * i, 60 + 20 * (i % 2), 12 + 6 * i, 10 + 3 * i, 40), i % 2)
        for i in range(4)
    ]
    recs = [shapes_image(str(tmp_path / f"{k}.png"), shapes, seed=k) for k in range(2)]
    for k, r in enumerate(recs):
        r["image_id"] = k  # numeric ids, as COCO files have (string ids fall back to pycocotools)
    _register("fce_case", recs)
    results = {}
    for fast in (True, False):

        def make(cfg, name, fast=fast):
            ev = coco_evaluator(cfg, name, str(tmp_path / f"out{fast}"))
            assert isinstance(ev, SAMCOCOEvaluator)
            ev._use_faster_coco_eval = fast
            return ev

        results[fast] = _evaluate_baseline("fce_case", str(tmp_path / "o"), "FilledPromptBox", make)
    for task in ("segm", "bbox"):
        for k, v in results[False][task].items():
            assert results[True][task][k] == pytest.approx(v, abs=0.01, nan_ok=True), (task, k)
    assert 0 < results[True]["segm"]["AP"] < 100


def test_visualize_from_results_json(tmp_path):
    recs = [
        shapes_image(
            str(tmp_path / "v.png"), [(rect(10, 10, 60, 40), 0), (rect(100, 50, 180, 150), 1)]
        )
    ]
    recs[0]["image_id"] = 0
    _register("vis_rects", recs)
    out = str(tmp_path / "out")
    _evaluate_baseline("vis_rects", out)
    results = os.path.join(out, "coco_instances_results.json")
    with open(results) as f:
        assert len(json.load(f)) == 2
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        '_BASE_: "%s"\nDATASETS:\n  TEST: ("vis_rects",)\n'
        % os.path.join(REPO, "projects", "SAMPrompt", "configs", "sam_instant_test.yaml")
    )
    # The subprocess registers nothing itself: give it the same dataset as a VIA folder instead.
    from sam_prompt.data import write_dataset

    root = tmp_path / "data" / "vis"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        Image.open(recs[0]["file_name"]).save(root / split / "v.png")
        write_dataset(str(root), split, [dict(recs[0], file_name="v.png")], ["a", "b"], "via")
    vis = tmp_path / "vis"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "visualize.py"),
            "--config-file",
            os.path.join(REPO, "projects", "SAMPrompt", "configs", "sam_instant_test.yaml"),
            "--dataset-name",
            "vis_test",
            "--results",
            results,
            "--output",
            str(vis),
            "DATASETS.ROOT",
            str(tmp_path / "data"),
            "DATASETS.TEST",
            "('vis_test',)",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = np.asarray(Image.open(vis / "v.png"))
    assert png.shape == (192, 2 * 256 + 8, 3)
    left, right = png[:, :256].astype(int), png[:, 264:].astype(int)
    # Both sides are tinted inside the drawn objects and alike (the baseline is exact here).
    assert np.abs(left - right).mean() < 3
    original = np.asarray(Image.open(recs[0]["file_name"])).astype(int)
    assert np.abs(right[60:140, 110:170] - original[60:140, 110:170]).mean() > 10
