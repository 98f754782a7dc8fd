"""SAMDatasetMapper: augmentation, crops, prompts, bad records."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from common import concave_polygon, polygon_ellipse, shapes_image, tiny_cfg
from detectron2.data import transforms as T
from detectron2.structures import polygons_to_bitmask
from scipy import ndimage

from sam_prompt import InvalidRecordError, SAMDatasetMapper
from sam_prompt.prompts import GroundTruthPrompts, interior_point, point_depth
from sam_prompt.transforms import DihedralTransform


def mapper(is_train, cfg=None, **kw):
    args = SAMDatasetMapper.from_config(cfg or tiny_cfg(), is_train)
    args.update(kw)
    return SAMDatasetMapper(**args)


@pytest.fixture
def record(tmp_path):
    return shapes_image(
        str(tmp_path / "img.png"),
        [(polygon_ellipse(60, 50, 30, 20), 0), (concave_polygon(170, 120, 45), 1)],
        size=(192, 256),
    )


def test_eval_keeps_instances_with_tight_boxes(record):
    out = mapper(False)(record)
    inst = out["instances"]
    assert len(inst) == 2
    assert out["image"].shape == (3, 192, 256) and out["image"].dtype == torch.uint8
    assert inst.gt_classes.tolist() == [0, 1]
    # Eval prompts: the tight box of the visible mask, not jittered.
    torch.testing.assert_close(inst.prompt_boxes.tensor, inst.gt_boxes.tensor)
    x0, y0, x1, y1 = inst.gt_boxes.tensor[0].tolist()
    assert abs(x0 - 30) <= 1 and abs(x1 - 90) <= 1 and abs(y0 - 30) <= 1 and abs(y1 - 70) <= 1
    assert "annotations" not in out


def test_train_boxes_are_jittered_within_limits(record):
    cfg = tiny_cfg(INPUT__RANDOM_FLIP="none")
    outs = [mapper(True, cfg)(record)["instances"] for _ in range(20)]
    diffs = torch.stack([(o.prompt_boxes.tensor - o.gt_boxes.tensor).abs() for o in outs])
    assert diffs.max() > 0.5  # jittered
    assert diffs.max() <= 20.0 + 1e-4  # at most BOX_JITTER_MAX_PIXELS
    # std is 10% of the side: the 60-px wide box moves by ~6 px on x, not more than ~4 sigma.
    assert diffs[:, 0, 0].max() < 24


def _inside(points, polygon, h, w):
    mask = polygons_to_bitmask([polygon.ravel()], h, w)
    cols = points[..., 0].long().clamp(0, w - 1)
    rows = points[..., 1].long().clamp(0, h - 1)
    return torch.as_tensor(mask)[rows, cols]


@pytest.mark.parametrize("is_train", [True, False])
def test_points_lie_inside_concave_masks(record, is_train):
    cfg = tiny_cfg(
        MODEL__SAM__PROMPT__TYPE="point",
        MODEL__SAM__PROMPT__NUM_POSITIVE_POINTS=3,
        MODEL__SAM__PROMPT__NUM_NEGATIVE_POINTS=2,
        INPUT__RANDOM_FLIP="none",
    )
    m = mapper(is_train, cfg)
    concave = np.asarray(record["annotations"][1]["segmentation"][0]).reshape(-1, 2)
    for _ in range(10 if is_train else 1):
        inst = m(record)["instances"]
        pts, labels = inst.prompt_points[1], inst.prompt_labels[1]
        assert pts.shape == (5, 2) and labels.tolist() == [1, 1, 1, 0, 0]
        assert _inside(pts[:3], concave, 192, 256).all()
        assert not _inside(pts[3:], concave, 192, 256).any()
        # The box centre of the 'C' lies outside it: a centre point would be wrong.
        box = inst.gt_boxes.tensor[1]
        centre = torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        assert not _inside(centre[None], concave, 192, 256).any()


def test_interior_point_is_farthest_from_boundary():
    mask = np.zeros((20, 40), bool)
    mask[2:18, 2:12] = True  # thin left part
    mask[2:18, 20:38] = True  # wider right part
    x, y = interior_point(mask)
    assert 20 < x < 38 and 2 < y < 18


def test_point_depth_is_one_at_the_mask_middle_and_falls_towards_its_edge():
    masks = np.zeros((2, 3, 40, 60), bool)
    masks[0, 0, 10:30, 10:30] = True  # a 20 x 20 square around the point (20.5, 20.5)
    masks[0, 1] = masks[0, 0]
    masks[0, 1, :, 30:] = True  # merged with a larger neighbour
    masks[0, 2, 25:35, 40:50] = True  # elsewhere
    masks[1, 0] = True  # the whole grid: its border counts as boundary
    depth = point_depth(masks, np.array([[20.5, 20.5], [0.2, 39.9]]))
    assert depth[0, 0] == 1.0
    # 10 pixels deep where the neighbour is 17 deep (as on the whole grid, not the mask's box)
    whole = ndimage.distance_transform_edt(np.pad(masks[0, 1], 1))[1:-1, 1:-1]
    assert depth[0, 1] == pytest.approx(whole[20, 20] / whole.max()) == pytest.approx(10 / 17)
    assert depth[0, 2] == 0.0  # outside its mask
    assert 0 < depth[1, 0] < 0.1 and (depth[1, 1:] == 0).all()  # at the border; empty masks


def test_inner_training_points_are_drawn_by_distance_from_the_boundary():
    mask = np.zeros((40, 60), bool)
    mask[4:36, 6:50] = True
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    box = np.array([[0, 0, 60, 40]])

    def first_points(train_point, n=3000):
        prompts = GroundTruthPrompts("point", train_point=train_point)
        pts = [
            prompts(box, [mask], np.zeros(1), (40, 60), True).prompt_points[0, 0] for _ in range(n)
        ]
        xy = np.floor(np.stack(pts)).astype(int)
        return dist[xy[:, 1], xy[:, 0]]

    uniform, inner = first_points("uniform"), first_points("inner")
    assert (uniform > 0).all() and (inner > 0).all()  # inside the mask
    # Uniform: the mean distance over the mask; inner: weighted by the distance itself.
    d = dist[mask]
    assert abs(uniform.mean() - d.mean()) < 0.05 * d.mean()
    assert abs(inner.mean() - (d**2).sum() / d.sum()) < 0.05 * d.mean()
    assert inner.mean() > 1.3 * uniform.mean()
    # The boundary ring: a fair share of uniform points, few inner ones.
    assert (uniform == 1).mean() > 2 * (inner == 1).mean()
    with pytest.raises(ValueError, match="train point"):
        GroundTruthPrompts("point", train_point="centre")


def test_eval_prompts_identical_across_runs(record):
    cfg = tiny_cfg(MODEL__SAM__PROMPT__TYPE="point", MODEL__SAM__PROMPT__NUM_POSITIVE_POINTS=3)
    a = mapper(False, cfg)(record)["instances"]
    np.random.seed(123)
    b = mapper(False, cfg)(record)["instances"]
    torch.testing.assert_close(a.prompt_points, b.prompt_points, rtol=0, atol=0)
    torch.testing.assert_close(a.prompt_boxes.tensor, b.prompt_boxes.tensor, rtol=0, atol=0)


def test_crop_that_empties_image_is_retried_then_dropped(record):
    # A 40x40 crop of this image usually misses both objects; with retries disabled the
    # mapper must return None (the data loader then draws another image) and count it.
    m = mapper(
        True,
        augmentations=[T.RandomCrop("absolute", (8, 8))],
        crop_retries=0,
    )
    record = dict(record, annotations=record["annotations"][:1])  # one small object
    results = [m(record) for _ in range(30)]
    assert any(r is None for r in results)
    kept = [r for r in results if r is not None]
    assert all(len(r["instances"]) > 0 for r in kept)
    assert m.counts["training images with no instance after 1 crops (another image drawn)"] == sum(
        r is None for r in results
    )
    # With retries, the same crop size finds the object far more often.
    m2 = mapper(True, augmentations=[T.RandomCrop("absolute", (8, 8))], crop_retries=50)
    assert sum(m2(record) is None for _ in range(30)) < sum(r is None for r in results)


def test_crop_drops_instances_outside_and_clips_boxes(record):
    m = mapper(True, augmentations=[_FixedCrop(0, 0, 120, 90)])
    out = m(record)
    inst = out["instances"]
    assert out["image"].shape[-2:] == (90, 120)
    assert len(inst) == 1 and inst.gt_classes.tolist() == [0]
    assert (inst.gt_boxes.tensor[:, 2] <= 120).all() and (inst.gt_boxes.tensor[:, 3] <= 90).all()


class _FixedCrop(T.Augmentation):
    def __init__(self, x0, y0, w, h):
        super().__init__()
        self.x0, self.y0, self.w, self.h = x0, y0, w, h

    def get_transform(self, image):
        return T.CropTransform(self.x0, self.y0, self.w, self.h)


def test_resize_to_encoder_keeps_aspect_and_moves_prompts_with_the_image(tmp_path):
    # The longest side becomes the encoder's 256 px (SAM rounds the other half up: 57.6 -> 58);
    # image, masks and prompts share the transform; the output size stays the record's.
    rec = shapes_image(
        str(tmp_path / "wide.png"), [(polygon_ellipse(300, 40, 40, 20), 0)], size=(90, 400)
    )
    out = mapper(False)(rec)
    inst = out["instances"]
    assert inst.image_size == (58, 256) and tuple(out["image"].shape) == (3, 58, 256)
    assert (out["height"], out["width"]) == (90, 400)
    s = 256 / 400
    x0, _, x1, _ = inst.gt_boxes.tensor[0].tolist()
    assert abs(x0 - 260 * s) <= 1 and abs(x1 - 340 * s) <= 1
    torch.testing.assert_close(inst.prompt_boxes.tensor, inst.gt_boxes.tensor)
    # A small image is scaled up the same way.
    small = shapes_image(
        str(tmp_path / "small.png"), [(polygon_ellipse(50, 40, 20, 10), 0)], size=(80, 128)
    )
    out = mapper(False)(small)
    assert tuple(out["image"].shape) == (3, 160, 256)
    x0, y0, x1, y1 = out["instances"].gt_boxes.tensor[0].tolist()
    assert abs(x0 - 60) <= 2 and abs(x1 - 140) <= 2 and abs(y0 - 60) <= 2 and abs(y1 - 100) <= 2


def test_training_targets_are_rasterised_once_on_the_decoder_grid(record):
    # The tiny SAM's decoder predicts 64 x 64 cells for a 256-px input: stride 4.
    cfg = tiny_cfg(INPUT__RANDOM_FLIP="none")
    out = mapper(True, cfg)(record)
    inst = out["instances"]
    targets = inst.gt_mask_targets
    assert targets.dtype == torch.bool and tuple(targets.shape) == (2, 48, 64)  # 192 x 256 / 4
    full = torch.as_tensor(
        np.stack([polygons_to_bitmask(p, 192, 256) for p in inst.gt_masks.polygons])
    )
    pooled = torch.nn.functional.avg_pool2d(full[:, None].float(), 4)[:, 0] >= 0.5
    disagree = (pooled != targets).float().mean().item()
    assert disagree < 0.01  # the same masks, pooled (boundary cells may round either way)
    assert targets.flatten(1).any(1).all()


# --- bad input ------------------------------------------------------------------------------
def test_missing_image_names_the_file(record):
    bad = dict(record, file_name="/nonexistent/tile_17.png")
    with pytest.raises(InvalidRecordError, match="tile_17.png"):
        mapper(False)(bad)


def test_size_mismatch_names_the_file(record):
    bad = dict(record, height=100)
    with pytest.raises(InvalidRecordError, match=r"img\.png.*but the record says"):
        mapper(True)(bad)


@pytest.mark.parametrize(
    "anno, why",
    [
        ({"segmentation": [[10, 10, 20, 20]], "bbox": [10, 10, 20, 20]}, "2 points"),
        ({"segmentation": [[10, 10, 20, 10, 30, 10]], "bbox": [10, 10, 30, 10]}, "zero-area box"),
        ({"segmentation": [[10, 10, 20, 10, 30, 10]]}, "zero-area polygon"),
    ],
)
def test_bad_annotation_error_or_counted_skip(record, anno, why, sam_log):
    bad = dict(record, annotations=record["annotations"] + [dict(anno, bbox_mode=0, category_id=0)])
    with pytest.raises(InvalidRecordError, match=rf"img\.png.*annotation 2: .*{why}"):
        mapper(False)(bad)
    m = mapper(False, skip_invalid=True)
    out = m(bad)
    assert len(out["instances"]) == 2
    assert sum(m.counts.values()) == 1
    assert "annotation 2" in sam_log.text


def test_d4_draws_the_eight_views_and_the_masks_follow_the_image(record):
    """INPUT.RANDOM_FLIP d4: every rotation and reflection is drawn, about 1 in 8 each, and the
    transformed polygons still cover the object's pixels in the transformed image."""
    m = mapper(True, tiny_cfg(INPUT__RANDOM_FLIP="d4"))
    views = Counter()
    for _ in range(200):
        out = m(record)
        image, inst = out["image"], out["instances"]
        h, w = image.shape[1:]
        for polygons, cls in zip(inst.gt_masks.polygons, inst.gt_classes.tolist()):
            inside = torch.as_tensor(polygons_to_bitmask(polygons, h, w))
            # Class 0 is drawn yellow (red channel 220), class 1 cyan (blue channel 220), on a
            # background of ~90: the mask's pixels (apart from its resized edge) are the object's.
            channel = image[0 if cls == 0 else 2][inside].float()
            assert (channel > 160).float().mean() > 0.9
        box = inst.gt_boxes.tensor[0].round().int().tolist()
        views[(h, w, *box)] += 1
    assert len(views) == 8
    assert min(views.values()) >= 10  # 25 expected; binomial tail below 10: ~1e-4


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_dihedral_transform_maps_pixels_and_points_alike_and_inverts(flags):
    h, w = 5, 7
    t = DihedralTransform(h, w, flags)
    image = np.arange(h * w, dtype=np.int64).reshape(h, w)
    out = t.apply_image(image)
    assert out.shape == ((w, h) if flags[0] else (h, w))
    # Pixel centres (x + 0.5, y + 0.5) land on the centre of the pixel that holds their value.
    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    moved = t.apply_coords(centres)
    cols, rows = np.floor(moved).astype(int).T
    np.testing.assert_array_equal(out[rows, cols], image.ravel())
    np.testing.assert_array_equal(t.inverse().apply_image(out), image)
    np.testing.assert_allclose(t.inverse().apply_coords(moved), centres)
    x0, y0, x1, y1 = t.apply_box(np.array([[1.0, 2.0, 4.0, 3.0]]))[0]  # 3 wide, 1 tall
    assert (x1 - x0, y1 - y0) == ((1, 3) if flags[0] else (3, 1))


def test_unknown_random_flip_is_refused():
    with pytest.raises(ValueError, match="INPUT.RANDOM_FLIP='diagonal'.*'d4'"):
        mapper(True, tiny_cfg(INPUT__RANDOM_FLIP="diagonal"))
