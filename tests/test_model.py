"""SAMPrompt: chunked decoding, losses, outputs, point prompts, DDP."""

import os
import tempfile

import numpy as np
import pytest
import torch
from common import (
    chunking_dataset,
    mapped,
    polygon_ellipse,
    shapes_image,
    tiny_cfg,
    training_losses,
)
from detectron2.modeling import build_model
from detectron2.structures import BitMasks

from sam_prompt import SAMDatasetMapper
from sam_prompt.modeling.meta_arch import resolve_overlaps


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**overrides))


@pytest.fixture(scope="module")
def records():
    return chunking_dataset(tempfile.mkdtemp())


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window", [0, 2])
@pytest.mark.parametrize("prompt", ["box", "point"])
def test_chunked_equals_one_shot_and_plain_autograd(records, prompt, window):
    overrides = dict(MODEL__SAM__PROMPT__TYPE=prompt, MODEL__SAM__DECODER_WINDOW=window)
    batch = mapped(records, **overrides)
    results = {}
    for chunk in (7, 0):
        model = build(**overrides, MODEL__SAM__PROMPTS_PER_CHUNK=chunk)
        model.train()
        losses = model(batch)
        sum(losses.values()).backward()
        results[chunk] = ({k: v.detach() for k, v in losses.items()}, _grads(model))

    # Reference: plain autograd through the same per-chunk loss, no custom Function.
    model = build(**overrides)
    model.train()
    emb = model.sam.image_encoder(model.preprocess_image(batch))
    total, n = 0, 0
    for b, x in enumerate(batch):
        boxes, points = model._prompt_tensors(x["instances"])
        total = total + model._chunk_loss(emb, (b, boxes, points, x["instances"].gt_mask_targets))
        n += len(x["instances"])
    (total / n).sum().backward()
    reference = _grads(model)

    (l7, g7), (l0, g0) = results[7], results[0]
    for k in l7:
        torch.testing.assert_close(l7[k], l0[k], rtol=1e-5, atol=1e-6)
    ref_terms = (total / n).detach()
    torch.testing.assert_close(torch.stack(list(l7.values())), ref_terms, rtol=1e-5, atol=1e-6)
    assert set(g7) == set(g0) >= set(reference)
    # Parameters the prompts do not use get zero gradients (so DDP needs no unused-param search).
    for k in set(g7) - set(reference):
        assert g7[k].abs().max() == 0 and g0[k].abs().max() == 0, k
    enc = [k for k in g7 if "image_encoder" in k]
    assert enc and any(g7[k].abs().max() > 0 for k in enc), "encoder must receive gradients"
    for k in reference:
        scale = max(reference[k].abs().max().item(), 1e-3)
        for g in (g7[k], g0[k]):
            assert (g - reference[k]).abs().max().item() <= 1e-4 * scale + 1e-6, k


def _same_seed_losses(a, b, batch):
    """Training losses of models ``a`` and ``b`` on ``batch`` under the same seed; asserts equal."""
    a.train(), b.train()
    torch.manual_seed(1)
    ref = a(batch)
    torch.manual_seed(1)
    out = b(batch)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
    return ref, out


def test_frozen_encoder_gets_no_gradient(records):
    model = build(MODEL__SAM__FREEZE_IMAGE_ENCODER=True, MODEL__SAM__PROMPTS_PER_CHUNK=5)
    model.train()
    sum(model(mapped(records)).values()).backward()
    grads = _grads(model)
    assert not any("image_encoder" in k for k in grads)
    assert any("mask_decoder" in k for k in grads)


def test_loss_falls_when_overfitting_one_image(records):
    model = build(MODEL__SAM__PROMPTS_PER_CHUNK=4)
    model.train()
    m = SAMDatasetMapper(tiny_cfg(), True)
    history = training_losses(model, lambda: [m(records[0])])
    assert np.isfinite(history).all()
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])


def test_inference_outputs(records):
    model = build(MODEL__SAM__PROMPTS_PER_CHUNK=16)
    model.eval()
    batch = mapped(records, is_train=False)
    batch[2]["height"], batch[2]["width"] = 320, 512  # ask for another output size
    with torch.no_grad():
        outs = model(batch)
    for x, out in zip(batch, outs):
        inst = out["instances"]
        n = len(x["instances"])
        assert len(inst) == n
        assert inst.image_size == (x["height"], x["width"])
        assert inst.pred_masks.shape == (n, x["height"], x["width"])
        assert inst.pred_masks.dtype == torch.bool
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert torch.equal(inst.pred_classes, x["instances"].prompt_classes)
        # Boxes come from the predicted masks, not from the prompts.
        expected = BitMasks(inst.pred_masks).get_bounding_boxes().tensor
        torch.testing.assert_close(inst.pred_boxes.tensor, expected)


def test_image_with_no_instances(records):
    model = build()
    x = mapped(records[:1], is_train=False)[0]
    x["instances"] = x["instances"][:0]
    model.eval()
    with torch.no_grad():
        (out,) = model([x])
    assert len(out["instances"]) == 0
    assert out["instances"].pred_masks.shape == (0, x["height"], x["width"])
    model.train()
    x = mapped(records[:1], is_train=True)[0]
    x["instances"] = x["instances"][:0]
    losses = model([x])
    assert all(v.item() == 0 for v in losses.values())
    sum(losses.values()).backward()  # keeps every parameter in the graph


def test_large_non_square_image_is_resized_not_cropped(tmp_path):
    # 200 x 600 is wider than the 256-px encoder: the mapper scales it to 85 x 256 (SAM's rounding),
    # with its prompts, and the model pads it; nothing is cut.
    rec = shapes_image(
        str(tmp_path / "wide.png"), [(polygon_ellipse(540, 100, 40, 60), 1)], size=(200, 600)
    )
    model = build(MODEL__SAM__PROMPTS_PER_CHUNK=4)
    x = SAMDatasetMapper(tiny_cfg(), False)(rec)
    assert tuple(x["image"].shape) == (3, 85, 256)
    images = model.preprocess_image([x])
    assert images.shape == (1, 3, 256, 256)
    # The far-right object is still in the encoder input (not normalised-zero padding).
    assert images[0, :, 20:60, 220:250].abs().sum() > 0
    x0, _, x1, _ = x["instances"].prompt_boxes.tensor[0].tolist()
    assert abs(x0 - 500 * 256 / 600) <= 1.5 and abs(x1 - 580 * 256 / 600) <= 1.5
    model.eval()
    with torch.no_grad():
        (out,) = model([x])
    assert out["instances"].pred_masks.shape == (1, 200, 600)


def test_point_prompts_train_on_best_of_three(records):
    model = build(MODEL__SAM__PROMPT__TYPE="point", MODEL__SAM__PROMPTS_PER_CHUNK=8)
    batch = mapped(records, MODEL__SAM__PROMPT__TYPE="point")
    emb = model.sam.image_encoder(model.preprocess_image(batch[:1]))
    _, points = model._prompt_tensors(batch[0]["instances"])
    logits, iou = model._decode(emb, None, points, model._multimask(points))
    assert logits.shape[1] == 3 and iou.shape[1] == 3
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_centrality_keeps_the_mask_the_point_lies_deepest_in(records):
    """MULTIMASK_CENTRALITY: among a point's three masks, the predicted IoU times the point's
    depth in the mask chooses, and scores the mask kept."""
    point = dict(MODEL__SAM__PROMPT__TYPE="point")
    x = mapped(records[:1], is_train=False, **point)[0]
    x = dict(x, instances=x["instances"][:2])
    g = build(**point).image_size // 4  # the decoder's grid

    def decode(embedding, boxes, points, multimask, masks=None):
        # 0: a square around the point, the point 2 cells from its corner (predicted IoU 0.9);
        # 1: a disk centred on the point (0.6); 2: nothing (0.1).
        n = len(points[0])
        logits = torch.full((n, 3, g, g), -5.0)
        yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        for i, (px, py) in enumerate((points[0][:, 0] / 4).tolist()):
            cx, cy = int(px), int(py)
            logits[i, 0, max(cy - 2, 0) : cy + 10, max(cx - 2, 0) : cx + 10] = 5.0
            logits[i, 1][(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 5.0
        return logits, torch.tensor([[0.9, 0.6, 0.1]]).expand(n, 3)

    out = {}
    for centrality in (0.0, 1.0):
        model = build(**point, MODEL__SAM__MULTIMASK_CENTRALITY=centrality)
        model._decode = decode
        model.eval()
        with torch.no_grad():
            out[centrality] = model([x])[0]["instances"]
    areas = {c: inst.pred_masks.flatten(1).sum(1).float() for c, inst in out.items()}
    torch.testing.assert_close(out[0.0].scores, torch.full((2,), 0.9))
    # the disk, scored 0.6 x the depth of the point (near, not on, its deepest output pixel)
    assert (out[1.0].scores > 0.45).all() and (out[1.0].scores <= 0.6).all()
    assert (areas[1.0] * 4 < areas[0.0]).all()
    with pytest.raises(ValueError, match="MULTIMASK_CENTRALITY=-1"):
        build(MODEL__SAM__MULTIMASK_CENTRALITY=-1.0)


def _multimask_decoder(g, shapes, iou):
    """A stub mask decoder: candidate k of each point is ``shapes[k](cx, cy)`` (a bool (g, g)
    grid from the point's cell), with predicted IoU ``iou[k]``."""

    def decode(embedding, boxes, points, multimask, masks=None):
        n = len(points[0])
        logits = torch.full((n, len(shapes), g, g), -5.0)
        for i, (px, py) in enumerate((points[0][:, 0] / 4).tolist()):
            for k, shape in enumerate(shapes):
                logits[i, k][shape(int(px), int(py))] = 5.0
        return logits, torch.tensor([iou]).expand(n, len(shapes))

    return decode


def test_avoid_others_keeps_a_mask_without_other_prompts_points(records):
    """MULTIMASK_AVOID_OTHERS: a candidate holding other prompts' points loses to one holding
    none, whatever their predicted IoUs; with centrality, a point in none of its masks keeps
    SAM's choice, scored 0."""
    point = dict(MODEL__SAM__PROMPT__TYPE="point")
    x = mapped(records[:1], is_train=False, **point)[0]
    x = dict(x, instances=x["instances"][:3])
    g = build(**point).image_size // 4
    yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    everything = lambda cx, cy: torch.ones(g, g, dtype=torch.bool)  # noqa: E731
    disk = lambda cx, cy: (yy - cy) ** 2 + (xx - cx) ** 2 <= 1  # noqa: E731
    nothing = lambda cx, cy: torch.zeros(g, g, dtype=torch.bool)  # noqa: E731
    out = {}
    for avoid in (False, True):
        model = build(**point, MODEL__SAM__MULTIMASK_AVOID_OTHERS=avoid)
        model._decode = _multimask_decoder(g, [everything, disk, nothing], [0.9, 0.6, 0.1])
        model.eval()
        with torch.no_grad():
            out[avoid] = model([x])[0]["instances"]
    h, w = out[False].image_size
    torch.testing.assert_close(out[False].scores, torch.full((3,), 0.9))
    assert (out[False].pred_masks.flatten(1).sum(1) == h * w).all()
    torch.testing.assert_close(out[True].scores, torch.full((3,), 0.6))
    assert (out[True].pred_masks.flatten(1).sum(1) < h * w / 50).all()

    # Centrality with the point outside all three masks: SAM's choice (the 0.7 one), score 0.
    far = lambda cx, cy: (yy - (cy + g // 2) % g) ** 2 + (xx - (cx + g // 2) % g) ** 2 <= 9  # noqa
    model = build(**point, MODEL__SAM__MULTIMASK_CENTRALITY=1.0)
    model._decode = _multimask_decoder(g, [nothing, far, nothing], [0.2, 0.7, 0.1])
    model.eval()
    with torch.no_grad():
        inst = model([x])[0]["instances"]
    assert (inst.scores == 0).all() and (inst.pred_masks.flatten(1).sum(1) > 0).all()


def test_resolve_overlaps_gives_each_claimed_pixel_to_the_nearest_prompt():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:12, 2:16] = True
    masks[1, 2:12, 10:28] = True  # overlaps 0 on columns 10-15
    masks[2, 15:19, 0:5] = True  # alone
    centres = torch.tensor([[5.0, 7.0], [21.0, 7.0], [2.5, 17.0]])
    out = resolve_overlaps(masks, centres)
    assert (out.sum(0) <= 1).all()  # disjoint
    assert torch.equal(out.any(0), masks.any(0))  # no claimed pixel is lost
    assert torch.equal(out[2], masks[2])
    # columns 10-12 (centres 10.5-12.5) are nearer x = 5, columns 13-15 nearer x = 21
    assert out[0, 2:12, 10:13].all() and not out[0, 2:12, 13:16].any()
    assert out[1, 2:12, 13:16].all() and not out[1, 2:12, 10:13].any()
    torch.testing.assert_close(resolve_overlaps(masks, centres, max_elements=7), out)


def test_resolve_overlaps_makes_an_images_masks_disjoint(records):
    """MODEL.SAM.RESOLVE_OVERLAPS: masks that all cover the whole image become the partition of
    the image by the nearest box centre."""
    x = mapped(records[:1], is_train=False)[0]
    x = dict(x, instances=x["instances"][:4])
    g = build().image_size // 4

    def decode(embedding, boxes, points, multimask, masks=None):
        return torch.full((len(boxes), 1, g, g), 5.0), torch.full((len(boxes), 1), 0.8)

    model = build(MODEL__SAM__RESOLVE_OVERLAPS=True)
    model._decode = decode
    model.eval()
    with torch.no_grad():
        inst = model([x])[0]["instances"]
    masks = inst.pred_masks
    assert (masks.sum(0) == 1).all()
    # every pixel lies in the mask of the prompt whose box centre is nearest
    h, w = inst.image_size
    boxes = x["instances"].prompt_boxes.tensor
    centres = (
        (boxes[:, :2] + boxes[:, 2:])
        / 2
        * torch.tensor([w / x["image"].shape[-1], h / x["image"].shape[-2]])
    )
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    dist = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2
    assert (masks.float().argmax(0) == dist.argmin(0)).float().mean() > 0.999


def test_instance_cap_limits_training_prompts(records):
    model = build(MODEL__SAM__MAX_INSTANCES_PER_IMAGE=5)
    model.train()
    seen = []  # prompts reaching the mask decoder, through a public forward hook
    model.sam.mask_decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(len(kwargs["sparse_prompt_embeddings"])),
        with_kwargs=True,
    )
    model(mapped(records))
    assert sum(seen) == 4 + 3 + 5  # images of 4, 3 and 40 instances


def test_autocast_bf16_on_cpu_stays_close_to_fp32(records):
    batch = mapped(records[:2])
    out = {}
    for amp in (False, True):
        model = build(MODEL__SAM__PROMPTS_PER_CHUNK=3)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            losses = model(batch)
        sum(losses.values()).backward()
        out[amp] = (torch.stack(list(losses.values())).detach(), _grads(model))
    (l32, g32), (l16, g16) = out[False], out[True]
    torch.testing.assert_close(l16, l32, rtol=0.05, atol=0.01)
    for k in g32:  # bf16 keeps ~3 significant digits: gradients agree in direction and size
        a, b = g16[k].flatten(), g32[k].flatten()
        if b.norm() > 1e-6:
            assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.95, k
            assert 0.8 < a.norm() / b.norm() < 1.25, k


def test_trainer_amp_on_cpu_runs_under_bf16_autocast(tmp_path):
    from common import small_dataset

    from sam_prompt.engine import MixedPrecisionTrainer, Trainer

    name = small_dataset(tmp_path)
    cfg = tiny_cfg(
        DATASETS__TRAIN=(name,),
        DATASETS__TEST=(),
        OUTPUT_DIR=str(tmp_path / "o"),
        SOLVER__MAX_ITER=3,
        SOLVER__AMP__ENABLED=True,
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, MixedPrecisionTrainer)
    dtypes = []
    trainer.model.sam.mask_decoder.register_forward_hook(lambda m, i, o: dtypes.append(o[0].dtype))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_unequal_loss_weights_downstream_are_refused(records):
    model = build(MODEL__SAM__PROMPTS_PER_CHUNK=8)
    model.train()
    losses = model(mapped(records[:1]))
    with pytest.raises(RuntimeError, match="equal weights"):
        (losses["loss_mask_focal"] * 2 + losses["loss_mask_dice"] + losses["loss_iou"]).backward()


# --- DDP (gloo, two CPU processes) ----------------------------------------------------------
def _ddp_worker(rank, world, port, recs, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = build(MODEL__SAM__PROMPTS_PER_CHUNK=3)
        model.train()
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        losses = ddp(mapped([recs[rank]]))
        sum(losses.values()).backward()
        torch.save(_grads(model), os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_averages_gradients_of_chunked_loss(records, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, records[:2], str(tmp_path)), nprocs=2)
    g0 = torch.load(tmp_path / "grads0.pt")
    g1 = torch.load(tmp_path / "grads1.pt")
    single = []
    for r in records[:2]:
        model = build(MODEL__SAM__PROMPTS_PER_CHUNK=3)
        model.train()
        sum(model(mapped([r])).values()).backward()
        single.append(_grads(model))
    for k in single[0]:
        expected = (single[0][k] + single[1][k]) / 2
        torch.testing.assert_close(g0[k], g1[k])
        scale = max(expected.abs().max().item(), 1e-3)
        assert (g0[k] - expected).abs().max().item() <= 1e-4 * scale + 1e-6, k


# --- embedding cache ------------------------------------------------------------------------
def _encoder_calls(model):
    calls = []
    model.sam.image_encoder.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return calls


@pytest.mark.parametrize("location", ["memory", "folder"])
def test_embedding_cache_computes_each_embedding_once_and_exactly(records, tmp_path, location):
    where = "memory" if location == "memory" else str(tmp_path / "cache")
    frozen = dict(MODEL__SAM__FREEZE_IMAGE_ENCODER=True, MODEL__SAM__PROMPTS_PER_CHUNK=8)
    batch = mapped(records, is_train=False)
    plain = build(**frozen).eval()
    cached = build(**frozen, MODEL__SAM__EMBEDDING_CACHE=where).eval()
    calls = _encoder_calls(cached)
    with torch.no_grad():
        reference = [o["instances"] for o in plain(batch)]
        first = [o["instances"] for o in cached(batch)]
        second = [o["instances"] for o in cached(batch)]
    assert sum(calls) == len(batch)  # the second pass encoded nothing
    for a, b, c in zip(reference, first, second):
        assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(b.pred_masks, c.pred_masks)
        torch.testing.assert_close(a.scores, c.scores, rtol=0, atol=0)
    # A flipped image is another key.
    flipped = dict(batch[0], image=batch[0]["image"].flip(-1))
    with torch.no_grad():
        cached([flipped])
    assert sum(calls) == len(batch) + 1
    # New encoder weights: nothing cached before is re-used.
    state = cached.state_dict()
    state = {
        k: (v + 0.01 if k.startswith("sam.image_encoder.") and v.is_floating_point() else v)
        for k, v in state.items()
    }
    cached.load_state_dict(state)
    with torch.no_grad():
        cached(batch[:1])
    assert sum(calls) == len(batch) + 2


def test_embedding_cache_fp16_is_close_and_training_works(records):
    frozen = dict(MODEL__SAM__FREEZE_IMAGE_ENCODER=True, MODEL__SAM__PROMPTS_PER_CHUNK=8)
    model = build(
        **frozen, MODEL__SAM__EMBEDDING_CACHE="memory", MODEL__SAM__EMBEDDING_CACHE_DTYPE="float16"
    )
    model.train()
    batch = mapped(records)
    first = model(batch)
    second = model(batch)  # from the cache (stored in float16)
    for k in first:
        torch.testing.assert_close(first[k], second[k], rtol=2e-2, atol=2e-3)
    sum(second.values()).backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.sam.mask_decoder.parameters()
    )
    assert model.embedding_cache.hits == len(batch)


def test_embedding_cache_refused_for_a_trained_encoder():
    with pytest.raises(ValueError, match="FREEZE_IMAGE_ENCODER"):
        build(MODEL__SAM__EMBEDDING_CACHE="memory")


def test_box_as_mask_prompt_fills_the_box_on_the_mask_grid(records):
    model = build(MODEL__SAM__PROMPT__BOX_AS_MASK="box")
    h, w = model.sam.prompt_encoder.mask_input_size
    stride = model.image_size / w
    # Cells 2..5 (x) and 1..3 (y) fully inside; x2 ends half-way through cell 6.
    box = torch.tensor([[2, 1, 6.5, 4]]) * stride
    m = model._box_masks(box)[0, 0]
    assert m.shape == (h, w)
    assert (m[1:4, 2:6] == 1).all()
    torch.testing.assert_close(m[1:4, 6], torch.zeros(3))  # half covered -> 0 (logit-like)
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[1:4, 2:7] = False
    assert (m[outside] == -1).all()

    # The decoder gets it (a dense prompt that depends on the box) only for box prompts, and
    # the output differs from the same model without it.
    x = mapped(records, is_train=False)[0]
    emb = model.sam.image_encoder(model.preprocess_image([x]))
    boxes, _ = model._prompt_tensors(x["instances"])
    with torch.no_grad():
        with_mask, _ = model._decode(emb, boxes, None, False)
        model.box_as_mask = ""
        without, _ = model._decode(emb, boxes, None, False)
        model.box_as_mask = "box"
        fed, _ = model._decode(emb, boxes, None, False, masks=model._box_masks(boxes.flip(0)))
    assert not torch.allclose(with_mask, without)
    # An explicit mask prompt (a previous round's logits) is used as given.
    assert not torch.allclose(fed[0], with_mask[0])


def test_ellipse_as_mask_prompt_is_the_inscribed_ellipse():
    model = build(MODEL__SAM__PROMPT__BOX_AS_MASK="ellipse")
    h, w = model.sam.prompt_encoder.mask_input_size
    stride = model.image_size / w
    box = torch.tensor([[4, 6, 24, 16]]) * stride  # centre (14, 11), radii 10 x 5 cells
    m = model._box_masks(box)[0, 0]
    assert m.shape == (h, w) and m.min() >= -1 and m.max() <= 1
    assert m[10:12, 13:15].min() == 1  # centre
    assert m[6, 4] == -1 and m[15, 23] == -1  # box corners are outside the ellipse
    assert m[10:12, 4].max() > -1 and m[10:12, 2].max() == -1  # left vertex, outside it
    assert (m[:, 25:] == -1).all() and (m[17:] == -1).all()
    with pytest.raises(ValueError, match="BOX_AS_MASK"):
        build(MODEL__SAM__PROMPT__BOX_AS_MASK="circle")


def test_point_as_mask_prompt_is_a_disk_at_positive_points():
    model = build(MODEL__SAM__PROMPT__TYPE="point", MODEL__SAM__PROMPT__POINT_AS_MASK=2.0)
    h, w = model.sam.prompt_encoder.mask_input_size
    stride = model.image_size / w
    # One positive point at the centre of cell (y 10, x 8), one negative point elsewhere.
    coords = torch.tensor([[[8.5, 10.5], [20.5, 20.5]]]) * stride
    labels = torch.tensor([[1, 0]])
    m = model._point_masks(coords, labels)[0, 0]
    assert m.shape == (h, w)
    inside = m == 1
    assert inside[10, 8] and inside[10, 10] and inside[8, 8] and not inside[10, 11]
    assert not inside[12, 10]  # distance sqrt(8) > 2
    assert int(inside.sum()) == 13  # cells within 2 of a cell centre: 1 + 4 + 4 + 4
    assert (m[~inside] == -1).all()  # the negative point draws nothing
    with pytest.raises(ValueError, match="POINT_AS_MASK"):
        build(MODEL__SAM__PROMPT__POINT_AS_MASK=-1.0)


def test_fine_features_start_as_plain_sam_and_learn_through_the_chunked_loss(records):
    plain = build()
    model = build(MODEL__SAM__FINE_FEATURES=8)
    model.sam.load_state_dict(plain.sam.state_dict())
    batch = mapped(records)
    # Zero-initialised: the same losses and masks as SAM without them.
    ref, out = _same_seed_losses(plain, model, batch)
    sum(out.values()).backward()
    stem = model.fine_features.stem
    assert stem[-1].weight.grad.abs().sum() > 0  # reached through the folded channels
    assert stem[0].weight.grad.abs().sum() == 0  # behind the zero layer, for now

    # Folding into the embedding's channels and unfolding is exact.
    images = model.preprocess_image(batch)
    emb = torch.randn(len(batch), 64, 16, 16)
    with torch.no_grad():
        stem[-1].weight.normal_()
        e, fine = model.fine_features.unfold(model.fine_features.fold(images, emb))
        torch.testing.assert_close(e, emb)
        torch.testing.assert_close(fine, stem(images))
    assert fine.shape == (len(batch), 64 // 8, 64, 64)  # the upscaled embedding's grid

    # Once non-zero, they change the masks, and every stem layer learns.
    model.zero_grad()
    torch.manual_seed(1)
    out = model(batch)
    assert not torch.allclose(out["loss_mask_dice"], ref["loss_mask_dice"])
    sum(out.values()).backward()
    assert all(p.grad.abs().sum() > 0 for p in stem.parameters())
    model.eval()
    with torch.no_grad():
        masks = model(mapped(records, is_train=False))[0]["instances"].pred_masks
    assert masks.shape[0] == len(records[0]["annotations"])

    with pytest.raises(ValueError, match="FINE_FEATURES"):
        build(MODEL__SAM__FINE_FEATURES=-1)
    with pytest.raises(ValueError, match="FINE_DEPTH.*FINE_FEATURES"):
        build(MODEL__SAM__FINE_DEPTH=2)
    with pytest.raises(ValueError, match="divisible by 8"):
        build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__CUSTOM__PATCH_SIZE=4)


def test_windowed_decoding_sees_its_window_only_and_is_shift_equivariant():
    from sam_prompt.modeling.decoder_window import OUTSIDE_LOGIT, PromptWindows

    model = build(
        MODEL__SAM__DECODER_WINDOW=2,
        MODEL__SAM__FINE_FEATURES=8,
        MODEL__SAM__PROMPT__BOX_AS_MASK="ellipse",
    )
    plain = build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__PROMPT__BOX_AS_MASK="ellipse")
    with torch.no_grad():
        model.fine_features.stem[-1].weight.normal_(std=0.1)  # features that reach the masks
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 64 + 16 * 8, 16, 16, generator=g)  # 16 x 16 cells of 16 px, folded
    # Cells (x, y): 4-6 x 5-6 and 8-9 x 7-8 -> 8-cell windows; 6-12 x 3-11 -> the whole grid.
    boxes = torch.tensor([[70.0, 80, 100, 105], [130, 120, 150, 140], [100, 60, 200, 180]])

    def decode(m, e, b=None, p=None):
        with torch.no_grad():
            return m._decode(e, b, p, False)[0]

    logits = decode(model, emb, boxes)
    assert logits.shape == (3, 1, 64, 64)
    groups = PromptWindows.around(boxes, None, (16, 16), 16.0, 2)
    sides = {int(i): w.side for idx, w in groups for i in idx}
    assert sides == {0: (8, 8), 1: (8, 8), 2: (16, 16)}
    # Outside its window a mask is background (a window of 8 cells: 32 x 32 mask cells).
    assert (logits[:2] != OUTSIDE_LOGIT).flatten(1).sum(1).tolist() == [32 * 32] * 2
    assert (logits[2] != OUTSIDE_LOGIT).all()
    # Each prompt's mask is that of the prompt decoded alone.
    for i in range(3):
        torch.testing.assert_close(decode(model, emb, boxes[i : i + 1]), logits[i : i + 1])
    # The image outside a prompt's window does not reach its mask.
    far = emb.clone()
    far[..., 12:, :] = torch.randn(1, far.shape[1], 4, 16, generator=g)
    torch.testing.assert_close(decode(model, far, boxes[:2]), logits[:2])

    # Image and prompts moved by whole cells: the masks move with them (SAM's absolute positional
    # encoding does not allow this: the plain decoder's masks change).
    dy, dx = 2, 3
    moved = emb.roll((dy, dx), dims=(2, 3))
    shift = torch.tensor([dx, dy, dx, dy]) * 16.0
    for m, equal in ((model, True), (plain, False)):
        back = decode(m, moved, boxes[:2] + shift).roll((-4 * dy, -4 * dx), dims=(2, 3))
        assert torch.allclose(back, decode(m, emb, boxes[:2]), atol=1e-4) == equal

    # Points: the window is around the real points; padding points do not move it.
    coords = torch.tensor([[[85.0, 90.0]], [[140.0, 130.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    one = decode(model, emb, None, (coords, labels))
    assert (one != OUTSIDE_LOGIT).flatten(1).sum(1).tolist() == [32 * 32] * 2  # 1 + 2 x 2 -> 8
    padded = [
        (torch.cat([coords, torch.full((2, 1, 2), at)], 1), torch.tensor([[1, -1]] * 2))
        for at in (0.0, 250.0)
    ]
    torch.testing.assert_close(
        decode(model, emb, None, padded[1]), decode(model, emb, None, padded[0])
    )

    with pytest.raises(ValueError, match="DECODER_WINDOW"):
        build(MODEL__SAM__DECODER_WINDOW=-1)


def test_fused_channel_norm_matches_sams_in_values_and_gradients():
    from segment_anything.modeling.common import LayerNorm2d

    from sam_prompt.modeling.fine_features import _LayerNorm2d

    torch.manual_seed(0)
    ref, fused = LayerNorm2d(6), _LayerNorm2d(6)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    assert not fused.load_state_dict(ref.state_dict()).missing_keys  # checkpoints load either way
    x = (torch.randn(2, 6, 9, 7) * 3 + 1).requires_grad_()
    g = torch.randn(2, 6, 9, 7)
    outs, grads = [], []
    for m in (ref, fused):
        y = m(x)
        y.backward(g)
        outs.append(y.detach())
        grads.append([x.grad.clone(), m.weight.grad, m.bias.grad])
        x.grad = None
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b)


def test_deeper_fine_stem_starts_as_the_shallow_one_and_widens_what_features_see(records):
    shallow = build(MODEL__SAM__FINE_FEATURES=8)
    model = build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_DEPTH=2)
    missing, unexpected = model.load_state_dict(shallow.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("fine_features.blocks.") for k in missing)
    blocks = model.fine_features.blocks
    assert len(blocks) == 2 and [b.body[1].dilation for b in blocks] == [(1, 1), (2, 2)]
    images = model.preprocess_image(mapped(records, is_train=False))
    emb = torch.zeros(len(images), 64, 16, 16)
    with torch.no_grad():  # a non-zero output layer, so that the features differ from zero
        for m in (shallow, model):
            m.fine_features.stem[-1].weight.copy_(torch.linspace(-1, 1, 8 * 8).reshape(8, 8, 1, 1))
        ref = shallow.fine_features.fold(images, emb)
        torch.testing.assert_close(model.fine_features.fold(images, emb), ref)  # zero blocks
        for p in blocks.parameters():
            p.normal_(std=0.1)
        deep = model.fine_features.fold(images, emb)
    assert not torch.allclose(deep, ref)

    # Reach: a change of one input pixel moves the shallow stem's features within 7 pixels (the
    # two strided 3 x 3 convolutions), the deep one's 6 cells (24 pixels) further.
    def reach(m):
        x = images[:1].clone()
        y, xx = 101, 101
        with torch.no_grad():
            a = m.fine_features.features(x)
            x[0, :, y, xx] += 10.0
            b = m.fine_features.features(x)
        ys, xs = torch.nonzero((a - b).abs().amax((0, 1)) > 0, as_tuple=True)
        return int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1

    assert reach(shallow) == (2, 2)  # cells of 4 pixels: the pixel's own and a neighbour
    assert reach(model) == (2 + 2 * (1 + 2), 2 + 2 * (1 + 2))

    with pytest.raises(ValueError, match="FINE_DEPTH"):
        build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_DEPTH=-1)


def test_mask_refinement_starts_as_identity_and_learns_through_the_chunked_loss(records):
    base = build(MODEL__SAM__FINE_FEATURES=8)
    model = build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4)
    model.load_state_dict(base.state_dict(), strict=False)
    batch = mapped(records)
    ref, out = _same_seed_losses(base, model, batch)  # zero-initialised last layer
    sum(out.values()).backward()
    refine = model.fine_features.refinement
    assert refine.body[-1].weight.grad.abs().sum() > 0
    assert refine.mask.weight.grad.abs().sum() == 0  # behind the zero layer, for now

    # Once non-zero it changes each mask by what surrounds it, image and mask. Refined in a
    # window around each mask, the masks' boxes get exactly what the whole grid would give.
    with torch.no_grad():
        for p in refine.parameters():
            p.normal_(std=0.1)
        model.fine_features.stem[-1].weight.normal_(std=0.1)  # else the features are zero
    g = torch.Generator().manual_seed(0)
    logits = torch.full((4, 3, 64, 64), -6.0)
    logits[0, :, 20:30, 24:31] = 8.0
    logits[1, 0, 2:9, 50:63] = 5.0  # at the grid's edge
    logits[1, 2, 5:12, 45:52] = 3.0  # another candidate: its box is the union
    logits[2] += torch.randn(3, 64, 64, generator=g)  # no positive cell: around its highest
    logits[3, :, 30:35, 10:14] = 4.0
    fine = torch.randn(1, 8, 64, 64, generator=g)
    with torch.no_grad():
        out_logits = refine(logits, fine)
        full = refine.body(
            refine.mask(torch.tanh(logits.reshape(12, 1, 64, 64) / 4)) + refine.image(fine)
        ).reshape(4, 3, 64, 64)
    cells, (sh, sw) = refine.windows(logits)
    assert out_logits.shape == logits.shape and sh == sw == 40  # (62 - 45) + 2 + 16 -> 40
    boxes = [(20, 30, 24, 31), (2, 12, 45, 63), None, (30, 35, 10, 14)]
    for i, box in enumerate(boxes):
        changed = out_logits[i] != logits[i]
        assert changed.flatten(1).sum(1).tolist() == [sh * sw] * 3  # its window only
        if box is None:
            y, x = divmod(int(logits[i].amax(0).argmax()), 64)
            box = (y, y + 1, x, x + 1)
        y0, y1, x0, x1 = box
        torch.testing.assert_close(
            out_logits[i, :, y0:y1, x0:x1], logits[i, :, y0:y1, x0:x1] + full[i, :, y0:y1, x0:x1]
        )
    with torch.no_grad():  # no masks in a chunk
        assert refine(logits[:0], fine).shape == (0, 3, 64, 64)

    # Every layer learns, through the chunked loss, and chunking does not change the gradient.
    grads = {}
    for chunk in (1, 64):
        model.zero_grad()
        model.prompts_per_chunk = chunk
        torch.manual_seed(1)
        sum(model(batch).values()).backward()
        grads[chunk] = [p.grad.clone() for p in refine.parameters()]
        assert all(g.abs().sum() > 0 for g in grads[chunk])
    for a, b in zip(grads[1], grads[64]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model.eval()
    with torch.no_grad():
        masks = model(mapped(records, is_train=False))[0]["instances"].pred_masks
    assert masks.shape[0] == len(records[0]["annotations"])

    with pytest.raises(ValueError, match="FINE_FEATURES > 0"):
        build(MODEL__SAM__FINE_REFINE=4)
    with pytest.raises(ValueError, match="FINE_REFINE"):
        build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=-1)


def test_further_refinement_passes_start_as_identity_and_refine_the_refined_masks(records):
    refined = dict(
        MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4, MODEL__SAM__FINE_RESCORE=True
    )
    one = build(**refined)
    with torch.no_grad():  # a trained-like first pass (zero layers would hide any mix-up)
        for p in one.fine_features.parameters():
            p.normal_(std=0.1)
    two = build(**refined, MODEL__SAM__FINE_REFINE_PASSES=2)
    missing = two.load_state_dict(one.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("fine_features.refinement.more.0.") for k in missing)
    batch = mapped(records)
    ref, out = _same_seed_losses(one, two, batch)  # the second pass starts as the identity
    sum(out.values()).backward()
    second = two.fine_features.refinement.more[0]
    assert second.body[-1].weight.grad.abs().sum() > 0  # it learns, through the chunked loss
    assert second.score[-1].weight.grad.abs().sum() > 0

    # Once trained, it refines the first pass's output, with its own window.
    with torch.no_grad():
        for p in second.parameters():
            p.normal_(std=0.1)
    first = two.fine_features.refinement
    logits = torch.full((2, 3, 64, 64), -6.0)
    logits[0, :, 20:30, 24:31] = 8.0
    logits[1, 1, 40:44, 5:9] = 3.0
    fine = torch.randn(1, 8, 64, 64)
    iou = torch.rand(2, 3)
    with torch.no_grad():
        got = first(logits, fine, iou)
        once = first._refine(logits, fine, iou)
        expected = second(once[0], fine, once[1])
        assert not torch.equal(got[0], once[0]) and not torch.equal(got[1], once[1])
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])
        torch.testing.assert_close(first(logits, fine), second(first._refine(logits, fine), fine))

    with pytest.raises(ValueError, match="FINE_REFINE > 0"):
        build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE_PASSES=2)
    with pytest.raises(ValueError, match="FINE_REFINE_PASSES=0"):
        build(**refined, MODEL__SAM__FINE_REFINE_PASSES=0)


def test_rescoring_starts_as_the_decoder_and_scores_each_mask_by_its_own_features(records):
    refined = build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4)
    model = build(
        MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4, MODEL__SAM__FINE_RESCORE=True
    )
    with torch.no_grad():  # a trained refinement, so that the masks have features to score
        for p in refined.fine_features.parameters():
            p.normal_(std=0.1)
    model.load_state_dict(refined.state_dict(), strict=False)
    test_batch = mapped(records, is_train=False)
    refined.eval(), model.eval()
    with torch.no_grad():
        ref, out = refined(test_batch)[0]["instances"], model(test_batch)[0]["instances"]
    torch.testing.assert_close(out.scores, ref.scores)  # zero-initialised: the decoder's IoU
    assert torch.equal(out.pred_masks, ref.pred_masks)

    # The IoU loss trains the head, through the chunked loss, the same at any chunk size; the
    # mask losses do not reach it.
    batch = mapped(records)
    model.train()
    score = model.fine_features.refinement.score
    grads = {}
    for chunk in (1, 64):
        model.zero_grad()
        model.prompts_per_chunk, model.loss_weights = chunk, (0.0, 0.0, 1.0)
        torch.manual_seed(1)
        sum(model(batch).values()).backward()
        grads[chunk] = score[-1].weight.grad.clone()
        assert grads[chunk].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[64], rtol=1e-4, atol=1e-7)
    model.zero_grad()
    model.loss_weights = (1.0, 1.0, 0.0)
    sum(model(batch).values()).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in score.parameters())

    # Once trained, each mask's score moves by its own amount; the masks stay the same.
    with torch.no_grad():
        for p in score.parameters():
            p.normal_(std=0.5)
    model.eval()
    with torch.no_grad():
        out = model(test_batch)[0]["instances"]
    assert torch.equal(out.pred_masks, ref.pred_masks)
    assert len(set(torch.round(out.scores - ref.scores, decimals=5).tolist())) > 1

    with pytest.raises(ValueError, match="FINE_REFINE > 0"):
        build(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_RESCORE=True)


def test_training_reports_empty_share_and_mask_iou_and_warns_on_collapse(
    records, caplog, monkeypatch
):
    import logging

    from detectron2.utils import logger as d2_logger
    from detectron2.utils.events import EventStorage

    monkeypatch.setattr(d2_logger, "_LOG_TIMER", {})  # warnings of earlier tests do not mute these
    batch = mapped(records[:1])
    targets = batch[0]["instances"].gt_mask_targets
    covered = targets.flatten(1).float().mean(1)  # IoU of a mask filling the whole grid
    seen = {}
    for case, threshold in (("empty", float("inf")), ("full", float("-inf")), ("plain", 0.0)):
        model = build(SOLVER__WARMUP_ITERS=0)
        model.train()
        model.mask_threshold = threshold
        caplog.clear()
        with caplog.at_level(logging.WARNING), EventStorage(start_iter=5) as storage:
            model(batch)
        seen[case] = (
            storage.latest()["sam/empty_mask_share"][0],
            storage.latest()["sam/mask_iou"][0],
            caplog.text,
        )
    share, iou, text = seen["empty"]
    assert (share, iou) == (1.0, 0.0) and "collapsing to empty masks" in text
    share, iou, text = seen["full"]
    assert share == 0.0 and iou == pytest.approx(float(covered.mean()), abs=1e-6)
    assert float(covered.mean()) < 0.1 and "not learning the masks" in text
    share, iou, text = seen["plain"]  # a random model: some overlap, judged by the same numbers
    assert 0.0 <= share <= 1.0 and 0.0 <= iou <= 1.0
    assert ("collapsing" in text) == (share > 0.5)


def test_views_map_pixels_points_and_boxes_alike():
    from sam_prompt.modeling.meta_arch import (
        TEST_AUG_VIEWS,
        unview_image,
        view_boxes,
        view_image,
        view_xy,
    )

    h, w = 5, 7
    image = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)
    for view in TEST_AUG_VIEWS["d4"]:
        viewed = view_image(image, view)
        assert torch.equal(unview_image(viewed, view), image)
        # The centre of pixel (r, c) lands in the pixel that holds its value.
        for r, c in [(0, 0), (1, 5), (4, 6)]:
            x, y = view_xy(torch.tensor([c + 0.5, r + 0.5]), view, (h, w)).tolist()
            assert viewed[0, int(y), int(x)] == image[0, r, c]
        # A box covers, in the view, the pixels its pixels went to.
        box = torch.tensor([[1.0, 2.0, 4.0, 5.0]])  # x 1..4, y 2..5
        mask = torch.zeros(1, h, w)
        mask[0, 2:5, 1:4] = 1
        x0, y0, x1, y1 = view_boxes(box, view, (h, w))[0].int().tolist()
        expected = torch.zeros_like(view_image(mask, view))
        expected[0, y0:y1, x0:x1] = 1
        assert torch.equal(view_image(mask, view), expected)
    assert len(set(TEST_AUG_VIEWS["d4"])) == 8 and TEST_AUG_VIEWS["d4"][0] == (False,) * 3


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_d4_test_aug_makes_predictions_equivariant(tmp_path, prompt):
    from detectron2.structures import Boxes, Instances

    from sam_prompt.modeling.meta_arch import TEST_AUG_VIEWS, view_boxes, view_image, view_xy

    shapes = [
        (polygon_ellipse(30, 20, 12, 7, 16, 0.3), 0),
        (polygon_ellipse(70, 60, 9, 14, 16, 0.0), 1),
        (polygon_ellipse(25, 75, 8, 8, 16, 0.0), 0),
    ]
    record = shapes_image(str(tmp_path / "square.png"), shapes, size=(96, 96), seed=4)
    opts = dict(
        MODEL__SAM__PROMPT__TYPE=prompt,
        MODEL__SAM__FINE_FEATURES=8,
        MODEL__SAM__FINE_REFINE=4,
        MODEL__SAM__FINE_RESCORE=True,
    )
    x = mapped([record], is_train=False, **opts)[0]
    size = tuple(x["image"].shape[-2:])

    def viewed(view):
        inst = x["instances"]
        out = Instances(inst.image_size)
        out.prompt_boxes = Boxes(view_boxes(inst.prompt_boxes.tensor, view, size))
        out.prompt_points = view_xy(inst.prompt_points, view, size)
        out.prompt_labels, out.prompt_classes = inst.prompt_labels, inst.prompt_classes
        return dict(x, image=view_image(x["image"], view), instances=out)

    def predict(model, inputs):
        with torch.no_grad():
            return model([inputs])[0]["instances"]

    for test_aug, should_hold in (("d4", True), ("", False)):
        model = build(MODEL__SAM__TEST_AUG=test_aug, **opts)
        with torch.no_grad():  # trained-like fine features, refinement and rescoring
            for p in model.fine_features.parameters():
                p.normal_(std=0.2)
            model.sam.mask_decoder.iou_prediction_head.layers[-1].bias += 0.5  # scores in (0, 1)
        model.eval()
        # Untrained, its logits are all negative: threshold them at their median.
        with torch.no_grad():
            boxes, points = model._prompt_tensors(x["instances"])
            logits = model._decode(model.embed([x]), boxes, points, model._multimask(points))[0]
        model.mask_threshold = float(logits.flatten().median())
        ref = predict(model, x)
        assert 0.01 < ref.pred_masks.float().mean() < 0.99 and (ref.scores > 0).all()
        agree, scores_close = [], []
        for view in TEST_AUG_VIEWS["d4"][1:]:
            out = predict(model, viewed(view))
            agree.append((out.pred_masks == view_image(ref.pred_masks, view)).float().mean())
            scores_close.append(torch.allclose(out.scores, ref.scores, atol=1e-5))
        if should_hold:  # the same masks and scores, whichever way the image is turned
            assert min(agree) > 0.999 and all(scores_close), (agree, scores_close)
        else:  # a SAM alone is not: the check can fail
            assert min(agree) < 0.999 or not all(scores_close)


def test_test_aug_errors():
    with pytest.raises(ValueError, match="TEST_AUG='d8'"):
        build(MODEL__SAM__TEST_AUG="d8")
    with pytest.raises(ValueError, match="INTERACTIVE_EVAL.MAX_CLICKS 0"):
        build(MODEL__SAM__TEST_AUG="flip", MODEL__SAM__INTERACTIVE_EVAL__MAX_CLICKS=3)
