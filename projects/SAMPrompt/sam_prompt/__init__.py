"""SAMPrompt: fine-tune and evaluate Segment Anything with box and point prompts in Detectron2."""

from .baselines import FilledPromptBox  # registers the baseline meta-architecture
from .build_sam import build_sam, load_sam_checkpoint
from .config import add_sam_config
from .mapper import InvalidRecordError, SAMDatasetMapper
from .meta_arch import SAMPrompt  # registers the meta-architecture

__all__ = [
    "add_sam_config",
    "FilledPromptBox",
    "build_sam",
    "load_sam_checkpoint",
    "InvalidRecordError",
    "SAMDatasetMapper",
    "SAMPrompt",
]
