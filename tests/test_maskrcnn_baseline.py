"""The timm backbone in yacs and the MViTv2 Mask R-CNN baseline."""

import os

import numpy as np
import pytest
import torch
from common import CONFIGS, polygon_ellipse, shapes_image
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import polygons_to_bitmask
from detectron2.utils.events import EventStorage

from sam_prompt import TimmBackbone, add_sam_config
from sam_prompt.mapper import detector_train_mapper


def maskrcnn_cfg(*opts):
    cfg = get_cfg()
    add_sam_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "mask_rcnn_instant_test.yaml"))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize(
    "name, kwargs, channels",
    [
        ("mvitv2_tiny", {"img_size": 128}, [96, 192, 384, 768]),
        ("resnet18", {}, [64, 128, 256, 512]),
    ],
)
def test_backbone_strides_and_channels(name, kwargs, channels):
    indices = [0, 1, 2, 3] if name.startswith("mvit") else [1, 2, 3, 4]
    bb = TimmBackbone(name, indices, **kwargs)
    shapes = bb.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == channels
    # A non-square input smaller than the fixed size: features match the input's extent.
    out = bb(torch.zeros(1, 3, 96, 128))
    for (k, s), c in zip(shapes.items(), channels):
        assert out[k].shape == (1, c, 96 // s.stride, 128 // s.stride)


@pytest.mark.parametrize("name", ["mvitv2_small", "mvitv2_base"])
def test_baseline_leaf_backbones_build(name):
    bb = TimmBackbone(name, [0, 1, 2, 3], img_size=64)
    assert [s.stride for s in bb.output_shape().values()] == [4, 8, 16, 32]
    assert bb(torch.zeros(1, 3, 64, 64))["res5"].shape[-2:] == (2, 2)


def test_fixed_size_backbone_refuses_larger_input():
    bb = TimmBackbone("mvitv2_tiny", [0, 1, 2, 3], img_size=64)
    with pytest.raises(ValueError, match="larger than the timm model's fixed size 64"):
        bb(torch.zeros(1, 3, 96, 64))


@pytest.mark.parametrize("name, kwargs", [("mvitv2_tiny", {"img_size": 64}), ("resnet18", {})])
def test_freeze_at(name, kwargs):
    indices = [0, 1, 2, 3] if name.startswith("mvit") else [1, 2, 3, 4]
    counts = []
    for k in range(0, 4):
        bb = TimmBackbone(name, indices, freeze_at=k, **kwargs)
        counts.append(sum(not p.requires_grad for p in bb.parameters()))
    assert counts[0] == 0 and counts[0] < counts[1] < counts[2] < counts[3]


def test_local_pretrained_file_is_loaded(tmp_path):
    import timm

    torch.manual_seed(3)
    full = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "resnet18_local.pth"
    torch.save(full.state_dict(), path)
    bb = TimmBackbone("resnet18", [1, 2, 3, 4], pretrained_file=str(path))
    torch.testing.assert_close(bb.model.conv1.weight, full.conv1.weight)


@pytest.mark.slow
def test_mask_rcnn_training_loss_falls(tmp_path):
    rec = shapes_image(
        str(tmp_path / "one.png"),
        [(polygon_ellipse(60, 60, 40, 30), 0), (polygon_ellipse(170, 120, 45, 35, 7), 1)],
        size=(192, 256),
    )
    cfg = maskrcnn_cfg("INPUT.RANDOM_FLIP", "none")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    mapper = DatasetMapper(cfg, is_train=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    history = []
    for _ in range(8):
        with EventStorage():  # GeneralizedRCNN logs proposal statistics in training
            losses = model([mapper(rec)])
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert {"loss_mask", "loss_rpn_cls", "loss_cls", "loss_box_reg"} <= set(losses)
    assert np.isfinite(history).all()
    assert np.mean(history[-3:]) < np.mean(history[:3])
    model.eval()
    with torch.no_grad():
        (out,) = model([DatasetMapper(cfg, is_train=False)(rec)])
    assert out["instances"].image_size == (192, 256)


def test_d4_flip_reaches_the_detector_mapper(tmp_path):
    rec = shapes_image(str(tmp_path / "one.png"), [(polygon_ellipse(60, 50, 30, 20), 0)])
    mapper = detector_train_mapper(maskrcnn_cfg("INPUT.RANDOM_FLIP", "d4"))
    shapes = set()
    for _ in range(30):
        out = mapper(rec)
        h, w = out["image"].shape[1:]
        shapes.add((h, w))
        inside = polygons_to_bitmask(out["instances"].gt_masks.polygons[0], h, w)
        # The ellipse is drawn yellow (red channel 220) on a background of ~90.
        assert (out["image"][0][torch.as_tensor(inside)] > 160).float().mean() > 0.9
    assert shapes == {(192, 256), (256, 192)}  # transposed views too
