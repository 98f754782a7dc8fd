"""Shared helpers of the tests: tiny configs, synthetic images and dataset dicts."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "projects", "SAMPrompt", "configs")
SHARED_IWP = os.environ.get(
    "SAMPROMPT_IWP_VAL", os.path.join(REPO, "..", "shared", "data", "iwp-val")
)

from sam_prompt.config import load_config  # noqa: E402


def tiny_cfg(config="sam_instant_test.yaml", **overrides):
    """A config of the project (default: the instant test's tiny SAM on the CPU) through
    ``load_config``, with KEY=VALUE overrides ("." written "__")."""
    opts = []
    for k, v in overrides.items():
        opts += [k.replace("__", "."), v]
    return load_config(os.path.join(CONFIGS, config), opts, freeze=False)


def polygon_ellipse(cx, cy, rx, ry, n=24, phase=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) + phase
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def concave_polygon(cx, cy, r):
    """A 'C' shape whose box centre lies outside the shape."""
    outer = polygon_ellipse(cx, cy, r, r, 32)[8:25]  # left half-ring, outer edge
    inner = polygon_ellipse(cx, cy, 0.7 * r, 0.7 * r, 32)[8:25][::-1]
    return np.concatenate([outer, inner])


def shapes_image(path, shapes, size=(192, 256), seed=0):
    """
    Write an RGB image with filled polygons and return its Detectron2 dataset dict.

    Args:
        shapes (list[tuple[ndarray[K, 2], int]]): polygon (x, y) and class.
        size (tuple[int, int]): (h, w).
    """
    from PIL import ImageDraw

    h, w = size
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.normal(90, 12, (h, w, 3))).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    colors = [(220, 190, 60), (60, 200, 220), (200, 80, 200)]
    annos = []
    for poly, cls in shapes:
        draw.polygon([tuple(p) for p in poly], fill=colors[cls % len(colors)])
        annos.append(
            {
                "segmentation": [poly.ravel().tolist()],
                "bbox": [*poly.min(0).tolist(), *poly.max(0).tolist()],
                "bbox_mode": 0,
                "category_id": cls,
            }
        )
    img.save(path)
    return {
        "file_name": path,
        "height": h,
        "width": w,
        "image_id": os.path.basename(path),
        "annotations": annos,
    }


def two_image_dataset(folder):
    """Two small images with four and three objects (two classes)."""
    a = shapes_image(
        os.path.join(folder, "a.png"),
        [
            (polygon_ellipse(50, 50, 30, 22), 0),
            (polygon_ellipse(150, 60, 40, 28, 6), 1),
            (polygon_ellipse(80, 140, 26, 36, 5, 0.3), 0),
            (concave_polygon(190, 135, 40), 1),
        ],
        seed=1,
    )
    b = shapes_image(
        os.path.join(folder, "b.png"),
        [
            (polygon_ellipse(60, 90, 45, 30, 7), 1),
            (polygon_ellipse(170, 50, 30, 30), 0),
            (polygon_ellipse(180, 140, 50, 25, 8, 0.5), 0),
        ],
        size=(200, 240),
        seed=2,
    )
    return [a, b]


def register(name, records, classes=("a", "b")):
    """(Re-)register ``records`` as dataset ``name``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=list(classes))
    return name


def small_dataset(folder, name="small_two"):
    """:func:`two_image_dataset` in ``folder``, registered as ``name``."""
    return register(name, two_image_dataset(str(folder)))


def chunking_dataset(folder):
    """:func:`two_image_dataset` and a third image of 40 objects: more prompts than one chunk."""
    recs = two_image_dataset(folder)
    shapes = [
        (polygon_ellipse(20 + 30 * (i % 8), 20 + 30 * (i // 8), 10, 8, 12, 0.1 * i), i % 2)
        for i in range(40)
    ]
    recs.append(shapes_image(os.path.join(folder, "many.png"), shapes, size=(160, 256), seed=3))
    return recs


def mapped(records, is_train=True, **overrides):
    """``records`` through SAMDatasetMapper of the tiny config (no flips; numpy seeded)."""
    from sam_prompt import SAMDatasetMapper

    np.random.seed(0)
    m = SAMDatasetMapper(tiny_cfg(INPUT__RANDOM_FLIP="none", **overrides), is_train)
    return [m(r) for r in records]


def run_train_net(cwd, *args, fails=False):
    """``tools/train_net.py ARGS`` run from ``cwd`` in a new process; its output (exit code 0,
    or not 0 with ``fails``)."""
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert (proc.returncode != 0) == fails, out[-4000:]
    return out


def training_losses(model, next_batch, steps=60, lr=1e-3):
    """Total loss at each of ``steps`` AdamW steps of ``model`` on ``next_batch()``."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = sum(model(next_batch()).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history
