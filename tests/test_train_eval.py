"""End to end: training through the Trainer, COCO evaluation, the copied-in entry point, resume."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from common import REPO, tiny_cfg, two_image_dataset
from detectron2.data import DatasetCatalog, MetadataCatalog

from sam_prompt.engine import Trainer


@pytest.mark.slow
def test_overfit_two_images_reaches_segm_ap_80(tmp_path):
    records = two_image_dataset(str(tmp_path))
    DatasetCatalog.register("overfit_two", lambda: records)
    MetadataCatalog.get("overfit_two").set(thing_classes=["yellow", "cyan"])
    cfg = tiny_cfg(
        DATASETS__TRAIN=("overfit_two",),
        DATASETS__TEST=("overfit_two",),
        SOLVER__MAX_ITER=300,
        SOLVER__BASE_LR=1e-3,
        SEED=0,
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    assert results["segm"]["AP"] >= 80, results
    # Boxes are derived from the predicted masks: good masks give good boxes too.
    assert results["bbox"]["AP"] >= 60, results
    # What COCOEvaluator wrote can be read back.
    with open(tmp_path / "out" / "coco_instances_results.json") as f:
        preds = json.load(f)
    assert len(preds) == 7 and {p["category_id"] for p in preds} == {0, 1}


def _run(cwd, *args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_copied_project_trains_resumes_and_evaluates(tmp_path):
    fork = tmp_path / "fork"
    shutil.copytree(
        os.path.join(REPO, "projects", "SAMPrompt"),
        fork / "projects" / "SAMPrompt",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (fork / "tools").mkdir()
    shutil.copy(os.path.join(REPO, "tools", "train_net.py"), fork / "tools")
    cfg = "projects/SAMPrompt/configs/sam_instant_test.yaml"
    common = ["DATASETS.ROOT", str(tmp_path / "data"), "OUTPUT_DIR", "out"]

    out = _run(
        fork, "--config-file", cfg, *common, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"
    )
    assert f"SAMPrompt from {fork / 'projects' / 'SAMPrompt' / 'sam_prompt'}" in out
    assert (fork / "out" / "model_final.pth").exists()
    assert "copypaste: Task: segm" in out
    with open(fork / "out" / "metrics.json") as f:
        metrics = [json.loads(l) for l in f]
    assert all(np.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)

    # Interrupted runs resume from their last checkpoint.
    out = _run(fork, "--config-file", cfg, "--resume", *common, "SOLVER.MAX_ITER", "6")
    assert "Starting training from iteration 4" in out

    out = _run(
        fork,
        "--config-file",
        cfg,
        "--eval-only",
        "--prompt",
        "point",
        *common,
        "MODEL.WEIGHTS",
        "out/model_final.pth",
    )
    assert "copypaste: Task: segm" in out and "Starting training" not in out
