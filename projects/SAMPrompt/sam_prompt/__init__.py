"""SAMPrompt: fine-tune and evaluate Segment Anything with box and point prompts in Detectron2."""

from .config import add_sam_config, load_config
from .data.check import InvalidRecordError
from .mapper import SAMDatasetMapper

# Importing the models registers them (META_ARCH_REGISTRY, BACKBONE_REGISTRY).
from .modeling import (
    DetectorPromptedSAM,
    FilledPromptBox,
    InscribedEllipse,
    SAMPrompt,
    TimmBackbone,
    build_sam,
    load_sam_checkpoint,
    uses_prompts,
)
from .prompts import prompt_instances

__all__ = [
    "add_sam_config",
    "load_config",
    "build_sam",
    "load_sam_checkpoint",
    "prompt_instances",
    "uses_prompts",
    "DetectorPromptedSAM",
    "FilledPromptBox",
    "InscribedEllipse",
    "InvalidRecordError",
    "SAMDatasetMapper",
    "SAMPrompt",
    "TimmBackbone",
]
