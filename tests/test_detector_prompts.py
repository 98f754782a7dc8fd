"""Detector-assisted SAM: prompts from a COCO results file or from a detector in the process."""

import json
import os

import numpy as np
import pytest
import torch
from common import CONFIGS, tiny_cfg, two_image_dataset
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from sam_prompt import SAMDatasetMapper
from sam_prompt.engine import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SAM trained briefly on two images (box prompts), and the dataset."""
    folder = tmp_path_factory.mktemp("two")
    records = two_image_dataset(str(folder))
    for r, i in zip(records, (11, 12)):
        r["image_id"] = i
    name = "det_two"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    # Results files use the dataset's own ids: here 1 and 2 for contiguous 0 and 1.
    MetadataCatalog.get(name).set(
        thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={1: 0, 2: 1}
    )
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mapper = SAMDatasetMapper(cfg, is_train=True)
    for _ in range(200):
        losses = model([mapper(r) for r in records])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    return model, records, name, folder


def _results(records):
    """Detections: each object's box moved by 2 px, with a score and the file's class ids."""
    out = []
    rng = np.random.default_rng(0)
    for r in records:
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            x0, y0 = x0 + rng.uniform(-2, 2), y0 + rng.uniform(-2, 2)
            out.append(
                {
                    "image_id": r["image_id"],
                    "category_id": a["category_id"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(rng.uniform(0.3, 1.0)),
                }
            )
    out.append(
        {"image_id": records[0]["image_id"], "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.01}
    )
    return out


@pytest.mark.slow
def test_prompts_from_results_file(trained, tmp_path):
    model, records, name, _ = trained
    results = _results(records)
    path = tmp_path / "coco_instances_results.json"
    path.write_text(json.dumps(results))
    cfg = tiny_cfg(
        MODEL__SAM__PROMPT__SOURCE="detector",
        MODEL__SAM__DETECTOR__RESULTS_FILE=str(path),
        MODEL__SAM__DETECTOR__SCORE_THRESHOLD=0.1,
    )
    loader = Trainer.build_test_loader(cfg, name)
    margin = 4
    for (x,) in loader:
        with torch.no_grad():
            inst = model([x])[0]["instances"]
        dets = [r for r in results if r["image_id"] == x["image_id"] and r["score"] >= 0.1]
        assert len(inst) == len(dets)  # the 0.01 detection is below the threshold
        assert inst.pred_classes.tolist() == [d["category_id"] - 1 for d in dets]
        torch.testing.assert_close(inst.scores, torch.tensor([d["score"] for d in dets]))
        for mask, d in zip(inst.pred_masks, dets):
            x0, y0, w, h = d["bbox"]
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(xs) > 0.5 * w * h * 0.6  # a real mask, not a speck
            assert xs.min() >= x0 - margin and xs.max() <= x0 + w + margin
            assert ys.min() >= y0 - margin and ys.max() <= y0 + h + margin


@pytest.mark.slow
def test_results_file_with_unknown_class_is_refused(trained, tmp_path):
    _, records, name, _ = trained
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps([{"image_id": 11, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.9}])
    )
    cfg = tiny_cfg(
        MODEL__SAM__PROMPT__SOURCE="detector", MODEL__SAM__DETECTOR__RESULTS_FILE=str(path)
    )
    with pytest.raises(ValueError, match=r"bad\.json.*category_id 7"):
        Trainer.build_test_loader(cfg, name)


@pytest.mark.slow
def test_detector_in_process(trained, tmp_path):
    model, records, name, _ = trained
    det_cfg = tmp_path / "det.yaml"
    det_cfg.write_text(
        '_BASE_: "%s"\nMODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 0.0\n'
        % os.path.join(CONFIGS, "mask_rcnn_instant_test.yaml")
    )
    torch.manual_seed(1)
    cfg = tiny_cfg(
        MODEL__SAM__PROMPT__SOURCE="detector",
        MODEL__SAM__DETECTOR__CONFIG_FILE=str(det_cfg),
        MODEL__SAM__DETECTOR__SCORE_THRESHOLD=0.0,
        MODEL__SAM__DETECTOR__SCORE_MODE="detector_x_iou",
    )
    assert cfg.MODEL.META_ARCHITECTURE == "DetectorPromptedSAM"  # chosen by load_config
    sam = build_model(cfg)
    # The detector is outside the module's state: a SAMPrompt state dict fits it exactly.
    assert set(sam.state_dict()) == set(model.state_dict())
    sam.load_state_dict(model.state_dict())
    sam.eval()
    x = SAMDatasetMapper(cfg, is_train=False)(records[0])
    with torch.no_grad():
        (out,) = sam([x])
        dets = sam.detector_prompts([x])[0]
    inst = out["instances"]
    assert len(inst) == len(dets) > 0  # a random detector still proposes boxes at threshold 0
    assert torch.equal(inst.pred_classes, dets.prompt_classes)
    assert (inst.scores <= dets.prompt_scores + 1e-6).all()  # detector score x IoU in [0, 1]
    assert inst.pred_masks.shape[1:] == (x["height"], x["width"])


@pytest.mark.parametrize(
    "keys, message",
    [
        ({}, "neither is set"),
        ({"CONFIG_FILE": "det.yaml", "RESULTS_FILE": "r.json"}, "both are set"),
    ],
)
def test_detector_source_needs_exactly_one_of_its_keys(keys, message):
    opts = {f"MODEL__SAM__DETECTOR__{k}": v for k, v in keys.items()}
    with pytest.raises(ValueError, match=rf"CONFIG_FILE.*RESULTS_FILE.*{message}"):
        tiny_cfg(MODEL__SAM__PROMPT__SOURCE="detector", **opts)


def test_detector_keys_without_detector_source_are_refused():
    with pytest.raises(ValueError, match="PROMPT.SOURCE"):
        tiny_cfg(MODEL__SAM__DETECTOR__RESULTS_FILE="r.json")


@pytest.mark.slow
def test_comparison_command_end_to_end(tmp_path):
    import subprocess
    import sys

    from common import REPO

    from sam_prompt.data import SyntheticIWPSpec, ensure_synthetic_dataset

    spec = SyntheticIWPSpec(num_train=2, num_test=2, image_size=128, cell_spacing=40, seed=3)
    ensure_synthetic_dataset(str(tmp_path / "data"), "tiny_iwp", spec)
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "compare.py"),
            "--dataset",
            "tiny_iwp",
            "--data-root",
            str(tmp_path / "data"),
            "--output",
            str(out),
            "--maskrcnn-iters",
            "2",
            "--sam-iters",
            "3",
            "--point-iters",
            "2",
            "SEED",  # a random initialisation per run: the point row's weights must be row 2's
            "-1",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in rows] == [
        "Mask R-CNN (MViTv2)",
        "SAM, box prompts",
        "SAM, point prompts (from row 2)",
        "SAM prompted by Mask R-CNN",
        "filled prompt box (trivial)",
        "ellipse in prompt box (trivial)",
    ]
    # A 2-iteration detector may find nothing (AP undefined: null); the others are numbers.
    assert all(r["AP"] is None or 0 <= r["AP"] <= 100 for r in rows)
    assert all(r["AP"] is not None for r in rows[1:3])
    assert rows[4]["AP50"] == 100.0  # filled ground-truth boxes always overlap their cells by > 50%
    assert rows[5]["AP"] > rows[4]["AP"]  # rounded cells: the ellipse beats the filled box
    assert all(r["train_seconds"] > 0 for r in rows[:3])  # training time of the trained rows
    assert "| SAM prompted by Mask R-CNN" in (out / "comparison.md").read_text()
    assert (out / "mask_rcnn" / "coco_instances_results.json").exists()
    # The point row starts from the box row's weights.
    # (2 AdamW steps at lr <= 1e-3 move each weight by at most ~2e-3; another init by ~0.05)
    import torch

    box, point = (
        torch.load(out / run / "model_final.pth", map_location="cpu", weights_only=False)["model"]
        for run in ("sam_box", "sam_point")
    )
    key = "sam.image_encoder.patch_embed.proj.weight"
    assert (box[key] - point[key]).abs().max() < 5e-3
    assert (box[key] - point[key]).abs().max() > 0  # and it trained
