"""tools/export_model.py: official SAM layout, ONNX decoder/encoder parity, bad input."""

import json
import os
import re

import pytest
import torch
from common import CONFIGS, polygon_ellipse, shapes_image, tiny_cfg
from detectron2.modeling import build_model

from sam_prompt import SAMDatasetMapper, build_sam

export_model = pytest.importorskip("export_model", reason="tools/ on sys.path (conftest)")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    path = str(tmp_path_factory.mktemp("w") / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 9}, path)
    return path


def run(*args):
    try:
        export_model.main([str(a) for a in args])
    except SystemExit as e:
        return str(e.code)
    return None


CFG = os.path.join(CONFIGS, "sam_instant_test.yaml")


def test_sam_layout_gives_the_same_masks(weights, tmp_path):
    out = tmp_path / "sam_custom.pth"
    assert (
        run("--config-file", CFG, "--format", "sam", "--output", out, "MODEL.WEIGHTS", weights)
        is None
    )
    sam = build_sam(**json.load(open(str(out) + ".json")))
    sam.load_state_dict(torch.load(out))  # strict: the official layout, every key
    sam.eval()
    # The same keys as segment_anything's own ViT-B (sizes differ: this one is custom).
    from segment_anything import sam_model_registry

    def layout(state):  # key names, block numbers aside (this one has 2 blocks, ViT-B 12)
        return {re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in state}

    assert layout(sam.state_dict()) == layout(sam_model_registry["vit_b"]().state_dict())

    cfg = tiny_cfg(MODEL__WEIGHTS=weights)
    from sam_prompt.export import load_model

    model = load_model(cfg)
    rec = shapes_image(
        str(tmp_path / "a.png"),
        [(polygon_ellipse(60, 50, 30, 20), 0), (polygon_ellipse(150, 120, 40, 30), 1)],
    )
    x = SAMDatasetMapper(cfg, is_train=False)(rec)
    with torch.no_grad():
        ours = model([x])[0]["instances"].pred_masks
        theirs = sam(
            [
                {
                    "image": x["image"].float(),
                    "original_size": (x["height"], x["width"]),
                    "boxes": x["instances"].prompt_boxes.tensor,
                }
            ],
            multimask_output=False,
        )[0]["masks"][:, 0]
    assert ours.shape == theirs.shape
    assert (ours != theirs).float().mean() < 1e-3  # identical up to pixels on the threshold


def test_onnx_decoder_and_encoder_match_pytorch(weights, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    dec, enc = tmp_path / "decoder.onnx", tmp_path / "encoder.onnx"
    assert (
        run(
            "--config-file",
            CFG,
            "--format",
            "onnx",
            "--output",
            dec,
            "--encoder-onnx",
            enc,
            "MODEL.WEIGHTS",
            weights,
        )
        is None
    )
    printed = capsys.readouterr().out
    diffs = [
        float(l.split("difference ")[1].rstrip(")"))
        for l in printed.splitlines()
        if "difference" in l
    ]
    assert len(diffs) == 2 and diffs[0] < 1e-3 and diffs[1] < 1e-3, printed
    import onnxruntime

    names = [i.name for i in onnxruntime.InferenceSession(str(dec)).get_inputs()]
    assert names == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]


def test_bad_input_is_one_line(weights, tmp_path):
    mrcnn = os.path.join(CONFIGS, "mask_rcnn_instant_test.yaml")
    assert "not a SAMPrompt model" in run(
        "--config-file",
        mrcnn,
        "--format",
        "sam",
        "--output",
        tmp_path / "x.pth",
        "MODEL.WEIGHTS",
        weights,
    )
    assert "not found" in run(
        "--config-file",
        CFG,
        "--format",
        "sam",
        "--output",
        tmp_path / "x.pth",
        "MODEL.WEIGHTS",
        tmp_path / "nope.pth",
    )
    assert "does not exist" in run(
        "--config-file",
        CFG,
        "--format",
        "sam",
        "--output",
        tmp_path / "no" / "x.pth",
        "MODEL.WEIGHTS",
        weights,
    )
    # A Detectron2 checkpoint of another model (a detector) as a SAM model's weights.
    det = build_model(tiny_cfg("mask_rcnn_instant_test.yaml"))
    torch.save({"model": det.state_dict()}, tmp_path / "det.pth")
    err = run(
        "--config-file",
        CFG,
        "--format",
        "sam",
        "--output",
        tmp_path / "x.pth",
        "MODEL.WEIGHTS",
        tmp_path / "det.pth",
    )
    assert "does not fit this model" in err and "\n" not in err


@pytest.mark.parametrize("key", ["FINE_FEATURES", "DECODER_WINDOW"])
def test_model_beyond_the_official_decoder_is_refused(weights, tmp_path, key):
    # The official layout and the ONNX decoder have no input for the fine image features, and
    # decode the whole embedding: an export would give other masks.
    err = run(
        "--config-file",
        CFG,
        "--format",
        "sam",
        "--output",
        tmp_path / "x.pth",
        "MODEL.WEIGHTS",
        weights,
        f"MODEL.SAM.{key}",
        8,
    )
    assert key in err and "\n" not in err
    assert not os.path.exists(tmp_path / "x.pth")
