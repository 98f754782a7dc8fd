"""Corrective clicks: iterative training rounds, the interactive evaluation and its metrics."""

import json
import os

import numpy as np
import pytest
import torch
from common import mapped, small_dataset, tiny_cfg
from detectron2.modeling import build_model
from test_model import records  # noqa: F401  (fixture)

from sam_prompt.modeling.clicks import corrective_click, interactive_metrics, sample_clicks


def test_corrective_click_is_inside_the_largest_error_region():
    gt = np.zeros((40, 60), bool)
    gt[10:30, 10:30] = True  # a 20 x 20 object
    click, label = corrective_click(np.zeros_like(gt), gt)  # nothing predicted: click its middle
    assert label == 1 and abs(click[0] - 20) <= 1 and abs(click[1] - 20) <= 1
    pred = gt.copy()
    pred[5:35, 38:58] = True  # a larger false positive beside it
    pred[12:14, 12:14] = False  # and a small hole
    click, label = corrective_click(pred, gt)
    assert label == 0 and 38 <= click[0] <= 58 and 5 <= click[1] <= 35
    assert abs(click[0] - 48) <= 1 and 14 <= click[1] <= 26  # its interior: 10 px from its edges
    assert corrective_click(gt, gt) is None


def test_noc_and_miou_on_a_known_case():
    ious = np.array(
        [
            [0.5, 0.86, 0.91] + [0.95] * 17,  # 85% at click 2, 90% at click 3
            [0.2, 0.3, 0.4] + [0.5] * 17,  # never
        ]
    )
    m = interactive_metrics(ious)
    assert m["NoC@85"] == pytest.approx((2 + 20) / 2) and m["NoC@90"] == pytest.approx((3 + 20) / 2)
    assert m["mIoU@1"] == pytest.approx(35.0) and m["mIoU@3"] == pytest.approx(65.5)
    assert m["never@90"] == pytest.approx(50.0)


def test_sampled_clicks_are_errors_with_their_label():
    target = torch.zeros((3, 8, 8), dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    pred = torch.zeros_like(target)
    pred[1] = target[1]
    pred[1, 0, 0] = True  # one false positive pixel
    pred[2] = target[2]  # exact
    coords, labels = sample_clicks(
        pred, target, stride=4, generator=torch.Generator().manual_seed(0)
    )
    x, y = coords[0, 0] / 4 - 0.5
    assert labels[0, 0] == 1 and target[0, int(y), int(x)]
    assert labels[1, 0] == 0 and coords[1, 0].tolist() == [2.0, 2.0]  # the false positive
    assert labels[2, 0] == -1  # nothing to correct: a padding click


def test_iterative_training_rounds(records):  # noqa: F811
    opts = dict(
        MODEL__SAM__ITERATIVE__ENABLED=True,
        MODEL__SAM__ITERATIVE__CLICK_ROUNDS=3,
        MODEL__SAM__ITERATIVE__MASK_ONLY_ROUNDS=2,
        MODEL__SAM__PROMPTS_PER_CHUNK=16,
    )
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**opts))
    model.train()
    seen = []  # (points per prompt, mask prompt given) at each decoder call
    model.sam.prompt_encoder.register_forward_hook(
        lambda m, args, kw, out: seen.append(
            (0 if kw["points"] is None else kw["points"][0].shape[1], kw["masks"] is not None)
        ),
        with_kwargs=True,
    )
    batch = mapped(records[:1])  # 4 instances: one chunk
    losses = model(batch)
    assert len(seen) == 1 + 3 + 2
    assert [s[0] for s in seen] == sorted(s[0] for s in seen) and seen[-1][
        0
    ] == 3  # one click a round
    assert not seen[0][1] and all(s[1] for s in seen[1:])  # previous logits as mask prompt
    sum(losses.values()).backward()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        losses = model(mapped(records[:1]))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append(sum(losses.values()).item())
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5])


def test_interactive_evaluation_one_encoder_call_per_image(tmp_path):
    from sam_prompt.engine import Trainer

    name = small_dataset(tmp_path)
    cfg = tiny_cfg(
        DATASETS__TEST=(name,),
        OUTPUT_DIR=str(tmp_path / "out"),
        MODEL__SAM__INTERACTIVE_EVAL__MAX_CLICKS=5,
    )
    model = build_model(cfg)
    calls = []
    model.sam.image_encoder.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    results = Trainer.test(cfg, model)
    assert sum(calls) == 2  # two images, each encoded once for the first prompt and every click
    m = results["interactive"]
    assert m["instances"] == 7 and 1 <= m["NoC@90"] <= 5 and 0 <= m["mIoU@1"] <= 100
    assert "segm" in results  # COCO evaluation of the first prompt runs beside it
    with open(tmp_path / "out" / "metrics.json") as f:
        assert "interactive/NoC@90" in json.loads(f.readlines()[-1])
    assert os.path.getsize(tmp_path / "out" / "interactive_miou.png") > 1000
