"""
Scene prediction on a Ray cluster (``tools/predict.py --ray``), with Ray Data.

The pipeline: scenes are planned on the driver (:func:`sam_prompt.scene.plan_scene`: output
folder claimed, tiles cut, prompts assigned, finished tiles read from the log) -> one row per
tile still to do -> model actors (the model is built once per actor; each reads its tiles'
windows itself and runs :func:`sam_prompt.scene.predict_tiles`) -> the driver appends each
finished tile to its scene's ``tiles.jsonl`` as results stream in (so an interrupted run resumes)
-> :func:`sam_prompt.scene.finish_scene` stitches and writes each scene, as the in-process path
does. The two backends share every step but the loop.

``ray`` is an optional dependency: ``pip install -e .[ray]``.
"""

import logging
import os
import time
from collections import Counter

from .tiling import SceneError

__all__ = ["predict_scenes_ray", "init_ray"]

logger = logging.getLogger(__name__)

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def init_ray(address=None, num_cpus=None):
    """
    Start a local Ray instance (``address`` None or "local") or join a cluster ("auto" or
    "ray://host:port" / "host:port", as started with ``ray start --head``).
    """
    try:
        import ray
    except ImportError:
        raise SceneError(
            "--ray needs Ray: pip install -e .[ray] (or pip install 'ray[data]')"
        ) from None
    if ray.is_initialized():
        return ray
    # Workers import sam_prompt from this project (as tools/*.py do), on every node.
    env = {
        "env_vars": {
            "PYTHONPATH": os.pathsep.join(filter(None, [PROJECT, os.environ.get("PYTHONPATH")]))
        }
    }
    if address in (None, "local"):
        ray.init(num_cpus=num_cpus, runtime_env=env, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    return ray


class _TileActor:
    """A Ray Data actor: one model per actor; opens each scene once."""

    def __init__(self, cfg, plans, threads):
        import torch

        from .scene import SceneReader, TileModel

        if threads:  # the CPUs it reserved, whatever OMP_NUM_THREADS the worker inherited
            torch.set_num_threads(threads)
        self.model = TileModel(cfg)
        self.plans = plans  # scene index -> (path, overview_size, bands, per_tile, prompted, tiles)
        self.readers = {}
        self._reader = SceneReader

    def _open(self, scene):
        if scene not in self.readers:
            path, overview, bands = self.plans[scene][:3]
            self.readers[scene] = self._reader(path, max_overview=overview, bands=bands)
        return self.readers[scene]

    def __call__(self, batch):
        import json

        import numpy as np

        from .scene import predict_tiles

        scenes, tiles = batch["scene"], batch["tile"]
        out_scene, out_line = [], []
        for scene in sorted(set(int(s) for s in scenes)):
            _, _, _, per_tile, prompted, all_tiles = self.plans[scene]
            batch_tiles = [all_tiles[int(t)] for s, t in zip(scenes, tiles) if int(s) == scene]
            lines = predict_tiles(self.model, self._open(scene), batch_tiles, per_tile, prompted)
            out_scene += [scene] * len(lines)
            out_line += [json.dumps(line) for line in lines]
        return {
            "scene": np.array(out_scene, dtype=np.int64),
            "line": np.array(out_line, dtype=object),
        }


def predict_scenes_ray(
    cfg,
    jobs,
    settings=None,
    *,
    needs_prompts,
    prompt_type,
    workers=1,
    num_gpus_per_worker=0,
    cpus_per_worker=1,
    **kwargs,
):
    """
    Predict scenes on the Ray cluster that :func:`init_ray` joined.

    Args:
        cfg: the model's config (built once per actor).
        jobs (list[tuple[str, str]]): (scene path, output folder) pairs.
        settings (PredictSettings): or its fields as keyword arguments (as in-process).
        needs_prompts, prompt_type: of the model (:meth:`sam_prompt.scene.TileModel.describe`).
        workers (int): model actors; num_gpus_per_worker (float): GPUs each reserves;
            cpus_per_worker (int): CPUs each reserves without GPUs (its torch threads).

    Returns:
        list[dict]: one summary per scene, in the order of ``jobs``.
    """
    import json

    import ray

    from .scene import PredictSettings, finish_scene, plan_scene

    settings = settings or PredictSettings(**kwargs)
    plans = [
        plan_scene(path, out_dir, settings, needs_prompts=needs_prompts, prompt_type=prompt_type)
        for path, out_dir in jobs
    ]
    rows = [{"scene": i, "tile": t.index} for i, p in enumerate(plans) for t in p.todo]
    todo = Counter(r["scene"] for r in rows)  # tiles to run per scene
    left = Counter(todo)
    summaries = [None] * len(plans)
    start = time.time()

    def finish(i):  # as soon as the scene's last tile is logged, while the actors go on
        summaries[i] = finish_scene(
            plans[i], settings, seconds=time.time() - start, tiles_run=todo[i]
        )

    try:
        for i in range(len(plans)):
            if not todo[i]:  # finished by an earlier run
                finish(i)
        if rows:
            shared = {
                i: (p.path, settings.overview_size, p.reader.bands, p.per_tile, p.prompted, p.tiles)
                for i, p in enumerate(plans)
            }
            ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * workers)))
            ds = ds.map_batches(
                _TileActor,
                fn_constructor_args=(cfg, shared, 0 if num_gpus_per_worker else cpus_per_worker),
                batch_size=settings.batch_size,
                batch_format="numpy",
                concurrency=workers,
                num_gpus=num_gpus_per_worker,
                num_cpus=0 if num_gpus_per_worker else cpus_per_worker,
            )
            for row in ds.iter_rows():  # streamed: each tile is logged when it is done
                i = int(row["scene"])
                plans[i].log.append([json.loads(row["line"])])
                left[i] -= 1
                if not left[i]:
                    finish(i)
    except BaseException:
        for i, p in enumerate(plans):
            if summaries[i] is None:
                p.reader.close()
        raise
    return summaries
