"""Checkpoints that never load silently wrong: SAM weights that do not fit, broken files on resume."""

import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["SAMCheckpointer", "CheckpointError", "UnreadableCheckpoint"]

logger = logging.getLogger(__name__)

# Weights that the model zoo's configs start from, and what writes them.
WRITERS = {
    "pretrain": "`make pretrain`",
    "sam_small_cpu": "the box recipe (configs/sam_small_cpu.yaml) with the same --dataset",
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read (zero-byte, truncated, not a checkpoint)."""


def _head(keys, n=8):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


class SAMCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` with two guarantees:

    * loading weights that leave parameters of SAM (``sam.*``) unloaded or mis-shaped is an error
      listing them (a SAM-layout file given as MODEL.WEIGHTS, a checkpoint of another size), unless
      ``allow_partial`` (``MODEL.SAM.ALLOW_PARTIAL_WEIGHTS``);
    * resuming skips checkpoints that cannot be read (zero-byte, truncated) and resumes from the
      newest readable one, saying which it skipped.
    """

    def __init__(self, model, save_dir="", *, allow_partial=False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.allow_partial = allow_partial
        self._loading = None

    @classmethod
    def from_config(cls, cfg, model, save_dir="", **checkpointables):
        allow = cfg.MODEL.SAM.ALLOW_PARTIAL_WEIGHTS if "SAM" in cfg.MODEL else False
        return cls(model, save_dir, allow_partial=allow, **checkpointables)

    # ------------------------------------------------------------------------------------------
    def load(self, path, checkpointables=None):
        if path and "://" not in path and not os.path.isfile(path):
            hint = next(
                (
                    f" It is written by {writer}."
                    for folder, writer in WRITERS.items()
                    if os.path.normpath(path).endswith(os.path.join(folder, "model_final.pth"))
                ),
                "",
            )
            raise FileNotFoundError(f"MODEL.WEIGHTS {path}: no such file.{hint}")
        self._loading = path
        try:
            return super().load(path, checkpointables)
        finally:
            self._loading = None

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except FileNotFoundError:
            raise
        except (
            Exception
        ) as e:  # EOFError, UnpicklingError, RuntimeError ("PytorchStreamReader ...")
            raise UnreadableCheckpoint(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}"
            ) from e

    def _load_model(self, checkpoint):
        own = self.model.state_dict()
        _map_lora_keys(checkpoint["model"], own)
        if "prompts_trained" in own and not any(
            k in ("prompts_trained", "module.prompts_trained") for k in checkpoint["model"]
        ):
            # Written before checkpoints recorded their training prompts: unknown, not checked.
            checkpoint["model"]["prompts_trained"] = torch.tensor(-1)
        incompatible = super()._load_model(checkpoint)
        if self.allow_partial or not hasattr(_unwrap(self.model), "sam"):
            return incompatible
        # LoRA adapters and fine features absent from a checkpoint start fresh (the model then
        # computes what the checkpoint's did); present in it but not in the model, they would be
        # dropped and the masks would silently differ from the trained model's.
        missing = [
            k for k in incompatible.missing_keys if k.startswith("sam.") and ".lora_" not in k
        ]
        if any(
            k.startswith("fine_features.refinement.") and ".score." in k
            for k in incompatible.unexpected_keys
        ):
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._loading} was trained with masks rescored by the refinement: "
                "set MODEL.SAM.FINE_RESCORE True as in training (its config.yaml), or its scores "
                "would differ"
            )
        if any(
            k.startswith("fine_features.refinement.more.") for k in incompatible.unexpected_keys
        ):
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._loading} was trained with more mask refinement passes: set "
                "MODEL.SAM.FINE_REFINE_PASSES as in training (its config.yaml), or its masks "
                "would differ"
            )
        if any(k.startswith("fine_features.refinement.") for k in incompatible.unexpected_keys):
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._loading} was trained with a mask refinement: set "
                "MODEL.SAM.FINE_REFINE as in training (its config.yaml), or its masks would differ"
            )
        if any(k.startswith("fine_features.blocks.") for k in incompatible.unexpected_keys):
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._loading} was trained with a deeper fine-feature stem: set "
                "MODEL.SAM.FINE_DEPTH as in training (its config.yaml), or its masks would differ"
            )
        if any(k.startswith("fine_features.") for k in incompatible.unexpected_keys):
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._loading} was trained with fine image features: set "
                "MODEL.SAM.FINE_FEATURES as in training (its config.yaml), or its masks would differ"
            )
        shapes = [
            f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes
        ]
        if missing or shapes:
            hint = ""
            unexpected = incompatible.unexpected_keys
            if any(".lora_" in k for k in unexpected):
                hint = " It was trained with LoRA adapters: set MODEL.SAM.LORA.* as in training."
            elif any(
                k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder")
                for k in unexpected
            ):
                hint = (
                    " It holds an official Segment Anything state dict: give it as "
                    "MODEL.SAM.CHECKPOINT, not MODEL.WEIGHTS."
                )
            problems = []
            if missing:
                problems.append(f"{len(missing)} SAM parameters not in the file: {_head(missing)}")
            if shapes:
                problems.append(f"{len(shapes)} of another shape: {_head(shapes, 4)}")
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._loading} does not fit this model ({'; '.join(problems)}).{hint} "
                "Set MODEL.SAM.ALLOW_PARTIAL_WEIGHTS True for an intentional partial load."
            )
        return incompatible

    # ------------------------------------------------------------------------------------------
    def resume_or_load(self, path, *, resume=True):
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        candidates = [self.get_checkpoint_file()]
        others = [
            f for f in self.get_all_checkpoint_files() if os.path.basename(f).startswith("model_")
        ]
        candidates += sorted(set(others) - set(candidates), key=os.path.getmtime, reverse=True)
        skipped = []
        for candidate in candidates:
            if not os.path.isfile(candidate):
                skipped.append(f"{candidate} (missing)")
                continue
            try:
                loaded = self.load(candidate)
            except UnreadableCheckpoint as e:  # raised before anything is loaded
                skipped.append(f"{candidate} ({type(e.__cause__).__name__}: {e.__cause__})")
                continue
            if skipped:
                logger.warning(
                    f"Resumed from {candidate}; skipped unreadable checkpoints: {'; '.join(skipped)}"
                )
            return loaded
        raise CheckpointError(
            f"No readable checkpoint in {self.save_dir} to resume from (skipped: {'; '.join(skipped)}). "
            "Remove them to start again, or run without --resume."
        )


def _unwrap(model):
    return getattr(model, "module", model)


def _map_lora_keys(state, own):
    """Weights saved without LoRA load into the base layers of a model with LoRA adapters."""
    for key in [k for k in list(state) if k not in own]:
        wrapped = key.rsplit(".", 1)[0] + ".base_layer." + key.rsplit(".", 1)[1]
        if wrapped in own:
            state[wrapped] = state.pop(key)
