"""Models: SAMPrompt, the filled-box baseline, and a timm backbone for the Mask R-CNN baseline."""

from .baselines import FilledPromptBox
from .build_sam import build_sam, load_sam_checkpoint
from .meta_arch import SAMPrompt
from .timm_backbone import TimmBackbone, build_timm_fpn_backbone
