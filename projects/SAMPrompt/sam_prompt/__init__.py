"""SAMPrompt: fine-tune and evaluate Segment Anything with box and point prompts in Detectron2."""

from .config import add_sam_config
from .mapper import InvalidRecordError, SAMDatasetMapper

# Importing the models registers them (META_ARCH_REGISTRY, BACKBONE_REGISTRY).
from .modeling import FilledPromptBox, SAMPrompt, TimmBackbone, build_sam, load_sam_checkpoint

__all__ = [
    "add_sam_config",
    "build_sam",
    "load_sam_checkpoint",
    "FilledPromptBox",
    "InvalidRecordError",
    "SAMDatasetMapper",
    "SAMPrompt",
    "TimmBackbone",
]
