"""Trivial baselines that SAMPrompt's numbers are compared with."""

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, Instances
from torch import nn

__all__ = ["FilledPromptBox", "InscribedEllipse"]


class _PromptBoxBaseline(nn.Module):
    """A mask drawn from each prompt box alone (score 1, the prompt's class), at the output size."""

    # Its inputs carry prompts (SAMDatasetMapper makes them, at evaluation too).
    uses_prompts = True

    def __init__(self, cfg=None):
        super().__init__()
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    @property
    def device(self):
        return self._device.device

    def draw(self, boxes, xs, ys):
        """Masks (N, H, W) of XYXY ``boxes`` sampled at pixel centres ``xs`` (W) and ``ys`` (H)."""
        raise NotImplementedError

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError(
                f"{type(self).__name__} has nothing to train; use it for evaluation only"
            )
        results = []
        for x in batched_inputs:
            in_h, in_w = x["image"].shape[-2:]
            out_h, out_w = x.get("height", in_h), x.get("width", in_w)
            prompts = x["instances"]
            boxes = prompts.prompt_boxes.tensor.to(self.device).clone()
            boxes *= boxes.new_tensor([out_w / in_w, out_h / in_h] * 2)
            ys = torch.arange(out_h, device=self.device) + 0.5
            xs = torch.arange(out_w, device=self.device) + 0.5
            result = Instances((out_h, out_w))
            result.pred_masks = self.draw(boxes, xs, ys)
            result.pred_boxes = BitMasks(result.pred_masks).get_bounding_boxes().to(self.device)
            result.scores = torch.ones(len(boxes), device=self.device)
            result.pred_classes = prompts.prompt_classes.to(self.device)
            results.append({"instances": result})
        return results


@META_ARCH_REGISTRY.register()
class FilledPromptBox(_PromptBoxBaseline):
    """
    Each prompt box, filled, is the predicted mask. It takes the same inputs as
    :class:`SAMPrompt` and is evaluated by the same evaluator: the segm AP SAM must beat to show
    that it learned more than "the object fills its box".
    """

    def draw(self, boxes, xs, ys):
        inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # (N, H)
        inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # (N, W)
        return inside_y[:, :, None] & inside_x[:, None, :]


@META_ARCH_REGISTRY.register()
class InscribedEllipse(_PromptBoxBaseline):
    """
    The ellipse inscribed in each prompt box is the predicted mask: for rounded objects such as
    ice-wedge polygons a much stronger trivial baseline than the filled box, at AP75 above all.
    """

    def draw(self, boxes, xs, ys):
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx = ((boxes[:, 2] - boxes[:, 0]) / 2).clamp(min=1e-6)
        ry = ((boxes[:, 3] - boxes[:, 1]) / 2).clamp(min=1e-6)
        dy = ((ys[None] - cy[:, None]) / ry[:, None]) ** 2  # (N, H)
        dx = ((xs[None] - cx[:, None]) / rx[:, None]) ** 2  # (N, W)
        return dy[:, :, None] + dx[:, None, :] <= 1.0
