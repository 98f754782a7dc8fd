"""Per-instance mask losses of SAM and the chunked decoding that bounds their memory."""

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

__all__ = ["mask_losses", "chunked_loss", "box_region"]


def dice_loss(logits, targets):
    """Dice loss of each mask. logits, targets: (..., H, W) -> (...)."""
    p = logits.sigmoid().flatten(-2)
    t = targets.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def box_region(targets, margin=0.5, min_margin=2):
    """
    Pixels near each target: its box grown by ``margin`` x its side on each side (at least
    ``min_margin`` pixels). targets: (N, H, W) -> bool (N, H, W); an empty target gives all pixels.
    """
    n, h, w = targets.shape

    def span(occupied, length):  # (N, L) bool -> inside (N, L)
        first = occupied.float().argmax(-1)
        last = length - 1 - occupied.flip(-1).float().argmax(-1)
        grow = ((last - first + 1) * margin).clamp(min=min_margin)
        idx = torch.arange(length, device=targets.device)[None]
        inside = (idx >= (first - grow)[:, None]) & (idx <= (last + grow)[:, None])
        return inside | ~occupied.any(-1, keepdim=True)

    t = targets > 0.5
    return span(t.any(-1), h)[:, :, None] & span(t.any(-2), w)[:, None, :]


def mask_iou(pred, gt):
    """IoU of boolean masks (..., H, W) -> (...); 1 where both are empty."""
    inter = (pred & gt).flatten(-2).sum(-1)
    union = (pred | gt).flatten(-2).sum(-1)
    return torch.where(
        union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float)
    )


def mask_losses(
    logits, iou_pred, targets, *, focal_alpha, focal_gamma, weights, threshold, focal_region="image"
):
    """
    SAM's training losses, summed over instances (callers divide by the instance count).

    Args:
        logits (Tensor[N, K, H, W]): K candidate masks per instance (K = 1 or 3).
        iou_pred (Tensor[N, K]): predicted IoU of each candidate.
        targets (Tensor[N, H, W]): ground-truth masks in {0, 1}.
        focal_alpha, focal_gamma (float): sigmoid focal loss parameters.
        weights (tuple[float, float, float]): focal, dice and IoU weights.
        threshold (float): logit threshold of a foreground pixel (for the true IoU).
        focal_region (str): pixels the focal loss is averaged over: "image" (all, as SAM) or
            "box" (the object's box grown by half its size each side: small objects are then not
            outweighed by the background of the whole image).

    Returns:
        Tensor[3]: weighted sums over instances of focal, dice and IoU-MSE losses. With K > 1 the
        mask losses use the candidate of lowest loss (SAM paper); the IoU head learns all K.
    """
    logits = logits.float()
    region = box_region(targets) if focal_region == "box" else None
    targets = targets.to(logits.dtype)[:, None].expand_as(logits)
    focal = sigmoid_focal_loss(logits, targets, alpha=focal_alpha, gamma=focal_gamma)
    if region is None:
        focal = focal.flatten(-2).mean(-1)  # (N, K)
    else:
        region = region[:, None].to(focal.dtype)
        focal = (focal * region).flatten(-2).sum(-1) / region.flatten(-2).sum(-1)
    dice = dice_loss(logits, targets)
    w_focal, w_dice, w_iou = weights
    if logits.shape[1] > 1:
        best = (w_focal * focal + w_dice * dice).argmin(dim=1, keepdim=True)
        focal, dice = focal.gather(1, best), dice.gather(1, best)
    with torch.no_grad():
        iou = mask_iou(logits > threshold, targets > 0.5).to(logits.dtype)
    iou_mse = F.mse_loss(iou_pred.float(), iou.to(logits.dtype), reduction="none").mean(1)
    return torch.stack([w_focal * focal.sum(), w_dice * dice.sum(), w_iou * iou_mse.sum()])


class _ChunkedLoss(torch.autograd.Function):
    """
    Sum a loss over chunks of prompts while holding the autograd graph of one chunk at a time.

    Forward runs each chunk's forward and backward at once, accumulating the gradients of the
    image embeddings and of the decoder parameters, then frees that chunk's graph; backward
    returns the accumulated gradients scaled by the incoming gradient. Peak memory is set by the
    chunk size instead of the number of prompts, with no recomputation.

    The outputs are loss terms that callers must combine with equal coefficients (Detectron2's
    trainers sum them, loss scalers scale the sum): the gradient is kept for their sum only.
    """

    @staticmethod
    def forward(ctx, loss_fn, chunks, embeddings, *params):
        need_emb = ctx.needs_input_grad[2]
        need = [need_emb] + list(ctx.needs_input_grad[3:])
        emb = embeddings.detach().requires_grad_(need_emb)
        inputs = [t for t, n in zip([emb, *params], need) if n]
        grads = [torch.zeros_like(t) for t in inputs]
        total = None
        with torch.enable_grad():
            for chunk in chunks:
                for terms in _steps(loss_fn(emb, chunk)):
                    if inputs and terms.requires_grad:
                        step = torch.autograd.grad(terms.sum(), inputs, allow_unused=True)
                        used = [i for i, d in enumerate(step) if d is not None]
                        # One fused op instead of one add per parameter (per-chunk overhead).
                        if used:
                            torch._foreach_add_([grads[i] for i in used], [step[i] for i in used])
                    terms = terms.detach()
                    total = terms if total is None else total + terms
        ctx.need = need
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_terms):
        if not torch.allclose(grad_terms, grad_terms[0].expand_as(grad_terms)):
            raise RuntimeError(
                "chunked SAM losses must be summed with equal weights (got output gradients "
                f"{grad_terms.tolist()}); scale MODEL.SAM.LOSS.* instead"
            )
        scale = grad_terms[0]
        grads = iter(g * scale for g in ctx.saved_tensors)
        return (None, None, *[next(grads) if n else None for n in ctx.need])


def _steps(result):
    """A loss function's terms: one Tensor, or an iterator of Tensors (one per step)."""
    return [result] if torch.is_tensor(result) else result


def chunked_loss(loss_fn, chunks, embeddings, params):
    """
    ``sum(loss_fn(embeddings, c) for c in chunks)`` with memory bounded by one chunk.

    Args:
        loss_fn (callable): (embeddings, chunk) -> Tensor[K] of loss terms, or an iterator of
            such Tensors whose graphs are independent apart from ``embeddings`` and ``params``
            (e.g. rounds of corrective clicks, each fed the previous round's detached output):
            each is back-propagated as soon as it is produced, so memory is that of one step.
        chunks (list): per-chunk arguments of ``loss_fn``.
        embeddings (Tensor): the image embeddings (may require grad through the encoder).
        params (list[Tensor]): every trainable parameter that ``loss_fn`` uses besides
            ``embeddings`` (they receive their gradients through this function).

    Returns:
        Tensor[K]
    """
    if not torch.is_grad_enabled():
        return sum(t for c in chunks for t in _steps(loss_fn(embeddings, c)))
    return _ChunkedLoss.apply(loss_fn, chunks, embeddings, *params)
