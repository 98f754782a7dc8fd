"""Official-format SAM checkpoints load into the meta-architecture and behave identically."""

import numpy as np
import pytest
import torch
from common import polygon_ellipse, shapes_image, tiny_cfg
from detectron2.modeling import build_model

from sam_prompt import SAMDatasetMapper, build_sam
from sam_prompt.modeling.build_sam import sam_arch_from_cfg


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
