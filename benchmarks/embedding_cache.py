#!/usr/bin/env python
"""
Training with a frozen image encoder: epoch 1 computes every image embedding, epoch 2 takes them
from MODEL.SAM.EMBEDDING_CACHE. The model is ViT-B's size (encoder width 768, depth 12; decoder
width 256) at --image-size (1024, ViT-B's own input, by default; 512 runs 4x faster and gains less,
the encoder's share of a step being smaller); --objects per image (30; the decoder's cost grows
with them, the encoder's does not); the training step as in training, on the CPU, with --chunk
prompts per chunk (4: on the CPU, without a caching allocator, glibc serves blocks over 32 MB with
mmap and unmaps them when freed, so each larger tensor is faulted into memory anew; a chunk of 16
prompts of the ViT-B-size decoder makes 64-128 MB tensors, and its step spent a quarter of its CPU
time in the kernel; a chunk of 4 keeps them under that size).

    python benchmarks/embedding_cache.py [--images 6] [--image-size 1024] [--objects 30]
        [--chunk 4] [--cache memory|FOLDER]

The line before the last gives the floor of that ratio counted in FLOPs (torch.utils.flop_counter:
the decoder's training step over the encoder's forward plus that step, on the first image), which
no implementation of SAM's decoder on any device goes below. Last line:
epoch2_vs_epoch1=<wall time of epoch 2 / epoch 1>
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from common import polygon_ellipse, shapes_image, tiny_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from sam_prompt import SAMDatasetMapper  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--cache", default="memory")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=4, help="MODEL.SAM.PROMPTS_PER_CHUNK")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = tiny_cfg(
        MODEL__SAM__CUSTOM__IMAGE_SIZE=args.image_size,
        MODEL__SAM__CUSTOM__ENCODER_EMBED_DIM=768,
        MODEL__SAM__CUSTOM__ENCODER_DEPTH=12,
        MODEL__SAM__CUSTOM__ENCODER_NUM_HEADS=12,
        MODEL__SAM__CUSTOM__ENCODER_GLOBAL_ATTN_INDEXES=[2, 5, 8, 11],
        MODEL__SAM__CUSTOM__ENCODER_WINDOW_SIZE=14,
        MODEL__SAM__CUSTOM__PROMPT_EMBED_DIM=256,
        MODEL__SAM__CUSTOM__DECODER_MLP_DIM=2048,
        MODEL__SAM__FREEZE_IMAGE_ENCODER=True,
        MODEL__SAM__EMBEDDING_CACHE=args.cache,
        MODEL__SAM__PROMPTS_PER_CHUNK=args.chunk,
        INPUT__RANDOM_FLIP="none",
    )
    folder = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    records = []
    for i in range(args.images):
        shapes = [
            (polygon_ellipse(*rng.uniform(40, args.image_size - 40, 2), *rng.uniform(8, 25, 2)), 0)
            for _ in range(args.objects)
        ]
        records.append(
            shapes_image(
                os.path.join(folder, f"{i}.png"), shapes, size=(args.image_size,) * 2, seed=i
            )
        )
    mapper = SAMDatasetMapper(cfg, is_train=True)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for epoch in range(2):
        start = time.perf_counter()
        for i in range(0, len(records), 2):
            losses = model([mapper(r) for r in records[i : i + 2]])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        times.append(time.perf_counter() - start)
        print(
            f"epoch {epoch + 1}: {times[-1]:.2f} s ({len(records)} images; cache hits so far "
            f"{model.embedding_cache.hits}, misses {model.embedding_cache.misses})",
            flush=True,
        )
    from torch.utils.flop_counter import FlopCounterMode

    batch = [mapper(records[0])]
    with torch.no_grad(), FlopCounterMode(display=False) as count:
        embeddings = model.sam.image_encoder(model.preprocess_image(batch))
    encoder = count.get_total_flops()
    with FlopCounterMode(display=False) as count:
        sum(model.losses(batch, embeddings).values()).backward()
    decoder = count.get_total_flops()
    print(
        f"FLOPs: encoder forward {encoder / 1e9:.0f} G per image, decoder training step "
        f"{decoder / 1e9 / len(batch[0]['instances']):.1f} G per prompt: floor of the ratio "
        f"{decoder / (encoder + decoder):.3f}"
    )
    print(f"epoch2_vs_epoch1={times[1] / times[0]:.3f}")


if __name__ == "__main__":
    main()
