"""LoRA on the image encoder (peft): what trains, checkpoints, export merged."""

import pytest
import torch
from common import mapped, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from test_model import records  # noqa: F401  (fixture)

from sam_prompt.checkpoint import CheckpointError, SAMCheckpointer

pytest.importorskip(
    "peft", reason="LoRA is an extra (pip install -e .[lora]); make test installs it"
)

LORA = dict(MODEL__SAM__LORA__RANK=4, MODEL__SAM__LORA__ALPHA=8.0)


def _trained_lora_model(records):  # noqa: F811
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**LORA))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        losses = model(mapped(records[:1]))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return model.eval()


def test_only_adapters_train_in_the_encoder(records):  # noqa: F811
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**LORA))
    model.train()
    sum(model(mapped(records[:1])).values()).backward()
    enc = dict(model.sam.image_encoder.named_parameters())
    lora = [n for n in enc if ".lora_" in n]
    assert lora and all(enc[n].requires_grad for n in lora)
    assert all(not p.requires_grad and p.grad is None for n, p in enc.items() if ".lora_" not in n)
    assert any(enc[n].grad is not None and enc[n].grad.abs().sum() > 0 for n in lora)
    assert any(p.grad is not None for p in model.sam.mask_decoder.parameters())


def test_lora_checkpoints_resume_and_plain_weights_load(records, tmp_path):  # noqa: F811
    model = _trained_lora_model(records)
    DetectionCheckpointer(model, str(tmp_path)).save("model_lora")
    again = build_model(tiny_cfg(**LORA)).eval()
    SAMCheckpointer.from_config(tiny_cfg(**LORA), again).load(str(tmp_path / "model_lora.pth"))
    batch = mapped(records[:1], is_train=False)
    with torch.no_grad():
        a, b = model(batch)[0]["instances"], again(batch)[0]["instances"]
    assert torch.equal(a.pred_masks, b.pred_masks)
    # A checkpoint of a model without LoRA loads into the base weights (adapters start fresh).
    torch.manual_seed(1)
    plain = build_model(tiny_cfg())
    DetectionCheckpointer(plain, str(tmp_path)).save("model_plain")
    lora = build_model(tiny_cfg(**LORA))
    SAMCheckpointer.from_config(tiny_cfg(**LORA), lora).load(str(tmp_path / "model_plain.pth"))
    w = "image_encoder.blocks.0.attn.qkv"
    torch.testing.assert_close(
        lora.sam.state_dict()[f"{w}.base_layer.weight"], plain.sam.state_dict()[f"{w}.weight"]
    )
    # ... but a LoRA checkpoint without LoRA in the config is refused with the fix.
    with pytest.raises(CheckpointError, match="LORA"):
        SAMCheckpointer.from_config(tiny_cfg(), build_model(tiny_cfg())).load(
            str(tmp_path / "model_lora.pth")
        )


def test_export_merges_lora_into_the_official_layout(records, tmp_path):  # noqa: F811
    from sam_prompt import build_sam
    from sam_prompt.export import export_sam_checkpoint
    from sam_prompt.modeling.build_sam import sam_arch_from_cfg

    model = _trained_lora_model(records)
    cfg = tiny_cfg(**LORA)
    export_sam_checkpoint(model, cfg, str(tmp_path / "sam.pth"))
    sam = build_sam(**sam_arch_from_cfg(cfg))
    sam.load_state_dict(torch.load(tmp_path / "sam.pth"))  # strict: no LoRA keys left
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(
            sam.image_encoder(image), model.sam.image_encoder(image), rtol=1e-4, atol=1e-4
        )
