"""Every YAML merges; the instant-test config builds a model; CLI shorthands map to keys."""

import glob
import os

import pytest
from common import CONFIGS, polygon_ellipse, shapes_image, tiny_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from sam_prompt import SAMDatasetMapper, SAMPrompt
from sam_prompt.config import load_config
from sam_prompt.engine import argument_parser

YAMLS = sorted(glob.glob(os.path.join(CONFIGS, "*.yaml")))


def test_there_are_configs():
    names = {os.path.basename(p) for p in YAMLS}
    assert {
        "Base-SAMPrompt.yaml",
        "sam_box.yaml",
        "sam_point.yaml",
        "sam_instant_test.yaml",
    } <= names


@pytest.mark.parametrize("path", YAMLS, ids=os.path.basename)
def test_yaml_merges_and_is_self_contained(path):
    with open(path) as f:
        text = f.read()
    bases = [
        l.split(":", 1)[1].strip().strip("'\"") for l in text.splitlines() if l.startswith("_BASE_")
    ]
    assert all("/" not in b for b in bases), f"_BASE_ outside projects/SAMPrompt/configs: {bases}"
    cfg = load_config(path)  # raises on unknown keys and on inconsistent prompt settings
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY


@pytest.mark.parametrize("name, points", [("sam_box.yaml", 0), ("sam_point.yaml", 1)])
def test_leaf_configs_make_their_prompts(tmp_path, name, points):
    record = shapes_image(str(tmp_path / "a.png"), [(polygon_ellipse(60, 50, 30, 20), 0)])
    inst = SAMDatasetMapper(tiny_cfg(name), is_train=False)(record)["instances"]
    assert inst.prompt_points.shape == (1, points, 2)
    assert (inst.prompt_labels == 1).all()


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
            "--config-file",
            os.path.join(CONFIGS, "sam_instant_test.yaml"),
            "--prompt",
            "point",
            "--dataset",
            "iwp_synthetic",
            "--data-root",
            str(tmp_path / "data"),
            "--merge-classes",
            "iwp",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
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
            "--config-file",
            os.path.join(CONFIGS, "mask_rcnn_instant_test.yaml"),
            "--dataset",
            "iwp_synthetic",
            "--data-root",
            str(tmp_path / "data"),
            "--merge-classes",
            "iwp",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    with pytest.raises(ValueError, match="NUM_CLASSES 1"):
        setup(args)


def test_pretraining_writes_weights_that_fit_the_recipe():
    pretrain = load_config(os.path.join(CONFIGS, "sam_small_pretrain.yaml"))
    recipe = load_config(os.path.join(CONFIGS, "sam_small_cpu.yaml"))
    pretrained = load_config(os.path.join(CONFIGS, "sam_small_pretrained.yaml"))
    assert pretrain.DATASETS.TRAIN == ("iwp_synthetic_realistic_train",)
    assert pretrain.MODEL.WEIGHTS == "" and recipe.MODEL.WEIGHTS == ""
    assert pretrained.MODEL.WEIGHTS == os.path.join(pretrain.OUTPUT_DIR, "model_final.pth")
    assert pretrain.MODEL.SAM.dump() == recipe.MODEL.SAM.dump() == pretrained.MODEL.SAM.dump()
    shapes = [
        {k: v.shape for k, v in build_model(c).state_dict().items()} for c in (pretrain, recipe)
    ]
    assert shapes[0] == shapes[1]


def test_point_recipe_starts_from_the_box_recipe():
    from sam_prompt.engine import _check_multimask_init

    box = load_config(os.path.join(CONFIGS, "sam_small_cpu.yaml"))
    point = load_config(os.path.join(CONFIGS, "sam_small_point_cpu.yaml"))
    assert point.MODEL.WEIGHTS == os.path.join(box.OUTPUT_DIR, "model_final.pth")
    assert point.OUTPUT_DIR != box.OUTPUT_DIR
    assert point.MODEL.SAM.PROMPT.TYPE == "point" and point.MODEL.SAM.MULTIMASK_INIT == "single"
    _check_multimask_init(point)  # the three masks it initialises are decoded
    box_shapes, point_shapes = (
        {k: v.shape for k, v in build_model(c).state_dict().items()} for c in (box, point)
    )
    # Every weight of the box model fits; the point recipe's further refinement pass is new (it
    # starts as the identity).
    assert {k: point_shapes.get(k) for k in box_shapes} == box_shapes
    assert point.MODEL.SAM.FINE_REFINE_PASSES == box.MODEL.SAM.FINE_REFINE_PASSES + 1 == 2
    new = point_shapes.keys() - box_shapes.keys()
    assert new and all(k.startswith("fine_features.refinement.more.0.") for k in new)


def test_interactive_shorthand_turns_test_aug_off(tmp_path):
    from sam_prompt.engine import argument_parser, setup

    cfg_file = os.path.join(CONFIGS, "sam_small_cpu.yaml")
    base = ["--config-file", cfg_file, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
    base += ["OUTPUT_DIR", str(tmp_path / "out")]
    assert setup(argument_parser().parse_args(base)).MODEL.SAM.TEST_AUG == "d4"
    cfg = setup(argument_parser().parse_args(["--interactive", *base]))
    assert cfg.MODEL.SAM.TEST_AUG == "" and cfg.MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS == 20
    build_model(cfg)  # accepted: no test-time augmentation with the clicks


def test_centrality_warns_when_evaluation_clicks_land_anywhere(sam_log):
    # load_config warns: train_net.py, compare.py and the other tools all read configs through it.
    point_cfg = os.path.join(CONFIGS, "sam_small_point_cpu.yaml")
    for eval_point, warned in (("interior", False), ("center", False), ("random", True)):
        sam_log.clear()
        load_config(point_cfg, ["MODEL.SAM.PROMPT.EVAL_POINT", eval_point])
        assert ("add MODEL.SAM.MULTIMASK_CENTRALITY 0" in sam_log.text) == warned, eval_point
    for off in (
        ["MODEL.SAM.MULTIMASK_CENTRALITY", 0.0],
        ["MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT", False],
    ):
        sam_log.clear()
        load_config(point_cfg, ["MODEL.SAM.PROMPT.EVAL_POINT", "random", *off])
        assert "MULTIMASK_CENTRALITY" not in sam_log.text, off
