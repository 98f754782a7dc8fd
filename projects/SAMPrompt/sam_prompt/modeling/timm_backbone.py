"""
Any timm model with ``features_only`` as a Detectron2 backbone (yacs: ``cfg.MODEL.TIMM``), with
FPN on top: the MViTv2 Mask R-CNN baseline on detectron2 v0.6, which has no MViT of its own.
"""

import logging
import math

import timm
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

__all__ = ["TimmBackbone", "build_timm_fpn_backbone"]

logger = logging.getLogger(__name__)


class TimmBackbone(Backbone):
    """
    Features of a timm model, named ``res{log2(stride)}`` (``res2`` ... ``res5`` for strides
    4 ... 32, as Detectron2's ResNets).

    Models built for a fixed input size (MViTv2, ViTs: ``img_size``) get their input padded
    bottom-right to that size and their features cut back to the padded batch's extent, so the
    rest of Detectron2 sees an ordinary backbone. Larger inputs are an error naming the size.
    """

    def __init__(self, name, out_indices, img_size=0, pretrained_file="", freeze_at=0):
        """
        Args:
            name (str): timm model name, e.g. "mvitv2_tiny", "resnet50".
            out_indices (list[int]): feature levels to return.
            img_size (int): fixed input size for models that need one; 0 for none.
            pretrained_file (str): local weights of the full timm model (no downloads).
            freeze_at (int): 0 trains everything; 1 freezes the stem; k freezes the stem and the
                first k - 1 stages.
        """
        super().__init__()
        kwargs = {"img_size": img_size} if img_size else {}
        if pretrained_file:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_file})
        self.model = timm.create_model(
            name, features_only=True, out_indices=tuple(out_indices), **kwargs
        )
        self.img_size = img_size
        info = self.model.feature_info
        self._out_features, self._out_feature_strides, self._out_feature_channels = [], {}, {}
        for stride, channels in zip(info.reduction(), info.channels()):
            level = int(round(math.log2(stride)))
            if 2**level != stride:
                raise ValueError(
                    f"timm model {name}: feature stride {stride} is not a power of two"
                )
            feature = f"res{level}"
            self._out_features.append(feature)
            self._out_feature_strides[feature] = stride
            self._out_feature_channels[feature] = channels
        self.freeze(freeze_at)

    def _stages(self):
        """Parameter groups in forward order: [stem, stage 1, stage 2, ...]."""
        inner = getattr(self.model, "model", None)
        if inner is not None and hasattr(inner, "group_matcher"):  # FeatureGetterNet (MViTv2, ViT)
            from timm.models import group_parameters

            groups = group_parameters(inner, inner.group_matcher(coarse=True))
            named = dict(inner.named_parameters())
            return [[named[n] for n in groups[k]] for k in sorted(groups)]
        # FeatureListNet / FeatureDictNet: children in forward order, stages named by feature_info.
        stage_modules = self.model.feature_info.module_name()
        stages, current = [], []
        for child_name, child in self.model.named_children():
            current += list(child.parameters())
            if child_name in stage_modules:
                stages.append(current)
                current = []
        stages[-1] += current
        return stages

    def freeze(self, freeze_at):
        if freeze_at <= 0:
            return self
        stages = self._stages()
        for group in stages[:freeze_at]:
            for p in group:
                p.requires_grad_(False)
        return self

    def forward(self, x):
        h, w = x.shape[-2:]
        if self.img_size:
            if h > self.img_size or w > self.img_size:
                raise ValueError(
                    f"input {h}x{w} is larger than the timm model's fixed size {self.img_size}: "
                    "set INPUT.MAX_SIZE_TRAIN/TEST <= MODEL.TIMM.IMG_SIZE"
                )
            x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
        outs = {}
        for name, feature in zip(self._out_features, self.model(x)):
            s = self._out_feature_strides[name]
            outs[name] = feature[..., : math.ceil(h / s), : math.ceil(w / s)]
        return outs

    def output_shape(self):
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape):
    """A :class:`TimmBackbone` from ``cfg.MODEL.TIMM`` with an FPN (``cfg.MODEL.FPN``) on top."""
    t = cfg.MODEL.TIMM
    bottom_up = TimmBackbone(t.NAME, t.OUT_INDICES, t.IMG_SIZE, t.PRETRAINED_FILE, t.FREEZE_AT)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
