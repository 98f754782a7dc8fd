"""Trivial baselines that SAMPrompt's numbers are compared with."""

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from torch import nn

__all__ = ["FilledPromptBox"]


@META_ARCH_REGISTRY.register()
class FilledPromptBox(nn.Module):
    """
    Each prompt box, filled, is the predicted mask (score 1, class of the prompt's instance).

    It takes the same inputs as :class:`SAMPrompt` and is evaluated by the same evaluator: the
    segm AP SAM must beat to show that it learned more than "the object fills its box".
    """

    def __init__(self, cfg=None):
        super().__init__()
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    @property
    def device(self):
        return self._device.device

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("FilledPromptBox has nothing to train; use it for evaluation only")
        results = []
        for x in batched_inputs:
            in_h, in_w = x["image"].shape[-2:]
            out_h, out_w = x.get("height", in_h), x.get("width", in_w)
            boxes = x["instances"].prompt_boxes.tensor.to(self.device).clone()
            boxes *= boxes.new_tensor([out_w / in_w, out_h / in_h] * 2)
            ys = torch.arange(out_h, device=self.device) + 0.5
            xs = torch.arange(out_w, device=self.device) + 0.5
            inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # (N, H)
            inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # (N, W)
            result = Instances((out_h, out_w))
            result.pred_masks = inside_y[:, :, None] & inside_x[:, None, :]
            result.pred_boxes = Boxes(boxes)
            result.scores = torch.ones(len(boxes), device=self.device)
            result.pred_classes = x["instances"].gt_classes.to(self.device)
            results.append({"instances": result})
        return results
