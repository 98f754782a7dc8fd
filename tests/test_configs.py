"""Every YAML merges; the instant-test config builds a model; CLI shorthands map to keys."""

import glob
import os

import pytest
from common import CONFIGS, tiny_cfg
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from sam_prompt import SAMPrompt, add_sam_config
from sam_prompt.engine import argument_parser

YAMLS = sorted(glob.glob(os.path.join(CONFIGS, "*.yaml")))


def test_there_are_configs():
    names = {os.path.basename(p) for p in YAMLS}
    assert {"Base-SAMPrompt.yaml", "sam_box.yaml", "sam_point.yaml", "sam_instant_test.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=os.path.basename)
def test_yaml_merges_and_is_self_contained(path):
    with open(path) as f:
        text = f.read()
    bases = [l.split(":", 1)[1].strip().strip("'\"") for l in text.splitlines() if l.startswith("_BASE_")]
    assert all("/" not in b for b in bases), f"_BASE_ outside projects/SAMPrompt/configs: {bases}"
    cfg = get_cfg()
    add_sam_config(cfg)
    cfg.merge_from_file(path)  # raises on unknown keys
    assert cfg.MODEL.META_ARCHITECTURE


def test_prompt_types_of_leaf_configs():
    for name, prompt in (("sam_box.yaml", "box"), ("sam_point.yaml", "point")):
        cfg = get_cfg()
        add_sam_config(cfg)
        cfg.merge_from_file(os.path.join(CONFIGS, name))
        assert cfg.MODEL.SAM.PROMPT.TYPE == prompt
        assert cfg.MODEL.SAM.TYPE == "vit_b"


def test_loss_defaults_follow_the_sam_paper():
    cfg = get_cfg()
    add_sam_config(cfg)
    loss = cfg.MODEL.SAM.LOSS
    assert (loss.FOCAL_WEIGHT, loss.DICE_WEIGHT, loss.IOU_WEIGHT) == (20.0, 1.0, 1.0)
    assert cfg.MODEL.SAM.MAX_INSTANCES_PER_IMAGE == 0  # no cap


def test_instant_test_config_builds_sam_prompt():
    model = build_model(tiny_cfg())
    assert isinstance(model, SAMPrompt)
    assert model.image_size == 256
    assert not hasattr(model, "roi_heads")


def test_bad_sam_type_is_a_clear_error():
    with pytest.raises(ValueError, match="MODEL.SAM.TYPE"):
        build_model(tiny_cfg(MODEL__SAM__TYPE="vit_x"))


def test_shorthand_flags_set_config_keys(tmp_path, monkeypatch):
    from sam_prompt.engine import setup

    monkeypatch.chdir(tmp_path)
    args = argument_parser().parse_args(
        [
            "--config-file", os.path.join(CONFIGS, "sam_instant_test.yaml"),
            "--prompt", "point",
            "--dataset", "iwp_synthetic",
            "--data-root", str(tmp_path / "data"),
            "--merge-classes", "iwp",
            "OUTPUT_DIR", str(tmp_path / "out"),
        ]
    )
    cfg = setup(args)
    assert cfg.MODEL.SAM.PROMPT.TYPE == "point"
    assert cfg.DATASETS.TRAIN == ("iwp_synthetic_train",)
    assert cfg.DATASETS.TEST == ("iwp_synthetic_test",)
    assert cfg.DATASETS.MERGE_CLASSES == "iwp"
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("iwp_synthetic_train").thing_classes == ["iwp"]
    assert os.path.isdir(tmp_path / "data" / "iwp_synthetic" / "train")


def test_detector_class_count_must_match_the_data(tmp_path, monkeypatch):
    from sam_prompt.engine import setup

    monkeypatch.chdir(tmp_path)
    args = argument_parser().parse_args(
        [
            "--config-file", os.path.join(CONFIGS, "mask_rcnn_instant_test.yaml"),
            "--dataset", "iwp_synthetic", "--data-root", str(tmp_path / "data"),
            "--merge-classes", "iwp", "OUTPUT_DIR", str(tmp_path / "out"),
        ]
    )
    with pytest.raises(ValueError, match="NUM_CLASSES 1"):
        setup(args)
