#!/usr/bin/env python
"""
Peak memory and time of one training step at ViT-B size (width 768, depth 12, prompt width 256):
full fine-tuning vs LoRA on the image encoder (rank 8, on qkv) vs a frozen image encoder.

    python benchmarks/finetune_modes.py [--image-size 1024] [--instances 20] [--device cpu]

Each mode runs in a fresh process; memory is what a GPU would have to hold: the peak during two
training steps (weights, gradients, optimizer state and activations) above the level before the
model is built (CPU: peak resident set, VmHWM; CUDA: the allocator's peak). The step time is that
of the second step. The image size is the encoder input (ViT-B's is
1024); a smaller one keeps the run short on the CPU and is printed with the results.

Last line: lora_vs_full_peak_mem=<x> lora_vs_full_step_time=<y>
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

MODES = {
    "full": [],
    "lora": ["MODEL.SAM.LORA.RANK", 8],
    "frozen": ["MODEL.SAM.FREEZE_IMAGE_ENCODER", True],
}


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(mode, image_size, instances, device):
    import numpy as np
    import torch
    from common import polygon_ellipse, shapes_image
    from detectron2.modeling import build_model

    from sam_prompt import SAMDatasetMapper
    from sam_prompt.config import load_config

    cfg = load_config(
        os.path.join(HERE, "..", "projects", "SAMPrompt", "configs", "sam_instant_test.yaml"),
        [
            "MODEL.DEVICE",
            device,
            "INPUT.RANDOM_FLIP",
            "none",
            "MODEL.SAM.PROMPTS_PER_CHUNK",
            32,
            "MODEL.SAM.CUSTOM.IMAGE_SIZE",
            image_size,
            "MODEL.SAM.CUSTOM.ENCODER_EMBED_DIM",
            768,
            "MODEL.SAM.CUSTOM.ENCODER_DEPTH",
            12,
            "MODEL.SAM.CUSTOM.ENCODER_NUM_HEADS",
            12,
            "MODEL.SAM.CUSTOM.ENCODER_GLOBAL_ATTN_INDEXES",
            [2, 5, 8, 11],
            "MODEL.SAM.CUSTOM.ENCODER_WINDOW_SIZE",
            14,
            "MODEL.SAM.CUSTOM.PROMPT_EMBED_DIM",
            256,
            "MODEL.SAM.CUSTOM.DECODER_MLP_DIM",
            2048,
            *MODES[mode],
        ],
    )
    rng = np.random.default_rng(0)
    shapes = [
        (polygon_ellipse(*rng.uniform(40, image_size - 40, 2), *rng.uniform(10, 30, 2)), 0)
        for _ in range(instances)
    ]
    record = shapes_image(
        os.path.join(tempfile.mkdtemp(), "b.png"), shapes, size=(image_size, image_size)
    )
    batch = [SAMDatasetMapper(cfg, is_train=True)(record)]
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kb("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        losses = model(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    step()  # the first step allocates the optimizer state
    t0 = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (_rss_kb("VmHWM:") - base) / 1024
    print(
        json.dumps(
            {
                "mode": mode,
                "peak_mb": peak,
                "step_s": time.perf_counter() - t0,
                "trainable": sum(p.numel() for p in params),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return measure(args.child, args.image_size, args.instances, args.device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    rows = {}
    print(f"ViT-B-size SAM, {args.image_size}-px input, {args.instances} instances, {args.device}")
    for mode in MODES:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--image-size",
                str(args.image_size),
                "--instances",
                str(args.instances),
                "--device",
                args.device,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = rows[mode]
        print(
            f"{mode:<7} peak {r['peak_mb']:8.0f} MB  step {r['step_s']:6.2f} s  trainable {r['trainable']:,}",
            flush=True,
        )
    full, lora = rows["full"], rows["lora"]
    print(
        f"lora_vs_full_peak_mem={lora['peak_mb'] / full['peak_mb']:.2f} "
        f"lora_vs_full_step_time={lora['step_s'] / full['step_s']:.2f}"
    )


if __name__ == "__main__":
    main()
