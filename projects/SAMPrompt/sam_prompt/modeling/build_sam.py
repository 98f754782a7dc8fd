"""Build Segment Anything models from the config and load official checkpoints."""

import logging
from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

logger = logging.getLogger(__name__)

# Sizes of the official models (Kirillov et al., 2023).
OFFICIAL_SAM_TYPES = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def sam_arch_from_cfg(cfg):
    """Return the architecture of ``cfg.MODEL.SAM`` as a dict of keyword arguments of ``build_sam``."""
    sam_type = cfg.MODEL.SAM.TYPE
    if sam_type in OFFICIAL_SAM_TYPES:
        return dict(
            image_size=1024,
            patch_size=16,
            window_size=14,
            prompt_embed_dim=256,
            decoder_mlp_dim=2048,
            **OFFICIAL_SAM_TYPES[sam_type],
        )
    if sam_type != "custom":
        raise ValueError(
            f"MODEL.SAM.TYPE={sam_type!r}: expected one of {sorted(OFFICIAL_SAM_TYPES)} or 'custom'"
        )
    c = cfg.MODEL.SAM.CUSTOM
    return dict(
        image_size=c.IMAGE_SIZE,
        patch_size=c.PATCH_SIZE,
        window_size=c.ENCODER_WINDOW_SIZE,
        prompt_embed_dim=c.PROMPT_EMBED_DIM,
        decoder_mlp_dim=c.DECODER_MLP_DIM,
        embed_dim=c.ENCODER_EMBED_DIM,
        depth=c.ENCODER_DEPTH,
        num_heads=c.ENCODER_NUM_HEADS,
        global_attn_indexes=tuple(c.ENCODER_GLOBAL_ATTN_INDEXES),
    )


def build_sam(
    *,
    image_size,
    patch_size,
    window_size,
    prompt_embed_dim,
    decoder_mlp_dim,
    embed_dim,
    depth,
    num_heads,
    global_attn_indexes,
):
    """Build a randomly initialised :class:`segment_anything.modeling.Sam`."""
    if image_size % patch_size:
        raise ValueError(
            f"SAM image size {image_size} is not a multiple of patch size {patch_size}"
        )
    if any(not 0 <= i < depth for i in global_attn_indexes):
        raise ValueError(f"global attention indexes {global_attn_indexes} outside [0, {depth})")
    embedding_size = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=global_attn_indexes,
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=8,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=max(prompt_embed_dim, 32),
        ),
        # SAM's normalisation, for RGB input in [0, 255].
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def copy_single_mask_output(mask_decoder, noise=0.01, seed=0):
    """
    Make the multimask outputs of SAM's ``mask_decoder`` (a single point's three masks) copies of
    its single-mask output: the mask token and its hypernetwork MLP. The copies get a seeded
    normal noise of ``noise`` times each tensor's root mean square, so that the three masks can
    diverge when trained (the loss trains the best of them only).

    For point prompts fine-tuned from a model trained with boxes (``MODEL.SAM.MULTIMASK_INIT``):
    boxes train the single-mask output only, and the three others, still at their initial
    weights, start far behind it (dice ~0.97 on IWP tiles). The IoU head's rows are left as they
    are: copied too, the three masks' predicted IoUs start equal, and from a box model trained 900
    iterations they ended ranking the point masks backwards (segm AP 7.1 on iwp-val, against
    13.4 with the rows left as loaded).
    """
    generator = torch.Generator().manual_seed(seed)

    def jitter(t):
        rms = t.square().mean().sqrt()
        return t + noise * rms * torch.randn(t.shape, generator=generator).to(t)

    tokens = mask_decoder.mask_tokens.weight
    mlps = mask_decoder.output_hypernetworks_mlps
    with torch.no_grad():
        for k in range(1, mask_decoder.num_mask_tokens):
            tokens[k] = jitter(tokens[0])
            for dst, src in zip(mlps[k].parameters(), mlps[0].parameters()):
                dst.copy_(jitter(src))


def load_sam_checkpoint(sam, path):
    """
    Load an official Segment Anything checkpoint (``sam_vit_*.pth``: a state dict with
    ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys) into ``sam``.

    Detectron2 checkpoints of the whole meta-architecture (keys ``sam.*``, possibly wrapped in
    ``{"model": ...}``) are accepted too. Any missing, unexpected or mis-shaped key is an error that
    names the file: a checkpoint of another SAM size must not load half-way.
    """
    from detectron2.utils.file_io import PathManager

    try:
        with PathManager.open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"SAM checkpoint not found: {path} (MODEL.SAM.CHECKPOINT)"
        ) from None
    except Exception as e:
        raise RuntimeError(f"Cannot read SAM checkpoint {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise RuntimeError(f"SAM checkpoint {path} does not hold a state dict")
    state = {(k[len("sam.") :] if k.startswith("sam.") else k): v for k, v in state.items()}
    # pixel_mean/pixel_std are non-persistent buffers of Sam; some exports include them anyway.
    state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}

    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:

        def head(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = []
        if missing:
            problems.append(f"missing keys: {head(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {head(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {head(mismatched)}")
        raise RuntimeError(
            f"SAM checkpoint {path} does not fit MODEL.SAM.TYPE's architecture ("
            + "; ".join(problems)
            + ")"
        )
    sam.load_state_dict(state)
    logger.info(f"Loaded SAM weights from {path} ({len(state)} tensors)")
