"""
LoRA on SAM's image encoder (``MODEL.SAM.LORA``) through the ``peft`` library, an optional
dependency imported only when LoRA is used (``pip install -e .[lora]``).
"""

import logging

__all__ = ["add_lora", "merge_lora", "is_lora_key", "base_key"]

logger = logging.getLogger(__name__)


def add_lora(image_encoder, rank, alpha, target_modules, dropout=0.0):
    """
    Wrap ``target_modules`` of the encoder (default: the attention projections ``qkv``) with LoRA
    adapters; the encoder's own weights are frozen, the adapters train.

    Returns:
        the encoder with adapters (the same module, changed in place).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("MODEL.SAM.LORA needs peft: pip install -e .[lora]") from None
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout
    )
    encoder = inject_adapter_in_model(config, image_encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad_(is_lora_key(name))
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in encoder.parameters())
    logger.info(
        f"LoRA (rank {rank}, alpha {alpha}, on {list(target_modules)}): {trainable:,} trainable "
        f"image-encoder parameters of {total:,} ({100 * trainable / total:.2f}%)"
    )
    return encoder


def is_lora_key(name):
    return ".lora_" in name or name.startswith("lora_")


def base_key(name):
    """The key a LoRA-wrapped weight has without LoRA (``qkv.base_layer.weight`` -> ``qkv.weight``)."""
    return name.replace(".base_layer.", ".")


def merge_lora(module):
    """
    A state dict of ``module`` with every LoRA adapter merged into its base weight and the
    official key names (the module itself is left unmerged).
    """
    layers = [m for m in module.modules() if hasattr(m, "merge") and hasattr(m, "lora_A")]
    for m in layers:
        m.merge()
    try:
        state = {
            base_key(k): v.detach().clone()
            for k, v in module.state_dict().items()
            if not is_lora_key(k)
        }
    finally:
        for m in layers:
            m.unmerge()
    return state
