"""The SAMPrompt meta-architecture: Segment Anything prompted by instances, in Detectron2."""

import logging
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, Instances, PolygonMasks, polygons_to_bitmask
from torch import nn

from ..detections import build_detector, run_detector
from .build_sam import build_sam, load_sam_checkpoint, sam_arch_from_cfg
from .losses import chunked_loss, mask_losses

__all__ = ["SAMPrompt"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class SAMPrompt(nn.Module):
    """
    Segment Anything as a Detectron2 meta-architecture, prompted by the instances of each input.

    Each image is resized so that its longest side equals the encoder size, padded bottom-right
    and encoded once; its prompts (boxes or points, made by :class:`SAMDatasetMapper`) are decoded
    in chunks of ``prompts_per_chunk``.

    Training returns ``loss_mask_focal``, ``loss_mask_dice`` and ``loss_iou`` (each computed per
    instance, then averaged over the instances of the batch). Inference returns one instance per
    prompt with ``pred_masks`` at the requested (height, width), ``pred_boxes`` computed from those
    masks, ``scores`` (SAM's predicted IoU, clipped to [0, 1]) and ``pred_classes`` (the class of
    the instance that made the prompt).
    """

    @configurable
    def __init__(
        self,
        *,
        sam,
        prompt_type="box",
        input_format="RGB",
        multimask_for_single_point=True,
        loss_weights=(20.0, 1.0, 1.0),
        focal_alpha=0.25,
        focal_gamma=2.0,
        prompts_per_chunk=32,
        max_instances_per_image=0,
        mask_threshold=0.0,
        freeze=(),
        detector=None,
        detector_score_threshold=0.05,
        score_mode="detector",
    ):
        """
        Args:
            sam (segment_anything.modeling.Sam):
            prompt_type (str): "box" or "point".
            input_format (str): "RGB" or "BGR", the channel order of input images.
            multimask_for_single_point (bool): see ``MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT``.
            loss_weights (tuple[float]): focal, dice, IoU-MSE.
            focal_alpha, focal_gamma (float):
            prompts_per_chunk (int): prompts decoded together; <= 0 means all of an image's.
            max_instances_per_image (int): training cap, random subset; <= 0 means no cap.
            mask_threshold (float): logit threshold of foreground pixels.
            freeze (iterable[str]): names of SAM parts kept fixed: "image_encoder",
                "prompt_encoder", "mask_decoder".
            detector (tuple): (model, resize, input format) of a detector whose boxes replace
                the inputs' prompts at inference (see ``detections.build_detector``).
            detector_score_threshold (float): detections scoring less are not used.
            score_mode (str): score of masks prompted by detections: "detector" or
                "detector_x_iou" (times SAM's predicted IoU).
        """
        super().__init__()
        if prompt_type not in ("box", "point"):
            raise ValueError(f"prompt type must be 'box' or 'point', got {prompt_type!r}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"SAM takes RGB or BGR images, got INPUT.FORMAT={input_format!r}")
        self.sam = sam
        self.prompt_type = prompt_type
        self.input_format = input_format
        self.multimask_for_single_point = multimask_for_single_point
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.prompts_per_chunk = prompts_per_chunk
        self.max_instances_per_image = max_instances_per_image
        self.mask_threshold = mask_threshold
        for part in freeze:
            for p in getattr(self.sam, part).parameters():
                p.requires_grad_(False)
        if score_mode not in ("detector", "detector_x_iou"):
            raise ValueError(f"MODEL.SAM.DETECTOR.SCORE_MODE={score_mode!r}: detector or detector_x_iou")
        self.detector, self.detector_resize, self.detector_format = detector or (None, None, None)
        self.detector_score_threshold = detector_score_threshold
        self.score_mode = score_mode

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SAM
        sam = build_sam(**sam_arch_from_cfg(cfg))
        if s.CHECKPOINT:
            load_sam_checkpoint(sam, s.CHECKPOINT)
        freeze = [
            name
            for name, on in [
                ("image_encoder", s.FREEZE_IMAGE_ENCODER),
                ("prompt_encoder", s.FREEZE_PROMPT_ENCODER),
                ("mask_decoder", s.FREEZE_MASK_DECODER),
            ]
            if on
        ]
        detector = None
        if s.PROMPT.SOURCE == "detector" and s.DETECTOR.CONFIG_FILE:
            detector = build_detector(s.DETECTOR.CONFIG_FILE, s.DETECTOR.WEIGHTS, cfg.MODEL.DEVICE)
        elif s.PROMPT.SOURCE not in ("ground_truth", "detector"):
            raise ValueError(f"MODEL.SAM.PROMPT.SOURCE={s.PROMPT.SOURCE!r}: ground_truth or detector")
        return {
            "detector": detector,
            "detector_score_threshold": s.DETECTOR.SCORE_THRESHOLD,
            "score_mode": s.DETECTOR.SCORE_MODE,
            "sam": sam,
            "prompt_type": s.PROMPT.TYPE,
            "input_format": cfg.INPUT.FORMAT,
            "multimask_for_single_point": s.MULTIMASK_FOR_SINGLE_POINT,
            "loss_weights": (s.LOSS.FOCAL_WEIGHT, s.LOSS.DICE_WEIGHT, s.LOSS.IOU_WEIGHT),
            "focal_alpha": s.LOSS.FOCAL_ALPHA,
            "focal_gamma": s.LOSS.FOCAL_GAMMA,
            "prompts_per_chunk": s.PROMPTS_PER_CHUNK,
            "max_instances_per_image": s.MAX_INSTANCES_PER_IMAGE,
            "mask_threshold": s.MASK_THRESHOLD,
            "freeze": freeze,
        }

    @property
    def device(self):
        return self.sam.pixel_mean.device

    @property
    def image_size(self):
        """Side of the square encoder input."""
        return self.sam.image_encoder.img_size

    # ------------------------------------------------------------------------------------------
    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs (list[dict]): outputs of :class:`SAMDatasetMapper`: "image" (C, H, W),
                "instances" with prompt_boxes / prompt_points / prompt_labels (and gt_masks,
                gt_classes in training), optional "height" and "width" of the output.

        Returns:
            dict[str, Tensor] in training, else list[dict] with "instances".
        """
        images, scales = self.preprocess_image(batched_inputs)
        embeddings = self.sam.image_encoder(images)
        if self.training:
            return self.losses(batched_inputs, embeddings, scales)
        return self.inference(batched_inputs, embeddings, scales)

    def preprocess_image(self, batched_inputs):
        """
        Resize each image so that its longest side is the encoder size, normalise and pad it
        bottom-right (as SAM does).

        Returns:
            images (Tensor[B, 3, S, S]), scales (list[tuple]): per image, the (sy, sx) factors
            from input pixels to encoder pixels and the resized (h, w).
        """
        S = self.image_size
        images, scales = [], []
        for x in batched_inputs:
            img = x["image"].to(self.device, non_blocking=True).float()
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"expected a (3, H, W) image, got {tuple(img.shape)} for "
                    f"{x.get('file_name', 'an input')}"
                )
            if self.input_format == "BGR":
                img = img.flip(0)
            h, w = img.shape[-2:]
            scale = S / max(h, w)
            nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
            if (nh, nw) != (h, w):
                img = F.interpolate(
                    img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
                )[0]
            images.append(self.sam.preprocess(img))
            scales.append((nh / h, nw / w, nh, nw))
        return torch.stack(images), scales

    # ------------------------------------------------------------------------------------------
    def _prompt_tensors(self, instances, scale):
        """Prompts of ``instances`` in encoder pixels: (boxes or None, (points, labels) or None)."""
        sy, sx = scale[:2]
        if self.prompt_type == "box":
            boxes = instances.prompt_boxes.tensor.to(self.device)
            return boxes * boxes.new_tensor([sx, sy, sx, sy]), None
        pts = instances.prompt_points.to(self.device)
        labels = instances.prompt_labels.to(self.device)
        return None, (pts * pts.new_tensor([sx, sy]), labels)

    @staticmethod
    def _instances(x):
        if "instances" not in x or not x["instances"].has("prompt_boxes"):
            raise ValueError(
                f"{x.get('file_name', 'An input')} has no prompts: SAMPrompt needs the "
                "'instances' made by SAMDatasetMapper (also at evaluation)"
            )
        return x["instances"]

    def _multimask(self, points):
        if points is None or not self.multimask_for_single_point:
            return False
        return points[0].shape[1] == 1

    def _decode(self, embedding, boxes, points, multimask):
        """Decode prompts against one image embedding (1, C, h, w) -> (logits, iou_pred)."""
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
        return self.sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def _chunk_slices(self, n):
        step = self.prompts_per_chunk if self.prompts_per_chunk > 0 else max(n, 1)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    # ------------------------------------------------------------------------------------------
    def losses(self, batched_inputs, embeddings, scales):
        chunks = []
        num_instances = 0
        for b, (x, scale) in enumerate(zip(batched_inputs, scales)):
            inst = self._instances(x)
            if self.max_instances_per_image > 0 and len(inst) > self.max_instances_per_image:
                keep = torch.randperm(len(inst))[: self.max_instances_per_image]
                inst = inst[keep]
            num_instances += len(inst)
            boxes, points = self._prompt_tensors(inst, scale)
            for sl in self._chunk_slices(len(inst)):
                chunks.append(
                    (
                        b,
                        None if boxes is None else boxes[sl],
                        None if points is None else (points[0][sl], points[1][sl]),
                        inst.gt_masks[sl],
                        scale,
                    )
                )
        params = [
            p
            for m in (self.sam.prompt_encoder, self.sam.mask_decoder)
            for p in m.parameters()
            if p.requires_grad
        ]
        if num_instances == 0:  # keeps every parameter in the graph (DDP) with zero loss
            zero = sum(p.sum() for p in params) * 0.0 + embeddings.sum() * 0.0
            terms = torch.stack([zero] * 3)
        else:
            terms = chunked_loss(self._chunk_loss, chunks, embeddings, params) / num_instances
        return {"loss_mask_focal": terms[0], "loss_mask_dice": terms[1], "loss_iou": terms[2]}

    def _chunk_loss(self, embeddings, chunk):
        b, boxes, points, gt_masks, scale = chunk
        logits, iou_pred = self._decode(
            embeddings[b : b + 1], boxes, points, self._multimask(points)
        )
        # Compare on the decoder's grid (1/4 of the encoder input), inside the unpadded image.
        grid = logits.shape[-1] / self.image_size
        sy, sx, nh, nw = scale
        gh, gw = math.ceil(nh * grid), math.ceil(nw * grid)
        targets = self._rasterize(gt_masks, sy * grid, sx * grid, gh, gw)
        return mask_losses(
            logits[..., :gh, :gw],
            iou_pred,
            targets,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            weights=self.loss_weights,
            threshold=self.mask_threshold,
        )

    def _rasterize(self, gt_masks, sy, sx, h, w):
        """Ground-truth masks on a grid scaled by (sy, sx), cut to (h, w): Tensor[N, h, w]."""
        if isinstance(gt_masks, PolygonMasks):
            out = torch.zeros((len(gt_masks), h, w), dtype=torch.bool)
            for i, polys in enumerate(gt_masks.polygons):
                scaled = [(p.reshape(-1, 2) * [sx, sy]).ravel() for p in polys]
                out[i] = torch.from_numpy(polygons_to_bitmask(scaled, h, w))
            return out.to(self.device)
        m = gt_masks.tensor if isinstance(gt_masks, BitMasks) else gt_masks
        m = m.to(self.device, torch.float32)[:, None]
        H, W = m.shape[-2:]
        out = F.interpolate(m, size=(round(H * sy), round(W * sx)), mode="area")[:, 0] >= 0.5
        return F.pad(out, (0, max(w - out.shape[-1], 0), 0, max(h - out.shape[-2], 0)))[:, :h, :w]

    # ------------------------------------------------------------------------------------------
    def _detector_prompts(self, batched_inputs):
        """Prompt instances made from the in-process detector's detections."""
        out = []
        for det in run_detector(
            self.detector, self.detector_resize, self.detector_format, batched_inputs, self.input_format
        ):
            det = det[det.scores >= self.detector_score_threshold]
            inst = Instances(det.image_size)
            inst.prompt_boxes = det.pred_boxes
            inst.gt_classes = det.pred_classes
            inst.det_scores = det.scores
            out.append(inst)
        return out

    @torch.no_grad()
    def inference(self, batched_inputs, embeddings, scales):
        results = []
        if self.detector is not None:
            detections = self._detector_prompts(batched_inputs)
        for b, (x, scale) in enumerate(zip(batched_inputs, scales)):
            inst = self._instances(x) if self.detector is None else detections[b]
            in_h, in_w = x["image"].shape[-2:]
            out_h, out_w = x.get("height", in_h), x.get("width", in_w)
            boxes, points = self._prompt_tensors(inst, scale)
            masks = torch.zeros((len(inst), out_h, out_w), dtype=torch.bool, device=self.device)
            scores = torch.zeros(len(inst), device=self.device)
            for sl in self._chunk_slices(len(inst)):
                pts = None if points is None else (points[0][sl], points[1][sl])
                multimask = self._multimask(pts)
                logits, iou_pred = self._decode(
                    embeddings[b : b + 1], None if boxes is None else boxes[sl], pts, multimask
                )
                if multimask:  # keep the candidate SAM rates highest
                    best = iou_pred.argmax(dim=1)
                    idx = torch.arange(len(best), device=best.device)
                    logits, iou_pred = logits[idx, best][:, None], iou_pred[idx, best][:, None]
                logits = self.sam.postprocess_masks(logits, scale[2:], (out_h, out_w))
                masks[sl] = logits[:, 0] > self.mask_threshold
                scores[sl] = iou_pred[:, 0].float().clamp(0, 1)
            if inst.has("det_scores"):  # prompted by a detector: rank by its confidence
                det_scores = inst.det_scores.to(self.device)
                scores = det_scores * scores if self.score_mode == "detector_x_iou" else det_scores
            result = Instances((out_h, out_w))
            result.pred_masks = masks
            result.pred_boxes = BitMasks(masks).get_bounding_boxes().to(self.device)
            result.scores = scores
            result.pred_classes = inst.gt_classes.to(self.device)
            results.append({"instances": result})
        return results
