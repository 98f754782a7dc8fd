"""The SAMPrompt meta-architecture: Segment Anything prompted by instances, in Detectron2."""

import logging

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, Instances, PolygonMasks, polygons_to_bitmask
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds, log_first_n
from torch import nn

from ..checkpoint import CheckpointError
from ..prompts import PAD_LABEL, point_depth, prompt_instances, validate_prompt_source
from ..transforms import TEST_AUG_VIEWS, unview_image, view_boxes, view_image, view_xy
from .build_sam import build_sam, load_sam_checkpoint, sam_arch_from_cfg
from .clicks import append_clicks, corrective_click, sample_clicks
from .decoder_window import PromptWindows
from .embedding_cache import EmbeddingCache, module_digest
from .fine_features import FineFeatures
from .losses import chunked_loss, mask_iou, mask_losses

__all__ = ["SAMPrompt", "DetectorPromptedSAM"]

logger = logging.getLogger(__name__)

# Bits of SAMPrompt.prompts_trained: what the weights have been trained with.
TRAINED_BOX, TRAINED_POINT, TRAINED_MULTIMASK = 1, 2, 4


@META_ARCH_REGISTRY.register()
class SAMPrompt(nn.Module):
    """
    Segment Anything as a Detectron2 meta-architecture, prompted by the instances of each input.

    Inputs come from :class:`SAMDatasetMapper`, which resizes each image so that its longest side
    equals the encoder size (prompts and targets share that transform). The model normalises,
    pads bottom-right and encodes each image once (as ``Sam.preprocess`` does), then decodes its
    prompts in chunks of ``prompts_per_chunk``.

    Training returns ``loss_mask_focal``, ``loss_mask_dice`` and ``loss_iou`` (each computed per
    instance, then averaged over the instances of the batch). Inference returns one instance per
    prompt with ``pred_masks`` at the requested (height, width), ``pred_boxes`` computed from those
    masks, ``scores`` (SAM's predicted IoU clipped to [0, 1], or the prompt's own score) and
    ``pred_classes`` (the prompt's class).
    """

    # Its inputs carry prompts (SAMDatasetMapper makes them, at evaluation too).
    uses_prompts = True

    @configurable
    def __init__(
        self,
        *,
        sam,
        prompt_type="box",
        input_format="RGB",
        multimask_for_single_point=True,
        multimask_centrality=0.0,
        multimask_avoid_others=False,
        resolve_overlaps=False,
        loss_weights=(20.0, 1.0, 1.0),
        focal_alpha=0.25,
        focal_gamma=2.0,
        focal_region="image",
        prompts_per_chunk=32,
        max_instances_per_image=0,
        mask_threshold=0.0,
        warmup_iters=0,
        freeze=(),
        embedding_cache=None,
        click_rounds=0,
        mask_only_rounds=0,
        interactive_clicks=0,
        score_mode="detector",
        box_as_mask="",
        point_as_mask=0.0,
        fine_features=None,
        test_aug="",
        decoder_window=0,
        prompts_trained=-1,
    ):
        """
        Args:
            sam (segment_anything.modeling.Sam):
            prompt_type (str): "box" or "point".
            input_format (str): "RGB" or "BGR", the channel order of input images.
            multimask_for_single_point (bool): see ``MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT``.
            multimask_centrality (float): see ``MODEL.SAM.MULTIMASK_CENTRALITY``.
            multimask_avoid_others (bool): see ``MODEL.SAM.MULTIMASK_AVOID_OTHERS``.
            resolve_overlaps (bool): see ``MODEL.SAM.RESOLVE_OVERLAPS``.
            loss_weights (tuple[float]): focal, dice, IoU-MSE.
            focal_alpha, focal_gamma (float):
            focal_region (str): see ``MODEL.SAM.LOSS.FOCAL_REGION``.
            prompts_per_chunk (int): prompts decoded together; <= 0 means all of an image's.
            max_instances_per_image (int): training cap, random subset; <= 0 means no cap.
            mask_threshold (float): logit threshold of foreground pixels.
            warmup_iters (int): after these training iterations, a share of empty predicted
                masks that stays above one half, or a mean IoU of the predicted masks with their
                targets that stays below 0.1, is warned about (a collapsed model).
            freeze (iterable[str]): names of SAM parts kept fixed: "image_encoder",
                "prompt_encoder", "mask_decoder".
            embedding_cache (EmbeddingCache): re-use image embeddings (frozen encoder only).
            click_rounds (int): training rounds after the first prompt that each add a click
                sampled in the previous prediction's error, with the previous low-resolution
                logits as mask prompt (``MODEL.SAM.ITERATIVE``); 0 = single-prompt training.
            mask_only_rounds (int): further rounds with the mask prompt and no new click (one
                last, the others at random positions among the click rounds).
            interactive_clicks (int): at inference, also report each instance's IoU after 1..C
                clicks (``interactive_ious``; the first prompt is click 1).
            score_mode (str): score of masks whose prompts carry ``prompt_scores`` (a
                detector's): "detector" (that score) or "detector_x_iou" (times SAM's predicted
                IoU).
            box_as_mask (str): "" (off), "box" or "ellipse": also give box prompts as the dense
                mask prompt (the filled box, or the ellipse inscribed in it) where no previous
                mask is fed back (``MODEL.SAM.PROMPT.BOX_AS_MASK``).
            point_as_mask (float): > 0: also give point prompts as the dense mask prompt, a disk
                of this radius (mask-prompt cells) at each positive point
                (``MODEL.SAM.PROMPT.POINT_AS_MASK``).
            fine_features (FineFeatures): image features added to the mask decoder's upscaled
                embedding (``MODEL.SAM.FINE_FEATURES``); None = plain SAM.
            test_aug (str): "" (off), "flip" or "d4": predict each prompt on these views of the
                image (:data:`TEST_AUG_VIEWS`) and average the masks' logits and predicted IoUs
                (``MODEL.SAM.TEST_AUG``).
            decoder_window (int): > 0: decode each prompt on a window of the embedding around it,
                this many cells each side (:class:`PromptWindows`, ``MODEL.SAM.DECODER_WINDOW``);
                0: on the whole embedding, as SAM does.
            prompts_trained (int): what ``sam``'s weights were trained with: -1 unknown (as
                official weights, which were trained with every prompt: nothing is checked), 0
                nothing yet (random weights), else bits ``TRAINED_*``. Kept in checkpoints as
                the buffer ``prompts_trained`` and updated by training; inference refuses prompts
                the weights were never trained with (:meth:`check_prompts_trained`).
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
        if multimask_centrality < 0:
            raise ValueError(
                f"MODEL.SAM.MULTIMASK_CENTRALITY={multimask_centrality}: expected >= 0 (0 = off)"
            )
        self.multimask_centrality = multimask_centrality
        self.multimask_avoid_others = bool(multimask_avoid_others)
        self.resolve_overlaps = bool(resolve_overlaps)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        if focal_region not in ("image", "box"):
            raise ValueError(
                f"MODEL.SAM.LOSS.FOCAL_REGION={focal_region!r}: expected 'image' or 'box'"
            )
        self.focal_region = focal_region
        self.prompts_per_chunk = prompts_per_chunk
        self.max_instances_per_image = max_instances_per_image
        self.mask_threshold = mask_threshold
        self.warmup_iters = warmup_iters
        # Collapse watch, per training forward: predicted masks with no pixel, and the summed
        # IoU of the predicted masks with their targets (both of the mask inference keeps), as
        # tensors on the device while the chunks are decoded.
        self._empty_masks = 0
        self._mask_iou_sum = 0.0
        self._empty_share_ema = None
        self._mask_iou_ema = None
        if embedding_cache is not None and "image_encoder" not in freeze:
            raise ValueError(
                "MODEL.SAM.EMBEDDING_CACHE re-uses image embeddings, which is only right while the "
                "image encoder does not change: set MODEL.SAM.FREEZE_IMAGE_ENCODER True, or turn "
                "the cache off (MODEL.SAM.EMBEDDING_CACHE '')"
            )
        self.embedding_cache = embedding_cache
        self.click_rounds = click_rounds
        self.mask_only_rounds = mask_only_rounds
        self.interactive_clicks = interactive_clicks
        self._encoder_digest = None  # of the weights the cached embeddings were computed with
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget_digest())
        for part in freeze:
            for p in getattr(self.sam, part).parameters():
                p.requires_grad_(False)
        if score_mode not in ("detector", "detector_x_iou"):
            raise ValueError(
                f"MODEL.SAM.DETECTOR.SCORE_MODE={score_mode!r}: detector or detector_x_iou"
            )
        self.score_mode = score_mode
        if box_as_mask not in ("", "box", "ellipse"):
            raise ValueError(
                f"MODEL.SAM.PROMPT.BOX_AS_MASK={box_as_mask!r}: expected '', 'box' or 'ellipse'"
            )
        self.box_as_mask = box_as_mask
        if point_as_mask < 0:
            raise ValueError(
                f"MODEL.SAM.PROMPT.POINT_AS_MASK={point_as_mask}: a disk radius in mask cells, "
                ">= 0 (0 = off)"
            )
        self.point_as_mask = float(point_as_mask)
        if test_aug not in TEST_AUG_VIEWS:
            raise ValueError(f"MODEL.SAM.TEST_AUG={test_aug!r}: expected '', 'flip' or 'd4'")
        if test_aug and interactive_clicks:
            raise ValueError(
                f"MODEL.SAM.TEST_AUG={test_aug!r} averages the first prompt's masks over views of "
                "the image, which the interactive evaluation's clicks do not replay: set "
                "MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS 0 or MODEL.SAM.TEST_AUG ''"
            )
        self.views = TEST_AUG_VIEWS[test_aug]
        if decoder_window < 0:
            raise ValueError(
                f"MODEL.SAM.DECODER_WINDOW={decoder_window}: cells around each prompt, >= 0 "
                "(0 = the whole embedding)"
            )
        self.decoder_window = int(decoder_window)
        self.register_buffer("prompts_trained", torch.tensor(int(prompts_trained)))
        self.fine_features = fine_features
        self._fine = None  # the fine features of the image being decoded (see _decode)
        if fine_features is not None:
            sam.mask_decoder.output_upscaling.register_forward_hook(self._add_fine_features)

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SAM
        if validate_prompt_source(cfg) == "detector" and cls is SAMPrompt:
            raise ValueError(
                "MODEL.SAM.DETECTOR.CONFIG_FILE runs a detector in the process: set "
                "MODEL.META_ARCHITECTURE DetectorPromptedSAM (sam_prompt.config.load_config does)"
            )
        sam = build_sam(**sam_arch_from_cfg(cfg))
        if s.CHECKPOINT:
            load_sam_checkpoint(sam, s.CHECKPOINT)
        if s.LORA.RANK > 0:
            if s.FREEZE_IMAGE_ENCODER or s.EMBEDDING_CACHE:
                raise ValueError(
                    "MODEL.SAM.LORA trains adapters in the image encoder: it cannot be combined with "
                    "MODEL.SAM.FREEZE_IMAGE_ENCODER or MODEL.SAM.EMBEDDING_CACHE"
                )
            from .lora import add_lora

            sam.image_encoder = add_lora(
                sam.image_encoder, s.LORA.RANK, s.LORA.ALPHA, s.LORA.TARGET_MODULES, s.LORA.DROPOUT
            )
        freeze = [
            name
            for name, on in [
                ("image_encoder", s.FREEZE_IMAGE_ENCODER),
                ("prompt_encoder", s.FREEZE_PROMPT_ENCODER),
                ("mask_decoder", s.FREEZE_MASK_DECODER),
            ]
            if on
        ]
        return {
            "score_mode": s.DETECTOR.SCORE_MODE,
            "sam": sam,
            "prompt_type": s.PROMPT.TYPE,
            "input_format": cfg.INPUT.FORMAT,
            "multimask_for_single_point": s.MULTIMASK_FOR_SINGLE_POINT,
            "multimask_centrality": s.MULTIMASK_CENTRALITY,
            "multimask_avoid_others": s.MULTIMASK_AVOID_OTHERS,
            "resolve_overlaps": s.RESOLVE_OVERLAPS,
            "loss_weights": (s.LOSS.FOCAL_WEIGHT, s.LOSS.DICE_WEIGHT, s.LOSS.IOU_WEIGHT),
            "focal_alpha": s.LOSS.FOCAL_ALPHA,
            "focal_gamma": s.LOSS.FOCAL_GAMMA,
            "focal_region": s.LOSS.FOCAL_REGION,
            "prompts_per_chunk": s.PROMPTS_PER_CHUNK,
            "max_instances_per_image": s.MAX_INSTANCES_PER_IMAGE,
            "mask_threshold": s.MASK_THRESHOLD,
            "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
            "freeze": freeze,
            "embedding_cache": _embedding_cache_from_cfg(s),
            "click_rounds": s.ITERATIVE.CLICK_ROUNDS if s.ITERATIVE.ENABLED else 0,
            "mask_only_rounds": s.ITERATIVE.MASK_ONLY_ROUNDS if s.ITERATIVE.ENABLED else 0,
            "interactive_clicks": s.INTERACTIVE_EVAL.MAX_CLICKS,
            "box_as_mask": s.PROMPT.BOX_AS_MASK,
            "point_as_mask": s.PROMPT.POINT_AS_MASK,
            "fine_features": _fine_features_from_cfg(cfg),
            # Official weights were trained with every prompt; random ones with none yet.
            "prompts_trained": -1 if s.CHECKPOINT else 0,
            "test_aug": s.TEST_AUG,
            "decoder_window": s.DECODER_WINDOW,
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
            batched_inputs (list[dict]): outputs of :class:`SAMDatasetMapper`: "image" (C, H, W)
                with max(H, W) <= the encoder size, "instances" with the prompt fields (and
                gt_mask_targets in training), optional "height" and "width" of the output.

        Returns:
            dict[str, Tensor] in training, else list[dict] with "instances".
        """
        embeddings = self.embed(batched_inputs)
        if self.training:
            return self.losses(batched_inputs, embeddings)
        return self.inference(batched_inputs, embeddings)

    def embed(self, batched_inputs):
        """Image embeddings of the inputs (B, C, h, w), with the fine features folded in if any."""
        images = self.preprocess_image(batched_inputs)
        embeddings = self.encode(batched_inputs, images)
        if self.fine_features is not None:  # folded into extra channels: see FineFeatures
            embeddings = self.fine_features.fold(images, embeddings)
        return embeddings

    def _forget_digest(self):
        self._encoder_digest = None

    def encode(self, batched_inputs, images):
        """Image embeddings of the preprocessed ``images``, through the embedding cache if any."""
        cache = self.embedding_cache
        if cache is None:
            return self.sam.image_encoder(images)
        if self._encoder_digest is None:
            self._encoder_digest = module_digest(self.sam.image_encoder)
        keys = [
            cache.key(x["image"], self.input_format, self._encoder_digest) for x in batched_inputs
        ]
        found = [cache.get(k) for k in keys]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            with torch.no_grad():
                computed = self.sam.image_encoder(images[missing])
            for i, e in zip(missing, computed):
                cache.put(keys[i], e)
                found[i] = e
        return torch.stack([e.to(self.device, torch.float32) for e in found])

    def preprocess_image(self, batched_inputs):
        """Normalise each image and pad it bottom-right to the encoder size: Tensor[B, 3, S, S]."""
        S = self.image_size
        images = []
        for x in batched_inputs:
            img = x["image"].to(self.device, non_blocking=True).float()
            name = x.get("file_name", "an input")
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected a (3, H, W) image, got {tuple(img.shape)} for {name}")
            if max(img.shape[-2:]) > S:
                raise ValueError(
                    f"{name}: image {tuple(img.shape[-2:])} is larger than the encoder input ({S}); "
                    "resize it with sam_prompt.transforms.ResizeLongestSide (SAMDatasetMapper does)"
                )
            if self.input_format == "BGR":
                img = img.flip(0)
            images.append(self.sam.preprocess(img))
        return torch.stack(images)

    # ------------------------------------------------------------------------------------------
    def _prompt_tensors(self, instances):
        """Prompts of ``instances``: (boxes or None, (points, labels) or None), on the device."""
        if self.prompt_type == "box":
            return instances.prompt_boxes.tensor.to(self.device), None
        pts = instances.prompt_points.to(self.device)
        return None, (pts, instances.prompt_labels.to(self.device))

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

    def _decode(self, embedding, boxes, points, multimask, masks=None):
        """Decode prompts against one image embedding (1, C, h, w) -> (logits, iou_pred)."""
        if masks is None and boxes is not None and self.box_as_mask:
            masks = self._box_masks(boxes)
        elif masks is None and boxes is None and points is not None and self.point_as_mask > 0:
            masks = self._point_masks(*points)
        fine = None
        if self.fine_features is not None:
            embedding, fine = self.fine_features.unfold(embedding)
        groups = None
        if self.decoder_window > 0:
            h, w = embedding.shape[-2:]
            groups = PromptWindows.around(
                boxes, points, (h, w), self.image_size / w, self.decoder_window
            )
        if groups is None:
            logits, iou_pred = self._decode_on(embedding, fine, boxes, points, masks, multimask)
        else:
            outs = []
            for idx, window in groups:
                outs.append(
                    self._decode_on(
                        embedding,
                        fine,
                        None if boxes is None else boxes[idx],
                        None if points is None else (points[0][idx], points[1][idx]),
                        None if masks is None else masks[idx],
                        multimask,
                        window,
                    )
                )
            back = torch.cat([idx for idx, _ in groups]).argsort()  # to the prompts' order
            logits = torch.cat([out[0] for out in outs])[back]
            iou_pred = torch.cat([out[1] for out in outs])[back]
        if fine is not None and self.fine_features.refinement is not None:
            logits, iou_pred = self.fine_features.refinement(logits, fine, iou_pred)
        return logits, iou_pred

    def _decode_on(self, embedding, fine, boxes, points, masks, multimask, window=None):
        """
        SAM's prompt encoder and mask decoder on the embedding (1, C, h, w), or on a window of it
        per prompt (:class:`PromptWindows`, the logits pasted back on the whole grid).
        """
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        if window is not None:
            sh, sw = window.side
            boxes, points = window.shift(boxes, points)
            if masks is not None:  # SAM's mask prompts are on a grid 4x the embedding's
                masks = window.gather(masks, scale=4)
            image_pe = image_pe[..., :sh, :sw]
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if window is not None:
            # SAM's decoder adds each prompt's dense embedding to the image embedding it repeats
            # per prompt: each prompt's window goes in through that sum.
            dense = window.gather(embedding) + dense[..., :sh, :sw]
            embedding = embedding.new_zeros(1, embedding.shape[1], sh, sw)
            if fine is not None:
                fine = window.gather(fine, scale=4)
        self._fine = fine
        try:
            logits, iou_pred = self.sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        finally:
            self._fine = None
        if window is not None:
            logits = window.paste(logits, scale=4)
        return logits, iou_pred

    def _add_fine_features(self, module, inputs, upscaled):
        """Forward hook of the decoder's output upscaling: (N, c, H, W) + (1, c, H, W)."""
        return upscaled if self._fine is None else upscaled + self._fine

    def _box_masks(self, boxes):
        """
        Boxes (N, 4) in input pixels as mask prompts (N, 1, H, W) on SAM's mask-prompt grid,
        logit-like: +1 inside, -1 outside. "box": the filled box, the share of each border cell
        covered in between; "ellipse": the ellipse inscribed in the box, a one-cell ramp across
        its outline.
        """
        h, w = self.sam.prompt_encoder.mask_input_size
        stride = self.image_size / w
        boxes = boxes.float() / stride
        ys = torch.arange(h, device=boxes.device, dtype=torch.float32)
        xs = torch.arange(w, device=boxes.device, dtype=torch.float32)
        if self.box_as_mask == "ellipse":
            x0, y0, x1, y1 = boxes.unbind(1)
            rx, ry = ((x1 - x0) / 2).clamp(min=0.5), ((y1 - y0) / 2).clamp(min=0.5)
            dx = (xs[None] + 0.5 - ((x0 + x1) / 2)[:, None]) / rx[:, None]  # (N, W)
            dy = (ys[None] + 0.5 - ((y0 + y1) / 2)[:, None]) / ry[:, None]  # (N, H)
            r = (dy[:, :, None] ** 2 + dx[:, None, :] ** 2).sqrt()
            # (1 - r) x the smaller radius: about the signed distance to the outline, in cells.
            return ((1 - r) * torch.minimum(rx, ry)[:, None, None] * 2).clamp(-1, 1)[:, None]

        def cover(lo, hi, cells):  # (N,), (N,), (L,) -> (N, L): share of each cell in [lo, hi]
            return (
                torch.minimum(cells + 1, hi[:, None]) - torch.maximum(cells, lo[:, None])
            ).clamp(0, 1)

        inside = (
            cover(boxes[:, 1], boxes[:, 3], ys)[:, :, None]
            * cover(boxes[:, 0], boxes[:, 2], xs)[:, None, :]
        )
        return (2 * inside - 1)[:, None]

    def _point_masks(self, coords, labels):
        """
        Points (N, P, 2) in input pixels and their labels (N, P) as mask prompts (N, 1, H, W):
        +1 within ``point_as_mask`` cells of a positive point, -1 elsewhere.
        """
        h, w = self.sam.prompt_encoder.mask_input_size
        stride = self.image_size / w
        c = coords.float() / stride
        ys = torch.arange(h, device=c.device, dtype=torch.float32) + 0.5
        xs = torch.arange(w, device=c.device, dtype=torch.float32) + 0.5
        d2 = (ys[None, None, :, None] - c[..., 1, None, None]) ** 2 + (
            xs[None, None, None, :] - c[..., 0, None, None]
        ) ** 2  # (N, P, H, W)
        near = (d2 <= self.point_as_mask**2) & (labels == 1)[..., None, None]
        return (2 * near.any(1, keepdim=True).float() - 1).to(coords.dtype)

    def _chunk_slices(self, n):
        step = self.prompts_per_chunk if self.prompts_per_chunk > 0 else max(n, 1)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    # ------------------------------------------------------------------------------------------
    def losses(self, batched_inputs, embeddings):
        chunks = []
        num_instances = 0
        for b, x in enumerate(batched_inputs):
            inst = self._instances(x)
            if not inst.has("gt_mask_targets"):
                raise ValueError(
                    f"{x.get('file_name', 'An input')} has no gt_mask_targets: training inputs come "
                    "from SAMDatasetMapper(cfg, is_train=True)"
                )
            if self.max_instances_per_image > 0 and len(inst) > self.max_instances_per_image:
                keep = torch.randperm(len(inst))[: self.max_instances_per_image]
                inst = inst[keep]
            num_instances += len(inst)
            boxes, points = self._prompt_tensors(inst)
            targets = inst.gt_mask_targets.to(self.device, non_blocking=True)
            for sl in self._chunk_slices(len(inst)):
                chunks.append(
                    (
                        b,
                        None if boxes is None else boxes[sl],
                        None if points is None else (points[0][sl], points[1][sl]),
                        targets[sl],
                    )
                )
        decoding = [self.sam.prompt_encoder, self.sam.mask_decoder]
        if self.fine_features is not None and self.fine_features.refinement is not None:
            decoding.append(self.fine_features.refinement)
        params = [p for m in decoding for p in m.parameters() if p.requires_grad]
        if num_instances:
            self._record_prompts_trained(chunks)
        if num_instances == 0:  # keeps every parameter in the graph (DDP) with zero loss
            zero = sum(p.sum() for p in params) * 0.0 + embeddings.sum() * 0.0
            terms = torch.stack([zero] * 3)
        else:
            self._empty_masks, self._mask_iou_sum = 0, 0.0
            terms = chunked_loss(self._chunk_loss, chunks, embeddings, params) / num_instances
            # Summed on the device over the chunks: one synchronisation per step.
            empty, iou = torch.stack([self._empty_masks, self._mask_iou_sum]).tolist()
            self._report_training_masks(empty / num_instances, iou / num_instances)
        return {"loss_mask_focal": terms[0], "loss_mask_dice": terms[1], "loss_iou": terms[2]}

    def _record_prompts_trained(self, chunks):
        """Add this step's prompts to ``prompts_trained`` (on the device: no synchronisation)."""
        bits = TRAINED_BOX if self.prompt_type == "box" else TRAINED_POINT
        if self.click_rounds:  # corrective clicks are points
            bits |= TRAINED_POINT
        if any(self._multimask(points) for _, _, points, _ in chunks):
            bits |= TRAINED_MULTIMASK
        t = self.prompts_trained
        t.copy_(torch.where(t >= 0, t | bits, t))

    def check_prompts_trained(self, points=None):
        """
        Refuse to decode prompts these weights were never trained with (``prompts_trained``,
        kept in their checkpoint): a box model's point embeddings and a single point's three
        masks are still random, and would give meaningless masks with no error.

        Args:
            points: the point prompts to decode ((N, P, 2) coordinates, labels), or None (for
                box prompts, or a single point each when MULTIMASK_FOR_SINGLE_POINT is on).
        """
        trained = int(self.prompts_trained)
        if trained <= 0:  # unknown (official weights, older checkpoints) or random weights
            return
        kinds = [
            name
            for bit, name in (
                (TRAINED_BOX, "box prompts"),
                (TRAINED_POINT, "point prompts"),
                (TRAINED_MULTIMASK, "three masks per single point"),
            )
            if trained & bit
        ]
        done = f"These weights were trained with {' and '.join(kinds)} only"
        if self.interactive_clicks > 1 and not trained & TRAINED_POINT:
            log_first_n(
                logging.WARNING,
                f"{done}: the interactive evaluation's corrective clicks (points) go through "
                "weights never trained (expect them to spoil the masks). Train with "
                "MODEL.SAM.ITERATIVE.ENABLED True for clicks that correct.",
                n=1,
                name=__name__,
            )
        if self.prompt_type == "box" and not trained & TRAINED_BOX:
            raise CheckpointError(
                f"{done}: box prompts would go through weights never trained (the box-corner "
                "embeddings) and give meaningless masks. Evaluate them with "
                "MODEL.SAM.PROMPT.TYPE point (--prompt point), or fine-tune them with boxes first."
            )
        if self.prompt_type != "point":
            return
        if not trained & TRAINED_POINT:
            raise CheckpointError(
                f"{done}: point prompts would go through weights never trained (the point "
                "embeddings and a single point's three masks) and give meaningless masks. "
                "Evaluate them with MODEL.SAM.PROMPT.TYPE box (--prompt box), or fine-tune them "
                "with points first (sam_small_point_cpu.yaml starts from a box model)."
            )
        multimask = (
            self._multimask(points) if points is not None else self.multimask_for_single_point
        )
        if multimask and not trained & TRAINED_MULTIMASK:
            raise CheckpointError(
                f"{done}, each decoded to one mask (several points, or "
                "MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT False): a single point's three masks were "
                "never trained. Set MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT False as in training."
            )

    def _report_training_masks(self, share, mean_iou):
        """
        Log the share of empty predicted masks (``sam/empty_mask_share``) and their mean IoU with
        the targets (``sam/mask_iou``), on the decoder's grid; warn on collapse: to empty masks,
        or to masks that miss their objects (too large, elsewhere), which the share cannot see.
        """
        try:
            storage = get_event_storage()
        except AssertionError:  # called outside a trainer
            return
        storage.put_scalars(**{"sam/empty_mask_share": share, "sam/mask_iou": mean_iou})
        ema = self._empty_share_ema
        self._empty_share_ema = share if ema is None else 0.9 * ema + 0.1 * share
        ema = self._mask_iou_ema
        self._mask_iou_ema = mean_iou if ema is None else 0.9 * ema + 0.1 * mean_iou
        if storage.iter < self.warmup_iters:
            return
        if self._empty_share_ema > 0.5:
            log_every_n_seconds(
                logging.WARNING,
                f"{self._empty_share_ema:.0%} of the predicted training masks are empty at iteration "
                f"{storage.iter} (after warm-up): the model is collapsing to empty masks. Lower "
                "SOLVER.BASE_LR, start from pretrained weights, or use a finer embedding grid.",
                n=60,
                name=__name__,
            )
        elif self._mask_iou_ema < 0.1:
            log_every_n_seconds(
                logging.WARNING,
                f"The predicted training masks overlap their targets by a mean IoU of "
                f"{self._mask_iou_ema:.0%} at iteration {storage.iter} (after warm-up): the model "
                "is not learning the masks. Lower SOLVER.BASE_LR, lower MODEL.SAM.LOSS.FOCAL_WEIGHT "
                "(small objects), or start from weights trained with box prompts.",
                n=60,
                name=__name__,
            )

    def _chunk_loss(self, embeddings, chunk):
        b, boxes, points, targets = chunk
        logits, iou_pred = self._decode(
            embeddings[b : b + 1], boxes, points, self._multimask(points)
        )
        kept = self._best_candidate(logits, iou_pred)[0]
        # Targets cover the unpadded image on the decoder's grid.
        gh, gw = targets.shape[-2:]
        with torch.no_grad():  # the mask inference would keep: empty ones mean collapse
            pred = kept[:, 0, :gh, :gw] > self.mask_threshold
            self._empty_masks = self._empty_masks + (~pred.flatten(1).any(1)).sum().float()
            self._mask_iou_sum = self._mask_iou_sum + mask_iou(pred, targets > 0.5).sum().float()
        terms = self._mask_losses(logits, iou_pred, targets)
        if not self.click_rounds and not self.mask_only_rounds:
            return terms
        return self._click_rounds(embeddings[b : b + 1], boxes, points, targets, terms, kept)

    def _mask_losses(self, logits, iou_pred, targets):
        gh, gw = targets.shape[-2:]
        return mask_losses(
            logits[..., :gh, :gw],
            iou_pred,
            targets,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            weights=self.loss_weights,
            threshold=self.mask_threshold,
            focal_region=self.focal_region,
        )

    @staticmethod
    def _best_candidate(logits, iou_pred):
        """The candidate mask inference keeps (highest predicted IoU): (N, 1, h, w), (N, 1)."""
        pick = iou_pred.argmax(1)
        idx = torch.arange(len(pick), device=pick.device)
        return logits[idx, pick][:, None], iou_pred[idx, pick][:, None]

    def _click_rounds(self, embedding, boxes, points, targets, first_terms, kept):
        """
        SAM's iterative training, as a sequence of independent steps (each back-propagated by
        ``chunked_loss`` as it comes): the first prompt, then rounds that each add a click sampled
        in the error of the previous prediction and feed its logits (detached) as mask prompt,
        and mask-only rounds. The loss is the mean over rounds.
        """
        rounds = 1 + self.click_rounds + self.mask_only_rounds
        yield first_terms / rounds
        later = self.click_rounds + self.mask_only_rounds
        mask_only = (
            {later}
            | set((torch.randperm(max(later - 1, 1))[: self.mask_only_rounds - 1] + 1).tolist())
            if self.mask_only_rounds
            else set()
        )
        gh, gw = targets.shape[-2:]
        stride = self.image_size / kept.shape[-1]
        for r in range(1, rounds):
            prev = kept.detach()
            if r not in mask_only:
                coords, labels = sample_clicks(
                    prev[:, 0, :gh, :gw] > self.mask_threshold, targets, stride
                )
                points = append_clicks(points, coords, labels)
            logits, iou_pred = self._decode(embedding, boxes, points, False, masks=prev)
            kept = self._best_candidate(logits, iou_pred)[0]
            yield self._mask_losses(logits, iou_pred, targets) / rounds

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, batched_inputs, embeddings):
        # Each further view of the images (test-time augmentation) is encoded as a new image.
        view_embeddings = [embeddings] + [
            self.embed([dict(x, image=view_image(x["image"], v)) for x in batched_inputs])
            for v in self.views[1:]
        ]
        results = []
        for b, x in enumerate(batched_inputs):
            inst = self._instances(x)
            in_hw = tuple(x["image"].shape[-2:])
            out_hw = (x.get("height", in_hw[0]), x.get("width", in_hw[1]))
            boxes, points = self._prompt_tensors(inst)
            if len(inst):
                self.check_prompts_trained(points)
            masks = torch.zeros((len(inst), *out_hw), dtype=torch.bool, device=self.device)
            scores = torch.zeros(len(inst), device=self.device)
            for sl in self._chunk_slices(len(inst)):
                box = None if boxes is None else boxes[sl]
                pts = None if points is None else (points[0][sl], points[1][sl])
                logits, iou_pred = 0.0, 0.0
                for view, emb in zip(self.views, view_embeddings):
                    out = self._predict_view(emb[b : b + 1], box, pts, view, in_hw, out_hw)
                    logits, iou_pred = logits + out[0], iou_pred + out[1]
                logits, iou_pred = logits / len(self.views), iou_pred / len(self.views)
                if logits.shape[1] > 1:  # multimask: keep one candidate
                    logits, iou_pred = self._choose(logits, iou_pred, points[0][:, 0], sl, in_hw)
                masks[sl] = logits[:, 0] > self.mask_threshold
                scores[sl] = iou_pred[:, 0].float().clamp(0, 1)
            if self.resolve_overlaps and len(inst) > 1:
                centres = points[0][:, 0] if boxes is None else (boxes[:, :2] + boxes[:, 2:]) / 2
                masks = resolve_overlaps(masks, self._on_grid(centres, in_hw, out_hw))
            if inst.has("prompt_scores"):  # prompted by a detector: rank by its confidence
                prompt_scores = inst.prompt_scores.to(self.device)
                scores = (
                    prompt_scores * scores if self.score_mode == "detector_x_iou" else prompt_scores
                )
            result = Instances(out_hw)
            result.pred_masks = masks
            result.pred_boxes = BitMasks(masks).get_bounding_boxes().to(self.device)
            result.scores = scores
            result.pred_classes = inst.prompt_classes.to(self.device)
            results.append({"instances": result})
            if self.interactive_clicks:
                results[-1]["interactive_ious"] = self._interactive(embeddings[b : b + 1], x, inst)
        return results

    def _predict_view(self, embedding, boxes, points, view, in_hw, out_hw):
        """
        Decode prompts (given on the image) on the embedding of one ``view`` of it: (logits
        (N, K, H, W) at the output size, back on the image; predicted IoU (N, K)).
        """
        multimask = self._multimask(points)
        if any(view):
            boxes = None if boxes is None else view_boxes(boxes, view, in_hw)
            points = None if points is None else (view_xy(points[0], view, in_hw), points[1])
        if view[0]:  # transposed
            in_hw, out_hw = in_hw[::-1], out_hw[::-1]
        logits, iou_pred = self._decode(embedding, boxes, points, multimask)
        sam_choice = not (self.multimask_centrality or self.multimask_avoid_others)
        if multimask and len(self.views) == 1 and sam_choice:
            # One view, SAM's choice: pick before upsampling (3x cheaper); the other choices
            # read the three masks at the output size (:meth:`_choose`).
            logits, iou_pred = self._best_candidate(logits, iou_pred)
        logits = self.sam.postprocess_masks(logits, in_hw, out_hw)
        return unview_image(logits, view), iou_pred

    def _choose(self, logits, iou_pred, firsts, sl, in_hw):
        """
        Keep one of each point's K candidate masks: the highest predicted IoU (SAM's), times the
        point's depth in the mask with ``multimask_centrality``, among the candidates holding
        the fewest other prompts' points with ``multimask_avoid_others``.

        Args:
            logits (Tensor[n, K, H, W]): at the output size; iou_pred (Tensor[n, K]).
            firsts (Tensor[N, 2]): the first point of each of the image's N prompts (input
                coordinates); ``sl`` (slice): the rows of this chunk among them.

        Returns:
            (Tensor[n, 1, H, W], Tensor[n, 1]): the kept logits and their scores.
        """
        rank = score = iou_pred
        if self.multimask_centrality:
            depth = self._centrality(logits, firsts[sl], in_hw)
            score = iou_pred * depth
            # A point in none of its masks: SAM's choice, scored 0.
            rank = torch.where((depth > 0).any(1, keepdim=True), score, iou_pred)
        if self.multimask_avoid_others and len(firsts) > 1:
            held = self._others_held(logits, firsts, sl, in_hw)
            fewest = held == held.amin(1, keepdim=True)
            rank = torch.where(fewest, rank, torch.full_like(rank, float("-inf")))
        pick = rank.argmax(1)
        idx = torch.arange(len(pick), device=pick.device)
        return logits[idx, pick][:, None], score[idx, pick][:, None]

    def _others_held(self, logits, firsts, sl, in_hw):
        """(n, K): how many of the image's other prompts' first points each candidate mask holds."""
        h, w = logits.shape[-2:]
        xy = self._on_grid(firsts, in_hw, (h, w))
        cols = xy[:, 0].floor().long().clamp(0, w - 1)
        rows = xy[:, 1].floor().long().clamp(0, h - 1)
        held = logits[:, :, rows, cols] > self.mask_threshold  # (n, K, N)
        own = torch.arange(sl.start, sl.stop, device=held.device)
        held[torch.arange(len(own), device=held.device), :, own] = False
        return held.sum(-1)

    @staticmethod
    def _on_grid(xy, in_hw, hw):
        """(N, 2) float (x, y) on the image of size ``in_hw`` -> on a grid of size ``hw``."""
        return xy.float() * xy.new_tensor([hw[1] / in_hw[1], hw[0] / in_hw[0]], dtype=torch.float)

    def _centrality(self, logits, points, in_hw):
        """
        (N, K, H, W) logits at the output size, (N, 2) points on the image of size ``in_hw`` ->
        (N, K): how deep each point lies in each mask (:func:`point_depth`), to the power
        ``multimask_centrality``.
        """
        xy = self._on_grid(points, in_hw, logits.shape[-2:]).cpu().numpy()
        depth = point_depth((logits > self.mask_threshold).cpu().numpy(), xy)
        return torch.from_numpy(depth).to(logits) ** self.multimask_centrality

    def _interactive(self, embedding, x, inst):
        """
        IoU of each instance after 1..C clicks (the first prompt, then corrective clicks at the
        interior of the largest error region), at the input resolution, re-using the embedding.

        Returns:
            Tensor[N, C] (CPU)
        """
        if not inst.has("gt_masks"):
            raise ValueError(
                f"{x.get('file_name', 'An input')}: the interactive evaluation needs ground-truth "
                "masks (prompts from the ground truth, not a detector)"
            )
        h, w = x["image"].shape[-2:]
        gt = inst.gt_masks
        if isinstance(gt, PolygonMasks):
            gt = (
                np.stack([polygons_to_bitmask(p, h, w) for p in gt.polygons])
                if len(gt)
                else np.zeros((0, h, w), bool)
            )
        else:
            gt = gt.tensor.cpu().numpy().astype(bool)
        clicks = self.interactive_clicks
        ious = torch.zeros((len(inst), clicks))
        boxes, points = self._prompt_tensors(inst)
        gt_t = torch.from_numpy(gt).to(self.device)
        S = self.image_size
        for sl in self._chunk_slices(len(inst)):
            pts = None if points is None else (points[0][sl], points[1][sl])
            box = None if boxes is None else boxes[sl]
            mask_in = None
            for k in range(clicks):
                multimask = k == 0 and self._multimask(pts)
                logits, iou_pred = self._decode(embedding, box, pts, multimask, masks=mask_in)
                kept = self._best_candidate(logits, iou_pred)[0]
                up = F.interpolate(kept.float(), (S, S), mode="bilinear", align_corners=False)
                pred = up[:, 0, :h, :w] > self.mask_threshold
                g = gt_t[sl]
                inter = (pred & g).flatten(1).sum(1).float()
                union = (pred | g).flatten(1).sum(1).float()
                ious[sl, k] = (inter / union.clamp(min=1)).cpu()
                if k == clicks - 1:
                    break
                coords, labels = [], []
                for p, t in zip(pred.cpu().numpy(), gt[sl]):
                    click = corrective_click(p, t)
                    coords.append(click[0] if click else (0.0, 0.0))
                    labels.append(click[1] if click else PAD_LABEL)
                coords = torch.tensor(coords, device=self.device, dtype=torch.float32)[:, None]
                labels = torch.tensor(labels, device=self.device)[:, None]
                pts = append_clicks(pts, coords, labels)
                mask_in = kept
        return ious


def _fine_features_from_cfg(cfg):
    hidden = cfg.MODEL.SAM.FINE_FEATURES
    if hidden < 0:
        raise ValueError(f"MODEL.SAM.FINE_FEATURES={hidden}: channels of the stem, >= 0 (0 = off)")
    refine = cfg.MODEL.SAM.FINE_REFINE
    if refine < 0:
        raise ValueError(f"MODEL.SAM.FINE_REFINE={refine}: channels, >= 0 (0 = off)")
    rescore = cfg.MODEL.SAM.FINE_RESCORE
    passes = cfg.MODEL.SAM.FINE_REFINE_PASSES
    if passes < 1:
        raise ValueError(f"MODEL.SAM.FINE_REFINE_PASSES={passes}: at least 1")
    if passes > 1 and not refine:
        raise ValueError(
            f"MODEL.SAM.FINE_REFINE_PASSES={passes} repeats the mask refinement: set "
            "MODEL.SAM.FINE_REFINE > 0 too"
        )
    depth = cfg.MODEL.SAM.FINE_DEPTH
    if depth < 0:
        raise ValueError(f"MODEL.SAM.FINE_DEPTH={depth}: residual blocks, >= 0")
    if rescore and not refine:
        raise ValueError(
            "MODEL.SAM.FINE_RESCORE corrects the predicted IoU from the mask refinement's "
            "features: set MODEL.SAM.FINE_REFINE > 0 too"
        )
    if hidden == 0:
        if depth:
            raise ValueError(
                f"MODEL.SAM.FINE_DEPTH={depth} deepens the fine features' stem: "
                "set MODEL.SAM.FINE_FEATURES > 0 too"
            )
        if refine:
            raise ValueError(
                f"MODEL.SAM.FINE_REFINE={refine} refines masks with the fine image features: "
                "set MODEL.SAM.FINE_FEATURES > 0 too"
            )
        return None
    arch = sam_arch_from_cfg(cfg)
    return FineFeatures(
        hidden_channels=hidden,
        out_channels=arch["prompt_embed_dim"] // 8,  # channels of the upscaled embedding
        patch_size=arch["patch_size"],
        embed_channels=arch["prompt_embed_dim"],
        refine_channels=refine,
        rescore=rescore,
        depth=depth,
        refine_passes=passes,
    )


def _embedding_cache_from_cfg(s):
    if not s.EMBEDDING_CACHE:
        return None
    dtype = {"float32": torch.float32, "float16": torch.float16}.get(s.EMBEDDING_CACHE_DTYPE)
    if dtype is None:
        raise ValueError(
            f"MODEL.SAM.EMBEDDING_CACHE_DTYPE={s.EMBEDDING_CACHE_DTYPE!r}: float32 or float16"
        )
    return EmbeddingCache(s.EMBEDDING_CACHE, dtype, max_bytes=s.EMBEDDING_CACHE_MAX_GB * 2**30)


@META_ARCH_REGISTRY.register()
class DetectorPromptedSAM(SAMPrompt):
    """
    SAMPrompt whose evaluation prompts are the boxes of a Detectron2 detector run in the same
    process (``MODEL.SAM.DETECTOR.CONFIG_FILE`` / ``WEIGHTS``). The detector runs before SAM, on
    the image SAM receives; its boxes, classes and scores become the prompts
    (:func:`sam_prompt.prompts.prompt_instances`). Training uses ground-truth prompts.

    The detector is not part of this module's state: checkpoints hold SAM's weights only, so a
    SAMPrompt checkpoint loads as it is.
    """

    @configurable
    def __init__(self, *, detector, detector_score_threshold=0.05, **kwargs):
        """
        Args:
            detector (tuple): (model, resize, input format) from
                :func:`sam_prompt.detections.build_detector`.
            detector_score_threshold (float): detections scoring less are not used as prompts.
            kwargs: of :class:`SAMPrompt`.
        """
        super().__init__(**kwargs)
        # Kept out of the module tree (not in state_dict, not trained, not moved by .to()).
        self.__dict__["_detector"] = detector
        self.detector_score_threshold = detector_score_threshold

    @classmethod
    def from_config(cls, cfg):
        from ..detections import build_detector

        if validate_prompt_source(cfg) != "detector":
            raise ValueError(
                "DetectorPromptedSAM needs MODEL.SAM.PROMPT.SOURCE detector and MODEL.SAM.DETECTOR.CONFIG_FILE"
            )
        det = cfg.MODEL.SAM.DETECTOR
        args = super().from_config(cfg)
        args["detector"] = build_detector(det.CONFIG_FILE, det.WEIGHTS, cfg.MODEL.DEVICE)
        args["detector_score_threshold"] = det.SCORE_THRESHOLD
        return args

    def detector_prompts(self, batched_inputs):
        """Prompt instances of each input, from the detector's detections on its image."""
        from ..detections import run_detector

        model, resize, fmt = self._detector
        out = []
        for det in run_detector(model, resize, fmt, batched_inputs, self.input_format):
            det = det[det.scores >= self.detector_score_threshold].to("cpu")
            out.append(
                prompt_instances(
                    det.image_size,
                    boxes=det.pred_boxes.tensor.numpy(),
                    classes=det.pred_classes.numpy(),
                    scores=det.scores.numpy(),
                )
            )
        return out

    def forward(self, batched_inputs):
        if self.training:
            return super().forward(batched_inputs)
        prompts = self.detector_prompts(batched_inputs)
        return super().forward([dict(x, instances=p) for x, p in zip(batched_inputs, prompts)])


def resolve_overlaps(masks, centres, max_elements=1 << 22):
    """
    Give each pixel that several masks claim to the one whose centre is nearest.

    Args:
        masks (Tensor[N, H, W] bool): one image's masks.
        centres (Tensor[N, 2]): (x, y) of each mask's prompt, in continuous pixel coordinates
            of the masks.
        max_elements (int): bounds the (masks x claimed pixels) distances held at once.

    Returns:
        Tensor[N, H, W] bool: disjoint masks; pixels claimed once are unchanged.
    """
    masks = masks.clone()
    rows, cols = torch.nonzero(masks.sum(0) > 1, as_tuple=True)
    step = max(1, max_elements // max(len(masks), 1))
    for i in range(0, len(rows), step):
        r, c = rows[i : i + step], cols[i : i + step]
        claim = masks[:, r, c]  # (N, P)
        dist = (c[None] + 0.5 - centres[:, :1]) ** 2 + (r[None] + 0.5 - centres[:, 1:]) ** 2
        owner = dist.masked_fill(~claim, float("inf")).argmin(0)
        masks[:, r, c] = False
        masks[owner, r, c] = True
    return masks
