"""Checkpoints: official SAM files load and behave alike; prompts never trained are refused."""

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from common import mapped, polygon_ellipse, shapes_image, tiny_cfg, two_image_dataset
from detectron2.modeling import build_model
from detectron2.utils import logger as d2_logger

from sam_prompt import SAMDatasetMapper, build_sam
from sam_prompt.checkpoint import CheckpointError, SAMCheckpointer
from sam_prompt.modeling.build_sam import sam_arch_from_cfg
from sam_prompt.modeling.meta_arch import TRAINED_BOX, TRAINED_MULTIMASK, TRAINED_POINT
from sam_prompt.scene import TileModel


@pytest.fixture
def official(tmp_path):
    """A Sam module with random weights and its state dict saved as the official files are."""
    torch.manual_seed(42)
    sam = build_sam(**sam_arch_from_cfg(tiny_cfg(MODEL__SAM__TYPE="custom")))
    sam.eval()
    path = tmp_path / "sam_tiny_official.pth"
    torch.save(sam.state_dict(), path)
    return sam, str(path)


def test_checkpoint_loads_with_keys_mapped_and_gives_identical_outputs(official, tmp_path):
    sam, path = official
    torch.manual_seed(0)  # different random init: the checkpoint must overwrite it all
    model = build_model(tiny_cfg(MODEL__SAM__CHECKPOINT=path, MODEL__SAM__PROMPTS_PER_CHUNK=0))
    for k, v in sam.state_dict().items():
        assert torch.equal(model.state_dict()["sam." + k], v), k

    # An image already at the encoder size: both paths see the same pixels.
    rec = shapes_image(
        str(tmp_path / "x.png"),
        [(polygon_ellipse(60, 60, 30, 25), 0), (polygon_ellipse(170, 100, 40, 30, 7), 1)],
        size=(192, 256),
    )
    x = SAMDatasetMapper(tiny_cfg(), False)(rec)
    model.eval()
    with torch.no_grad():
        ours = model([x])[0]["instances"]
        theirs = sam(
            [
                {
                    "image": x["image"].float(),
                    "original_size": (192, 256),
                    "boxes": x["instances"].prompt_boxes.tensor,
                }
            ],
            multimask_output=False,
        )[0]
    assert torch.equal(ours.pred_masks, theirs["masks"][:, 0])
    torch.testing.assert_close(ours.scores, theirs["iou_predictions"][:, 0].clamp(0, 1))


def test_detectron2_style_checkpoint_also_loads(official, tmp_path):
    sam, _ = official
    path = tmp_path / "d2.pth"
    torch.save({"model": {"sam." + k: v for k, v in sam.state_dict().items()}}, path)
    model = build_model(tiny_cfg(MODEL__SAM__CHECKPOINT=str(path)))
    for k, v in sam.state_dict().items():
        assert torch.equal(model.sam.state_dict()[k], v)


def test_checkpoint_of_another_size_is_refused(official):
    _, path = official
    cfg = tiny_cfg(MODEL__SAM__CHECKPOINT=path, MODEL__SAM__CUSTOM__ENCODER_EMBED_DIM=64)
    with pytest.raises(RuntimeError, match=r"sam_tiny_official\.pth.*shape mismatches"):
        build_model(cfg)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(tiny_cfg(MODEL__SAM__CHECKPOINT=str(tmp_path / "nope.pth")))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(np.random.default_rng(0).bytes(100))
    with pytest.raises(RuntimeError, match="garbage.pth"):
        build_model(tiny_cfg(MODEL__SAM__CHECKPOINT=str(path)))


def test_missing_model_weights_is_one_clear_error(tmp_path):
    from sam_prompt.checkpoint import SAMCheckpointer

    checkpointer = SAMCheckpointer(build_model(tiny_cfg()))
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS .*nope.pth: no such file\.$"):
        checkpointer.load(str(tmp_path / "nope.pth"))
    pretrained = str(tmp_path / "output" / "pretrain" / "model_final.pth")
    with pytest.raises(FileNotFoundError, match="written by `make pretrain`"):
        checkpointer.load(pretrained)
    box = str(tmp_path / "output" / "sam_small_cpu" / "model_final.pth")
    with pytest.raises(
        FileNotFoundError, match=r"written by the box recipe \(configs/sam_small_cpu"
    ):
        checkpointer.load(box)


def _train_step(model, records, **overrides):
    model.train()
    sum(model(mapped(records, **overrides)).values()).backward()


def _predict(model, records, **overrides):
    model.eval()
    with torch.no_grad():
        return model(mapped(records, is_train=False, **overrides))


def _load(path, **overrides):
    model = build_model(tiny_cfg(**overrides))
    SAMCheckpointer.from_config(tiny_cfg(**overrides), model).load(path)
    return model


def test_weights_refuse_prompts_they_were_never_trained_with(tmp_path, caplog, monkeypatch):
    # A box model evaluated with point prompts decodes through untrained point embeddings and
    # three untrained masks: exit code 0 and near-zero AP, unless the checkpoint says so.
    records = two_image_dataset(str(tmp_path))
    point = dict(MODEL__SAM__PROMPT__TYPE="point")
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    assert int(model.prompts_trained) == 0  # random weights: not checked
    assert len(_predict(model, records, **point)[0]["instances"]) == 4
    _train_step(model, records)
    assert int(model.prompts_trained) == TRAINED_BOX
    box_path = str(tmp_path / "box.pth")
    torch.save({"model": model.state_dict()}, box_path)

    with pytest.raises(
        CheckpointError, match=r"trained with box prompts only: point prompts.*TYPE box"
    ):
        _predict(_load(box_path, **point), records, **point)
    with pytest.raises(CheckpointError, match="box prompts only"):  # tools/predict.py: no tile read
        TileModel(tiny_cfg(MODEL__WEIGHTS=box_path, **point))
    assert len(_predict(_load(box_path), records)[1]["instances"]) == 3
    # The interactive evaluation's clicks are points too: a warning (measuring them is allowed).
    monkeypatch.setattr(d2_logger, "_LOG_COUNTER", Counter())
    interactive = dict(MODEL__SAM__INTERACTIVE_EVAL__MAX_CLICKS=3, MODEL__SAM__TEST_AUG="")
    with caplog.at_level(logging.WARNING):
        _predict(_load(box_path, **interactive), records, **interactive)
    assert "corrective clicks (points) go through weights never trained" in caplog.text

    # Fine-tuned with single points: three masks each; boxes stay allowed.
    tuned = _load(box_path, **point)
    _train_step(tuned, records, **point)
    assert int(tuned.prompts_trained) == TRAINED_BOX | TRAINED_POINT | TRAINED_MULTIMASK
    path = str(tmp_path / "point.pth")
    torch.save({"model": tuned.state_dict()}, path)
    assert len(_predict(_load(path, **point), records, **point)[0]["instances"]) == 4
    assert len(_predict(_load(path), records)[0]["instances"]) == 4

    # Points trained with one mask each: their three masks are not.
    one = dict(point, MODEL__SAM__MULTIMASK_FOR_SINGLE_POINT=False)
    single = _load(box_path, **one)
    _train_step(single, records, **one)
    assert int(single.prompts_trained) == TRAINED_BOX | TRAINED_POINT
    path = str(tmp_path / "single.pth")
    torch.save({"model": single.state_dict()}, path)
    with pytest.raises(CheckpointError, match="MULTIMASK_FOR_SINGLE_POINT False as in training"):
        _predict(_load(path, **point), records, **point)
    assert len(_predict(_load(path, **one), records, **one)[0]["instances"]) == 4

    # Points only, from random weights: boxes are refused.
    torch.manual_seed(0)
    points_only = build_model(tiny_cfg(**point))
    _train_step(points_only, records, **point)
    path = str(tmp_path / "points_only.pth")
    torch.save({"model": points_only.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"point prompts and three masks.*only: box prompts"):
        _predict(_load(path), records)


def test_weights_of_unknown_training_are_not_checked(official, tmp_path):
    records = two_image_dataset(str(tmp_path))
    point = dict(MODEL__SAM__PROMPT__TYPE="point")
    # Official weights were trained with every prompt, and stay so when fine-tuned with boxes.
    _, official_path = official
    model = build_model(tiny_cfg(MODEL__SAM__CHECKPOINT=official_path))
    assert int(model.prompts_trained) == -1
    _train_step(model, records)
    assert int(model.prompts_trained) == -1
    # A checkpoint written before the record existed loads as unknown.
    state = {k: v for k, v in model.state_dict().items() if k != "prompts_trained"}
    path = str(tmp_path / "older.pth")
    torch.save({"model": state}, path)
    loaded = _load(path, **point)
    assert int(loaded.prompts_trained) == -1
    assert len(_predict(loaded, records, **point)[0]["instances"]) == 4
