#!/usr/bin/env python
"""
Peak memory and throughput of a SAMPrompt training step versus instances per image, with chunked
decoding (MODEL.SAM.PROMPTS_PER_CHUNK) and with one-shot decoding (all prompts at once).

    python benchmarks/train_memory.py [--device cuda] [--decoder tiny|vit_b] [--chunk N]
        [--counts 50 100 200 400]

Memory: each configuration runs in a fresh process, and memory is the peak above the level before
the step: on CUDA from torch.cuda's allocator statistics; on the CPU from the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs), with glibc told to return large blocks
to the system at once (MALLOC_MMAP_THRESHOLD_) so that freed tensors do not hide later peaks.
Throughput: one process per instance count, with glibc's default allocator settings, times the
chunked and the one-shot step alternately on the same model and batch (--steps of each, in the
order ABBA...) and keeps the median of the ratios of neighbouring steps: the machine's speed
drifting between processes or over a run (on a shared machine, easily 10%) then falls on both modes
alike instead of on their ratio. The last line is

    peak_mem_ratio_400_vs_50=<chunked> one_shot_ratio=<one-shot> throughput_chunked_vs_one_shot=<x>
(one-shot ratios over the counts where one-shot decoding was run; --iterative prints the
iterative rounds' peak memory against the single-prompt step on the line before)

where the throughput ratio is the lowest over the instance counts.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# The decoder at ViT-B size (256 channels, 64 x 64 embedding of a 1024-px input) behind a tiny
# encoder, so that the step measures the decoding that chunking bounds.
VIT_B_DECODER = [
    "MODEL.SAM.CUSTOM.IMAGE_SIZE",
    1024,
    "MODEL.SAM.CUSTOM.PROMPT_EMBED_DIM",
    256,
    "MODEL.SAM.CUSTOM.DECODER_MLP_DIM",
    2048,
]


def measure(n, chunks, device, steps, image_size, iterative=False, decoder="tiny"):
    """
    Run in a child process, printed as JSON. With ``steps`` 0: the peak memory of one step at
    ``chunks[0]`` prompts per chunk; else the median step time at each of ``chunks`` (0 = one-shot),
    their steps alternating.
    """
    import statistics
    import tempfile

    import numpy as np
    import torch
    from detectron2.modeling import build_model
    from PIL import Image

    from sam_prompt import SAMDatasetMapper
    from sam_prompt.config import load_config

    cfg = load_config(
        os.path.join(HERE, "..", "projects", "SAMPrompt", "configs", "sam_instant_test.yaml"),
        [
            "MODEL.DEVICE",
            device,
            "MODEL.SAM.PROMPTS_PER_CHUNK",
            chunks[0],
            "INPUT.RANDOM_FLIP",
            "none",
            "MODEL.SAM.ITERATIVE.ENABLED",
            iterative,
            *(VIT_B_DECODER if decoder == "vit_b" else []),
        ],
    )

    # One image with n small elliptic objects on a grid.
    side = int(np.ceil(np.sqrt(n)))
    cell = image_size / side
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, (image_size, image_size, 3), dtype=np.uint8)
    annos = []
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    for i in range(n):
        cx, cy = (i % side + 0.5) * cell, (i // side + 0.5) * cell
        poly = np.stack([cx + 0.35 * cell * np.cos(t), cy + 0.3 * cell * np.sin(t)], 1)
        annos.append(
            {
                "segmentation": [poly.ravel().tolist()],
                "bbox": [*poly.min(0), *poly.max(0)],
                "bbox_mode": 0,
                "category_id": 0,
            }
        )
    path = os.path.join(tempfile.mkdtemp(), "bench.png")
    Image.fromarray(img).save(path)
    record = {
        "file_name": path,
        "height": image_size,
        "width": image_size,
        "image_id": 0,
        "annotations": annos,
    }
    mapper = SAMDatasetMapper(cfg, is_train=True)
    batch = [mapper(record)]
    assert len(batch[0]["instances"]) == n

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()

    def step(chunk):
        model.prompts_per_chunk = chunk
        losses = model(batch)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    if not steps:  # a memory-only run
        if device == "cuda":
            step(chunks[0])  # warm-up (cuDNN, allocator)
            sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step(chunks[0])
            sync()
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            base = _rss_kb("VmRSS:")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set (VmHWM)
            step(chunks[0])
            peak_mb = (_rss_kb("VmHWM:") - base) / 1024
        print(json.dumps({"peak_mb": peak_mb}))
        return
    for chunk in chunks:  # warm-up
        step(chunk)
    times = {chunk: [] for chunk in chunks}
    for i in range(steps):
        for chunk in chunks if i % 2 == 0 else chunks[::-1]:  # ABBA: linear drift cancels
            sync()
            t0 = time.perf_counter()
            step(chunk)
            sync()
            times[chunk].append(time.perf_counter() - t0)
    result = {str(c): statistics.median(v) for c, v in times.items()}
    if len(chunks) == 2:  # one-shot / chunked step time, of steps that are neighbours in time
        chunked, one_shot = times[chunks[0]], times[chunks[1]]
        result["ratio"] = statistics.median(o / c for c, o in zip(chunked, one_shot))
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="prompts per chunk (default: 64 for the tiny decoder, 32 (MODEL.SAM.PROMPTS_PER_CHUNK's "
        "default) for vit_b). A chunk has a fixed cost, the tiny decoder's ~10 ms (SAM's decoder is "
        "~1,600 operator calls forward, twice that backward) against ~3 ms per prompt: chunks of 32 "
        "ran at 0.92 of one-shot decoding at 100 instances, chunks of 64 at 0.93-0.96 (two runs)",
    )
    parser.add_argument(
        "--steps", type=int, default=9, help="timed steps of each mode (their median is kept)"
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--iterative",
        action="store_true",
        help="also measure iterative training (MODEL.SAM.ITERATIVE: 8 click + 2 mask-only rounds) "
        "at the same chunk size",
    )
    parser.add_argument(
        "--decoder",
        choices=("tiny", "vit_b"),
        default="tiny",
        help="vit_b: the mask decoder at ViT-B size (256 channels, 64 x 64 embedding, 1024-px input)",
    )
    parser.add_argument(
        "--one-shot-max",
        type=int,
        default=None,
        help="one-shot decoding only up to this many instances (default: all; 100 for --decoder "
        "vit_b, where one-shot decoding takes ~111 MB per prompt)",
    )
    parser.add_argument("--child", nargs="+", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decoder == "vit_b":
        args.image_size = 1024
    if args.chunk is None:
        args.chunk = 32 if args.decoder == "vit_b" else 64
    if args.child:
        n, iterative, *chunks = args.child
        return measure(
            n, chunks, args.device, args.steps, args.image_size, bool(iterative), args.decoder
        )
    one_shot_max = args.one_shot_max or (100 if args.decoder == "vit_b" else max(args.counts))

    env_time = dict(os.environ, PYTHONWARNINGS="ignore")
    # Memory and time from separate processes: the small mmap threshold that makes the peak
    # resident set exact also turns every freed block into page faults, a cost that glibc's
    # default (adaptive) threshold does not have and that would be charged to the configuration
    # doing more allocations.
    env_mem = dict(env_time, MALLOC_MMAP_THRESHOLD_="65536")

    def child(n, iterative, chunks, steps, env):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--steps",
                str(steps),
                "--image-size",
                str(args.image_size),
                "--decoder",
                args.decoder,
                "--child",
                str(n),
                str(int(iterative)),
                *map(str, chunks),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            sys.exit(f"configuration n={n} chunks={chunks} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows, pair_ratios = {}, {}
    print(
        f"device={args.device} chunk={args.chunk} (0 = one-shot) image={args.image_size}px "
        f"decoder={args.decoder} (step s: median of {args.steps} alternating steps)"
    )
    print(f"{'instances':>9} {'mode':>9} {'peak MB':>9} {'step s':>8} {'inst/s':>8}")
    for n in args.counts:
        chunks = [args.chunk] + ([0] if n <= one_shot_max else [])
        timed = child(n, 0, chunks, args.steps, env_time)
        if "ratio" in timed:  # one-shot step time / chunked step time, paired
            pair_ratios[n] = timed.pop("ratio")
        times = {(int(c), 0): t for c, t in timed.items()}
        if args.iterative:
            times[(args.chunk, 1)] = child(n, 1, [args.chunk], args.steps, env_time)[
                str(args.chunk)
            ]
        for chunk, iterative in times:
            step_s = times[(chunk, iterative)]
            peak_mb = child(n, iterative, [chunk], 0, env_mem)["peak_mb"]
            rows[(n, chunk, iterative)] = r = {
                "peak_mb": peak_mb,
                "step_s": step_s,
                "inst_per_s": n / step_s,
            }
            mode = "iterative" if iterative else "chunked" if chunk else "one-shot"
            print(
                f"{n:>9} {mode:>9} {r['peak_mb']:>9.1f} {r['step_s']:>8.3f} {r['inst_per_s']:>8.1f}",
                flush=True,
            )
    lo, hi = min(args.counts), max(args.counts)
    chunked_ratio = rows[(hi, args.chunk, 0)]["peak_mb"] / rows[(lo, args.chunk, 0)]["peak_mb"]
    one_shot = [n for n in args.counts if (n, 0, 0) in rows]
    one_shot_ratio = rows[(max(one_shot), 0, 0)]["peak_mb"] / rows[(min(one_shot), 0, 0)]["peak_mb"]
    print(
        "throughput chunked / one-shot (median of paired steps): "
        + " ".join(f"{n}: {r:.3f}" for n, r in pair_ratios.items())
    )
    throughput = min(pair_ratios.values())
    if args.iterative:
        vs_single = max(
            rows[(n, args.chunk, 1)]["peak_mb"] / rows[(n, args.chunk, 0)]["peak_mb"]
            for n in args.counts
        )
        growth = rows[(hi, args.chunk, 1)]["peak_mb"] / rows[(lo, args.chunk, 1)]["peak_mb"]
        print(
            f"iterative_vs_single_peak_mem={vs_single:.2f} "
            f"iterative_peak_mem_ratio_{hi}_vs_{lo}={growth:.2f}"
        )
    print(
        f"peak_mem_ratio_{hi}_vs_{lo}={chunked_ratio:.2f} one_shot_ratio={one_shot_ratio:.2f} "
        f"throughput_chunked_vs_one_shot={throughput:.2f}"
    )


if __name__ == "__main__":
    main()
