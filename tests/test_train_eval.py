"""End to end: training through the Trainer, COCO evaluation, the copied-in entry point, resume."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from common import (
    REPO,
    polygon_ellipse,
    register,
    run_train_net,
    shapes_image,
    small_dataset,
    tiny_cfg,
    two_image_dataset,
)
from detectron2.data import DatasetCatalog, MetadataCatalog

from sam_prompt.engine import Trainer, instance_repeat_factors
from sam_prompt.modeling import copy_single_mask_output


@pytest.mark.slow
def test_overfit_two_images_reaches_segm_ap_80(tmp_path):
    records = two_image_dataset(str(tmp_path))
    DatasetCatalog.register("overfit_two", lambda: records)
    MetadataCatalog.get("overfit_two").set(thing_classes=["yellow", "cyan"])
    cfg = tiny_cfg(
        DATASETS__TRAIN=("overfit_two",),
        DATASETS__TEST=("overfit_two",),
        SOLVER__MAX_ITER=300,
        SOLVER__BASE_LR=1e-3,
        SEED=0,
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    assert results["segm"]["AP"] >= 80, results
    # Boxes are derived from the predicted masks: good masks give good boxes too.
    assert results["bbox"]["AP"] >= 60, results
    # What COCOEvaluator wrote can be read back.
    with open(tmp_path / "out" / "coco_instances_results.json") as f:
        preds = json.load(f)
    assert len(preds) == 7 and {p["category_id"] for p in preds} == {0, 1}


def test_instance_repeat_sampler_draws_images_by_their_instances(tmp_path):
    records = two_image_dataset(str(tmp_path))  # 4 and 3 instances
    shapes = [
        (polygon_ellipse(20 + 30 * (i % 8), 20 + 30 * (i // 8), 10, 8), i % 2) for i in range(24)
    ]
    records.append(shapes_image(str(tmp_path / "dense.png"), shapes, size=(120, 256), seed=3))
    # 2 prompts per image: the dense image repeats 24 / 2 = 12 times, the others once.
    torch.testing.assert_close(instance_repeat_factors(records, 2), torch.tensor([2.0, 1.5, 12.0]))
    with pytest.raises(ValueError, match="MAX_INSTANCES_PER_IMAGE, which is 0"):
        instance_repeat_factors(records, 0)
    cfg = tiny_cfg(
        DATASETS__TRAIN=(register("repeat_three", records),),
        DATALOADER__SAMPLER_TRAIN="InstanceRepeatFactor",
        DATALOADER__NUM_WORKERS=0,
        MODEL__SAM__MAX_INSTANCES_PER_IMAGE=2,
        SOLVER__IMS_PER_BATCH=1,
        SEED=0,
    )
    draws = []
    for batch in Trainer.build_train_loader(cfg):
        draws.append(os.path.basename(batch[0]["file_name"]))
        if len(draws) == 155:
            break
    # Expected shares 2 : 1.5 : 12 (a.png, b.png, dense.png) of 15.5.
    assert 0.65 < draws.count("dense.png") / len(draws) < 0.9
    assert draws.count("a.png") > draws.count("b.png") > 0


def _decoder_outputs(decoder):
    tokens = decoder.mask_tokens.weight
    mlps = [
        torch.cat([p.flatten() for p in m.parameters()]) for m in decoder.output_hypernetworks_mlps
    ]
    iou = decoder.iou_prediction_head.layers[-1]
    return tokens, mlps, torch.cat([iou.weight, iou.bias[:, None]], 1)


def test_multimask_outputs_copied_from_the_single_mask_output():
    sam = Trainer.build_model(tiny_cfg()).sam
    tokens, mlps, iou = _decoder_outputs(sam.mask_decoder)
    before = (tokens.detach().clone(), [m.detach().clone() for m in mlps], iou.detach().clone())
    copy_single_mask_output(sam.mask_decoder)
    tokens, mlps, iou = _decoder_outputs(sam.mask_decoder)
    torch.testing.assert_close(tokens[0], before[0][0])  # the single mask's output is kept
    torch.testing.assert_close(mlps[0], before[1][0])
    for k in (1, 2, 3):
        assert 0.005 < (tokens[k] - tokens[0]).norm() / tokens[0].norm() < 0.02
        assert 0.005 < (mlps[k] - mlps[0]).norm() / mlps[0].norm() < 0.02
        torch.testing.assert_close(iou[k], before[2][k])  # the IoU head is left as it was
        assert (before[0][k] - before[0][0]).norm() / before[0][0].norm() > 0.5  # was unrelated
    assert not torch.equal(tokens[1], tokens[2])  # free to diverge
    # One point: the three masks are now (almost) the single mask.
    embedding = torch.randn(
        1, sam.mask_decoder.transformer_dim, *sam.prompt_encoder.image_embedding_size
    )
    points = (torch.tensor([[[20.0, 30.0]]]), torch.ones(1, 1, dtype=torch.int))
    sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
    with torch.no_grad():
        logits, _ = sam.mask_decoder(
            embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
        )
        single, _ = sam.mask_decoder(
            embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
        )
    scale = single.abs().mean()
    assert ((logits - single).abs().mean(dim=(2, 3)) < 0.1 * scale).all()


def test_multimask_init_applies_when_training_starts_not_when_it_resumes(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    name = small_dataset(tmp_path)
    box = tiny_cfg(DATASETS__TRAIN=(name,), DATASETS__TEST=())
    model = Trainer.build_model(box)
    weights = str(tmp_path / "box.pth")
    DetectionCheckpointer(model, str(tmp_path)).save("box")
    loaded = model.sam.mask_decoder.mask_tokens.weight.detach().clone()
    assert (loaded[1] - loaded[0]).norm() > 0.5 * loaded[0].norm()
    opts = dict(
        DATASETS__TRAIN=(name,),
        DATASETS__TEST=(),
        OUTPUT_DIR=str(tmp_path / "run"),
        MODEL__WEIGHTS=weights,
        MODEL__SAM__PROMPT__TYPE="point",
        MODEL__SAM__MULTIMASK_INIT="single",
        SOLVER__MAX_ITER=2,
        SOLVER__BASE_LR=0.0,
    )
    trainer = Trainer(tiny_cfg(**opts))
    trainer.resume_or_load(resume=True)  # nothing to resume: starts from MODEL.WEIGHTS
    tokens = trainer.model.sam.mask_decoder.mask_tokens.weight.detach()
    torch.testing.assert_close(tokens[0], loaded[0])
    assert (tokens[1:] - tokens[0]).norm(dim=1).max() < 0.02 * tokens[0].norm()
    # A checkpoint of this run whose multimask outputs differ: resuming keeps them as saved.
    with torch.no_grad():
        trainer.model.sam.mask_decoder.mask_tokens.weight[1:] = loaded[1:]
    trainer.iter = 1
    trainer.checkpointer.save("model_0000001")
    trainer = Trainer(tiny_cfg(**opts))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    torch.testing.assert_close(trainer.model.sam.mask_decoder.mask_tokens.weight.detach(), loaded)


def test_resume_restores_the_optimizer_state(tmp_path, sam_log):
    name = small_dataset(tmp_path)
    opts = dict(
        DATASETS__TRAIN=(name,),
        DATASETS__TEST=(),
        OUTPUT_DIR=str(tmp_path / "run"),
        SOLVER__MAX_ITER=3,
        SOLVER__AMP__ENABLED=True,  # the inner trainer that holds the state is ours
    )
    trainer = Trainer(tiny_cfg(**opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    state = trainer.optimizer.state_dict()["state"]
    assert state and any(s["exp_avg"].abs().max() > 0 for s in state.values())
    resumed = Trainer(tiny_cfg(**opts))
    assert not resumed.optimizer.state_dict()["state"]
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    got = resumed.optimizer.state_dict()["state"]
    assert got.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(got[k]["exp_avg"], state[k]["exp_avg"])
        torch.testing.assert_close(got[k]["exp_avg_sq"], state[k]["exp_avg_sq"])

    # A checkpoint without that state (an older SAMPrompt's) still resumes, with a warning.
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)
    del ckpt["trainer"]["_trainer"]
    torch.save(ckpt, tmp_path / "run" / "model_final.pth")
    old = Trainer(tiny_cfg(**opts))
    old.resume_or_load(resume=True)
    assert old.start_iter == 3 and not old.optimizer.state_dict()["state"]
    assert "holds no optimizer state" in sam_log.text


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(MODEL__SAM__MULTIMASK_INIT="copy"), "expected '' or 'single'"),
        (dict(MODEL__SAM__MULTIMASK_INIT="single"), "never decodes"),  # box prompts
        (
            dict(
                MODEL__SAM__MULTIMASK_INIT="single",
                MODEL__SAM__PROMPT__TYPE="point",
                MODEL__SAM__PROMPT__NUM_POSITIVE_POINTS=2,
            ),
            "never decodes",
        ),
        (
            dict(
                MODEL__SAM__MULTIMASK_INIT="single",
                MODEL__SAM__PROMPT__TYPE="point",
                MODEL__SAM__MULTIMASK_FOR_SINGLE_POINT=False,
            ),
            "never decodes",
        ),
    ],
)
def test_multimask_init_refused_where_no_multimask_is_decoded(tmp_path, opts, match):
    name = small_dataset(tmp_path)
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_cfg(DATASETS__TRAIN=(name,), OUTPUT_DIR=str(tmp_path), **opts))


@pytest.mark.slow
def test_copied_project_trains_resumes_and_evaluates(tmp_path):
    fork = tmp_path / "fork"
    shutil.copytree(
        os.path.join(REPO, "projects", "SAMPrompt"),
        fork / "projects" / "SAMPrompt",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (fork / "tools").mkdir()
    shutil.copy(os.path.join(REPO, "tools", "train_net.py"), fork / "tools")
    cfg = "projects/SAMPrompt/configs/sam_instant_test.yaml"
    common = ["DATASETS.ROOT", str(tmp_path / "data"), "OUTPUT_DIR", "out"]

    out = run_train_net(
        fork, "--config-file", cfg, *common, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"
    )
    assert f"SAMPrompt from {fork / 'projects' / 'SAMPrompt' / 'sam_prompt'}" in out
    assert (fork / "out" / "model_final.pth").exists()
    assert "copypaste: Task: segm" in out
    with open(fork / "out" / "metrics.json") as f:
        metrics = [json.loads(l) for l in f]
    assert all(np.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)

    # Interrupted runs resume from their last checkpoint.
    out = run_train_net(fork, "--config-file", cfg, "--resume", *common, "SOLVER.MAX_ITER", "6")
    assert "Starting training from iteration 4" in out

    evaluate = [fork, "--config-file", cfg, "--eval-only"]
    weights = ["MODEL.WEIGHTS", "out/model_final.pth"]
    out = run_train_net(*evaluate, *common, *weights)
    assert "copypaste: Task: segm" in out and "Starting training" not in out
    # Weights trained with boxes are not evaluated with points (exit code 0, meaningless AP).
    out = run_train_net(*evaluate, "--prompt", "point", *common, *weights, fails=True)
    assert "CheckpointError: These weights were trained with box prompts only" in out
    assert "copypaste: Task: segm" not in out
