"""
On a CUDA GPU, where users train: the same losses, gradients and predictions as on the CPU, mixed
precision (float16 with a gradient scaler, bfloat16) close to float32, and the training entry point
with SOLVER.AMP.ENABLED trained, resumed and evaluated. Skipped on machines without CUDA.
"""

import functools
import json

import numpy as np
import pytest
import torch
from common import (
    REPO,
    chunking_dataset,
    mapped,
    register,
    run_train_net,
    tiny_cfg,
    training_losses,
    two_image_dataset,
)
from detectron2.modeling import build_model

from sam_prompt.engine import MixedPrecisionTrainer, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return chunking_dataset(str(tmp_path_factory.mktemp("cuda_data")))


def build(device, seed=0, **overrides):
    torch.manual_seed(seed)  # weights are initialised on the CPU, then moved: equal on both
    return build_model(tiny_cfg(MODEL__DEVICE=device, **overrides))


def step(model, batch, dtype=None, scale=1.0):
    """Losses and gradients of one training step, under autocast when ``dtype`` is given."""
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        losses = model(batch)
    (sum(losses.values()) * scale).backward()
    grads = {
        n: (p.grad.float() / scale).cpu() for n, p in model.named_parameters() if p.grad is not None
    }
    return torch.stack([v.float() for v in losses.values()]).detach().cpu(), grads


def close_grads(got, want, cos_min, norm_tol):
    assert set(got) == set(want)
    for k in want:
        a, b = got[k].flatten(), want[k].flatten()
        if b.norm() > 1e-6:
            assert torch.nn.functional.cosine_similarity(a, b, dim=0) > cos_min, k
            assert abs(a.norm() / b.norm() - 1) < norm_tol, k


def test_box_step_on_cuda_equals_the_cpu_step_chunked_or_not(records):
    batch = mapped(records)
    l_cpu, g_cpu = step(build("cpu", MODEL__SAM__PROMPTS_PER_CHUNK=7), batch)
    for chunk in (7, 0):
        l_gpu, g_gpu = step(build("cuda", MODEL__SAM__PROMPTS_PER_CHUNK=chunk), batch)
        torch.testing.assert_close(l_gpu, l_cpu, rtol=1e-3, atol=1e-4)
        close_grads(g_gpu, g_cpu, cos_min=0.999, norm_tol=0.01)


def test_point_step_on_cuda_chunked_equals_one_shot(records):
    extra = dict(MODEL__SAM__PROMPT__TYPE="point")
    batch = mapped(records, **extra)
    out = {
        chunk: step(build("cuda", MODEL__SAM__PROMPTS_PER_CHUNK=chunk, **extra), batch)
        for chunk in (7, 0)
    }
    (l7, g7), (l0, g0) = out[7], out[0]
    assert torch.isfinite(l7).all()
    torch.testing.assert_close(l7, l0, rtol=1e-3, atol=1e-4)
    close_grads(g7, g0, cos_min=0.999, norm_tol=0.01)


def test_iterative_training_on_cuda_learns_one_image(records):
    # Clicks are drawn on the device, in chunks: a loss that falls, not one equal to the CPU's.
    model = build(
        "cuda",
        MODEL__SAM__PROMPTS_PER_CHUNK=4,
        MODEL__SAM__ITERATIVE__ENABLED=True,
        MODEL__SAM__ITERATIVE__CLICK_ROUNDS=3,
    ).train()
    batch = mapped(records[:1])
    history = training_losses(model, lambda: batch)
    assert np.isfinite(history).all()
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_autocast_on_cuda_stays_close_to_fp32(records, dtype):
    batch = mapped(records)
    l32, g32 = step(build("cuda", MODEL__SAM__PROMPTS_PER_CHUNK=7), batch)
    # float16 gradients are scaled up before backward, as the gradient scaler does.
    scale = 2.0**12 if dtype == torch.float16 else 1.0
    l16, g16 = step(build("cuda", MODEL__SAM__PROMPTS_PER_CHUNK=7), batch, dtype, scale)
    torch.testing.assert_close(l16, l32, rtol=0.05, atol=0.01)
    close_grads(g16, g32, cos_min=0.95, norm_tol=0.25)


def test_inference_on_cuda_matches_the_cpu(records):
    batch = mapped(records, is_train=False)
    outs = {}
    for device in ("cpu", "cuda"):
        model = build(device, MODEL__SAM__PROMPTS_PER_CHUNK=16, MODEL__SAM__TEST_AUG="d4").eval()
        with torch.no_grad():
            outs[device] = [o["instances"].to("cpu") for o in model(batch)]
    for a, b in zip(outs["cpu"], outs["cuda"]):
        assert a.pred_masks.shape == b.pred_masks.shape and len(a) > 0
        agree = (a.pred_masks == b.pred_masks).float().mean()
        assert agree > 0.999, agree
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-3, atol=1e-3)
        assert torch.equal(a.pred_classes, b.pred_classes)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_trainer_amp_on_cuda_learns_and_resumes_its_scaler(tmp_path, precision):
    name = register(f"cuda_overfit_{precision}", two_image_dataset(str(tmp_path)))
    cfg = tiny_cfg(
        MODEL__DEVICE="cuda",
        DATASETS__TRAIN=(name,),
        DATASETS__TEST=(name,),
        SOLVER__MAX_ITER=300,
        SOLVER__BASE_LR=1e-3,
        SOLVER__CHECKPOINT_PERIOD=150,
        SOLVER__AMP__ENABLED=True,
        SOLVER__AMP__PRECISION=precision,
        SEED=0,
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, MixedPrecisionTrainer)
    assert trainer._trainer.grad_scaler.is_enabled() == (precision == "float16")
    dtypes = []
    trainer.model.sam.mask_decoder.register_forward_hook(
        lambda m, i, o: dtypes.append(o[0].dtype) if m.training else None
    )
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert set(dtypes) == {getattr(torch, precision)}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # The same bar as the float32 CPU run of test_train_eval.py.
    results = Trainer.test(cfg, trainer.model)
    assert results["segm"]["AP"] >= 80, results

    # The scaler's state is checkpointed and restored on resume.
    if precision == "float16":
        scale = trainer._trainer.grad_scaler.get_scale()
        resumed = Trainer(cfg.clone())
        assert resumed._trainer.grad_scaler.get_scale() != scale or scale == 2.0**16
        resumed.resume_or_load(resume=True)
        assert resumed.start_iter == 300
        assert resumed._trainer.grad_scaler.get_scale() == scale


def test_train_net_on_cuda_with_amp_trains_resumes_and_evaluates(tmp_path):
    run = functools.partial(run_train_net, REPO)

    cfg = "projects/SAMPrompt/configs/sam_instant_test.yaml"
    common = ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)]
    common += ["DATASETS.ROOT", str(tmp_path / "data")]
    out = run(
        "--config-file", cfg, *common, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"
    )
    assert "copypaste: Task: segm" in out
    with open(tmp_path / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    assert all(np.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)
    out = run("--config-file", cfg, "--resume", *common, "SOLVER.MAX_ITER", "6")
    assert "Starting training from iteration 4" in out
