"""Models: SAMPrompt, trivial baselines, and a timm backbone for the Mask R-CNN baseline."""

from detectron2.modeling import META_ARCH_REGISTRY

from .baselines import FilledPromptBox, InscribedEllipse
from .build_sam import build_sam, copy_single_mask_output, load_sam_checkpoint
from .decoder_window import PromptWindows
from .meta_arch import DetectorPromptedSAM, SAMPrompt
from .timm_backbone import TimmBackbone, build_timm_fpn_backbone


def uses_prompts(cfg):
    """Whether ``cfg``'s meta-architecture takes prompts (and so SAMDatasetMapper's inputs)."""
    try:
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:
        return False
    return bool(getattr(arch, "uses_prompts", False))
