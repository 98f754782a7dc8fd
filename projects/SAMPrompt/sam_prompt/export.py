"""
Take a fine-tuned SAMPrompt out of Detectron2 (``tools/export_model.py``):

* the official checkpoint layout (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``)
  that ``segment_anything.sam_model_registry[TYPE](checkpoint=...)`` loads;
* the ONNX prompt decoder of segment-anything's ``SamOnnxModel`` (image embedding, points with a
  padding point, mask input, original image size -> masks, IoU, low-res logits), which
  annotation tools run in the browser or the desktop, checked against PyTorch with onnxruntime;
* optionally the image encoder as a separate ONNX file.
"""

import json
import logging
import os

import numpy as np
import torch

__all__ = [
    "ExportError",
    "load_model",
    "export_sam_checkpoint",
    "export_onnx_decoder",
    "export_onnx_encoder",
    "check_writable",
]

logger = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """An export that cannot be done as asked."""


def check_writable(path):
    """Refuse, before any work, an output whose folder cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"output folder {folder} is not writable")


def load_model(cfg):
    """The SAMPrompt model of ``cfg`` with MODEL.WEIGHTS loaded (CPU, eval)."""
    from detectron2.modeling import build_model

    from .checkpoint import SAMCheckpointer
    from .modeling import SAMPrompt

    if not cfg.MODEL.WEIGHTS:
        raise ExportError("give the fine-tuned model as MODEL.WEIGHTS path/to/model_final.pth")
    if not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise ExportError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} not found")
    model = build_model(cfg)
    if not isinstance(model, SAMPrompt):
        raise ExportError(
            f"{cfg.MODEL.META_ARCHITECTURE} is not a SAMPrompt model: only SAM exports to these formats"
        )
    if cfg.MODEL.SAM.FINE_FEATURES > 0:
        raise ExportError(
            f"this model has MODEL.SAM.FINE_FEATURES {cfg.MODEL.SAM.FINE_FEATURES}: its fine image "
            "features feed the mask decoder, and neither the official checkpoint layout nor the "
            "ONNX decoder has an input for them; train without them to export"
        )
    if cfg.MODEL.SAM.DECODER_WINDOW > 0:
        raise ExportError(
            f"this model has MODEL.SAM.DECODER_WINDOW {cfg.MODEL.SAM.DECODER_WINDOW}: it decodes "
            "each prompt on a window of the embedding around it, with the window's own "
            "positions; the official checkpoint layout and the ONNX decoder decode the whole "
            "embedding, where its masks would be wrong. Train with MODEL.SAM.DECODER_WINDOW 0 "
            "to export"
        )
    SAMCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    prompt = cfg.MODEL.SAM.PROMPT
    if prompt.BOX_AS_MASK or prompt.POINT_AS_MASK > 0:
        logging.getLogger(__name__).warning(
            f"This model was trained with MODEL.SAM.PROMPT.BOX_AS_MASK {prompt.BOX_AS_MASK!r} / "
            f"POINT_AS_MASK {prompt.POINT_AS_MASK}: with each box (point) prompt, give that mask as "
            "the mask input (has_mask_input 1; SAMPrompt._box_masks / _point_masks draw it), or "
            "its masks will be worse than in SAMPrompt"
        )
    return model.cpu().eval()


def export_sam_checkpoint(model, cfg, path):
    """
    Write ``model.sam``'s state dict in the official layout. For ``MODEL.SAM.TYPE custom`` the
    sizes go beside it as ``<path>.json``: rebuild with ``sam_prompt.build_sam(**json.load(f))``
    and ``load_state_dict(torch.load(path))`` (segment_anything's registry knows vit_b/l/h only).

    Returns:
        list[str]: the files written.
    """
    from .modeling.build_sam import sam_arch_from_cfg
    from .modeling.lora import merge_lora

    check_writable(path)
    torch.save({k: v.cpu() for k, v in merge_lora(model.sam).items()}, path)  # LoRA merged
    written = [path]
    if cfg.MODEL.SAM.TYPE == "custom":
        arch = sam_arch_from_cfg(cfg)
        arch["global_attn_indexes"] = list(arch["global_attn_indexes"])
        with open(path + ".json", "w") as f:
            json.dump(arch, f, indent=1)
        written.append(path + ".json")
    return written


def _decoder_inputs(sam, num_points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    embed_dim = sam.prompt_encoder.embed_dim
    h, w = sam.prompt_encoder.image_embedding_size
    size = sam.image_encoder.img_size
    coords = torch.rand((1, num_points, 2), generator=g) * size
    labels = torch.randint(0, 2, (1, num_points), generator=g).float()
    labels[0, -1] = -1  # the padding point annotation tools add when there is no box
    low_res = 4 * h
    return {
        "image_embeddings": torch.randn((1, embed_dim, h, w), generator=g),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": torch.randn((1, 1, low_res, low_res), generator=g),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([size * 0.75, size], dtype=torch.float32),
    }


def export_onnx_decoder(model, path, opset=17):
    """
    Export the prompt encoder + mask decoder (segment-anything's ``SamOnnxModel``, one mask per
    prompt) and compare onnxruntime with PyTorch on the same inputs.

    Returns:
        float: the largest absolute difference of the mask logits.
    """
    from segment_anything.utils.onnx import SamOnnxModel

    check_writable(path)
    onnx_model = SamOnnxModel(model.sam, return_single_mask=True).eval()
    inputs = _decoder_inputs(model.sam)
    torch.onnx.export(
        onnx_model,
        tuple(inputs.values()),
        path,
        input_names=list(inputs),
        output_names=["masks", "iou_predictions", "low_res_masks"],
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )
    worst = 0.0
    for num_points, has_mask in ((3, 1.0), (1, 0.0), (5, 1.0)):
        check = _decoder_inputs(model.sam, num_points, seed=num_points)
        check["has_mask_input"] = torch.tensor([has_mask])
        with torch.no_grad():
            expected = onnx_model(**check)[0].numpy()
        got = _run_onnx(path, {k: v.numpy() for k, v in check.items()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx_encoder(model, path, opset=17):
    """
    Export the image encoder (normalised, padded (1, 3, S, S) input -> image embedding).

    Returns:
        float: the largest absolute difference of the embeddings, onnxruntime vs PyTorch.
    """
    check_writable(path)
    size = model.sam.image_encoder.img_size
    image = torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(0))
    torch.onnx.export(
        model.sam.image_encoder,
        (image,),
        path,
        input_names=["image"],
        output_names=["image_embeddings"],
        opset_version=opset,
        dynamo=False,
    )
    with torch.no_grad():
        expected = model.sam.image_encoder(image).numpy()
    got = _run_onnx(path, {"image": image.numpy()})[0]
    return float(np.abs(got - expected).max())


def _run_onnx(path, feeds):
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "checking the ONNX export needs onnxruntime: pip install -e .[export]"
        ) from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
