"""Training and evaluation plumbing shared by the entry points in ``tools/``."""

import argparse
import hashlib
import json
import logging
import os
import time
import weakref

import torch
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import (
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
)
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .checkpoint import SAMCheckpointer
from .config import load_config
from .data.register import register_dataset
from .evaluation import InteractiveEvaluator, SAMCOCOEvaluator, has_compiled_ops
from .mapper import SAMDatasetMapper, detector_train_mapper
from .modeling import copy_single_mask_output, uses_prompts

__all__ = [
    "Trainer",
    "argument_parser",
    "setup",
    "has_compiled_ops",
    "register_cfg_datasets",
    "build_evaluator",
    "coco_evaluator",
]

logger = logging.getLogger(__name__)


def coco_evaluator(cfg, dataset_name, output_folder=None):
    """COCO evaluation of instance masks and boxes, as SAMPrompt's models are scored."""
    coco_ground_truth(dataset_name)
    # Boxes of SAMPrompt are computed from its predicted masks, so box AP is meaningful.
    return SAMCOCOEvaluator(
        dataset_name,
        tasks=("bbox", "segm"),
        distributed=True,
        output_dir=output_folder or cfg.OUTPUT_DIR,
        use_fast_impl=has_compiled_ops(),  # else faster-coco-eval, when installed
        # IWP tiles hold up to ~313 instances: COCO's default of 100 would cut recall.
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )


def build_evaluator(cfg, dataset_name, output_folder=None):
    """
    The evaluator(s) of a dataset, chosen by its metadata's ``evaluator_type`` as detectron2's own
    ``tools/train_net.py`` chooses them, so that this ``train_net.py`` can replace that one in a
    fork: "coco" (SAMPrompt's COCO evaluation), "sem_seg", "coco_panoptic_seg", "lvis",
    "pascal_voc", "cityscapes_instance", "cityscapes_sem_seg". A dataset without an
    ``evaluator_type`` that has ``thing_classes`` is evaluated as "coco".
    """
    folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    if kind is None and meta.get("thing_classes", None):
        kind = "coco"
    evaluators = []
    if kind in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=folder))
    if kind in ("coco", "coco_panoptic_seg"):
        evaluators.append(coco_evaluator(cfg, dataset_name, output_folder))
    if uses_prompts(cfg) and cfg.MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS > 0:
        evaluators.append(InteractiveEvaluator(dataset_name, output_folder or cfg.OUTPUT_DIR))
    if kind == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, folder))
    if kind == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if kind == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    if kind == "pascal_voc":
        evaluators.append(PascalVOCDetectionEvaluator(dataset_name))
    if kind == "lvis":
        evaluators.append(LVISEvaluator(dataset_name, output_dir=folder))
    if not evaluators:  # not NotImplementedError, which DefaultTrainer.test turns into "no results"
        raise ValueError(
            f"no evaluator for dataset {dataset_name} (evaluator_type {kind!r}); set its metadata's "
            "evaluator_type or override Trainer.build_evaluator"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def amp_dtype(cfg):
    """The autocast dtype of ``SOLVER.AMP.PRECISION`` ("auto": bfloat16 on the CPU, float16 on CUDA)."""
    precision = cfg.SOLVER.AMP.PRECISION
    if precision == "auto":
        precision = "float16" if cfg.MODEL.DEVICE.startswith("cuda") else "bfloat16"
    if precision not in ("float16", "bfloat16"):
        raise ValueError(f"SOLVER.AMP.PRECISION={precision!r}: expected auto, float16 or bfloat16")
    if precision == "float16" and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(
            "SOLVER.AMP.PRECISION float16 needs CUDA; on the CPU use bfloat16 (or auto)"
        )
    return getattr(torch, precision)


class MixedPrecisionTrainer(SimpleTrainer):
    """
    The training step under ``torch.autocast`` on the model's device: bfloat16 (CPU or CUDA) or
    float16 with a gradient scaler (CUDA). Gradients are unscaled before the optimizer step, so
    gradient clipping sees their true norm. Takes over a built SimpleTrainer's model, data and
    optimizer (detectron2 v0.6's AMPTrainer runs on CUDA only).
    """

    def __init__(self, base, dtype, device_type):
        TrainerBase.__init__(self)
        self.model, self.data_loader, self.optimizer = base.model, base.data_loader, base.optimizer
        self._data_loader_iter = base._data_loader_iter
        self.dtype, self.device_type = dtype, device_type
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.unscale_(self.optimizer)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        return dict(super().state_dict(), grad_scaler=self.grad_scaler.state_dict())

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class Trainer(DefaultTrainer):
    """
    DefaultTrainer with SAMPrompt's mapper (train and test) for models that take prompts, the
    evaluators of detectron2's own ``tools/train_net.py`` (COCO bbox + segm for SAMPrompt's
    datasets), checkpoints that refuse weights that do not fit (:class:`SAMCheckpointer`), and
    ``SOLVER.AMP.ENABLED`` on the CPU (bfloat16) as on CUDA (:class:`MixedPrecisionTrainer`).
    """

    def __init__(self, cfg):
        _check_multimask_init(cfg)
        super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            device_type = "cuda" if cfg.MODEL.DEVICE.startswith("cuda") else "cpu"
            self._trainer = MixedPrecisionTrainer(self._trainer, amp_dtype(cfg), device_type)

    # Detectron2 v0.6 checkpoints the trainer's iteration and hooks only: a resumed run started
    # the optimizer's moments and the AMP gradient scaler afresh. Later versions keep the inner
    # trainer's state (optimizer, scaler) under "_trainer"; on v0.6 this class does the same.
    _BASE_SAVES_INNER = "state_dict" in vars(DefaultTrainer)

    def state_dict(self):
        ret = super().state_dict()
        if not self._BASE_SAVES_INNER:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self._BASE_SAVES_INNER:
            return
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "The checkpoint holds no optimizer state (written by an older SAMPrompt): the "
                "optimizer's moments and the AMP gradient scaler start afresh"
            )

    def build_hooks(self):
        # DefaultTrainer made a plain DetectionCheckpointer just before calling this; the
        # PeriodicCheckpointer hook built here must hold ours.
        self.checkpointer = SAMCheckpointer.from_config(
            self.cfg, self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter == 0 and self.cfg.MODEL.SAM.MULTIMASK_INIT == "single":
            model = getattr(self.model, "module", self.model)  # DistributedDataParallel
            copy_single_mask_output(model.sam.mask_decoder)
            logger.info(
                "MODEL.SAM.MULTIMASK_INIT single: the three masks of a single point start as "
                "copies of the single mask's output"
            )

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = (
            SAMDatasetMapper(cfg, is_train=True)
            if uses_prompts(cfg)
            else detector_train_mapper(cfg)
        )
        if cfg.DATALOADER.SAMPLER_TRAIN != "InstanceRepeatFactor":
            return build_detection_train_loader(cfg, mapper=mapper)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        factors = instance_repeat_factors(dataset, cfg.MODEL.SAM.MAX_INSTANCES_PER_IMAGE)
        logger.info(
            f"InstanceRepeatFactor: {len(dataset)} images, repeat factors {factors.min():.2f} to "
            f"{factors.max():.2f} (mean {factors.mean():.2f})"
        )
        return build_detection_train_loader(
            cfg, mapper=mapper, dataset=dataset, sampler=RepeatFactorTrainingSampler(factors)
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # Prompts come from the instances, so the test mapper keeps them.
        mapper = (
            SAMDatasetMapper(cfg, is_train=False, dataset_name=dataset_name)
            if uses_prompts(cfg)
            else None
        )
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: expected SGD or ADAMW")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        # On the CPU PyTorch's default AdamW updates one parameter tensor at a time: ~40 ms a step
        # for sam_small_cpu.yaml's ~200 small tensors, against ~4 ms for its fused kernel (CPU
        # since PyTorch 2.4). On CUDA its default (all tensors at once) stays.
        fused = cfg.MODEL.DEVICE == "cpu" and torch.__version__ >= (2, 4)  # a TorchVersion
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params,
            lr=cfg.SOLVER.BASE_LR,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            **({"fused": True} if fused else {}),
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def _check_multimask_init(cfg):
    s = cfg.MODEL.SAM
    if s.MULTIMASK_INIT not in ("", "single"):
        raise ValueError(f"MODEL.SAM.MULTIMASK_INIT={s.MULTIMASK_INIT!r}: expected '' or 'single'")
    points = s.PROMPT.NUM_POSITIVE_POINTS + s.PROMPT.NUM_NEGATIVE_POINTS
    if s.MULTIMASK_INIT and not (
        uses_prompts(cfg)
        and s.PROMPT.TYPE == "point"
        and points == 1
        and s.MULTIMASK_FOR_SINGLE_POINT
    ):
        raise ValueError(
            "MODEL.SAM.MULTIMASK_INIT 'single' prepares the three masks of single-point prompts, "
            "which this config never decodes (they need MODEL.SAM.PROMPT.TYPE point with one point "
            "and MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT True): set MODEL.SAM.MULTIMASK_INIT ''"
        )


def coco_ground_truth(dataset_name):
    """
    Point ``json_file`` of a dataset without one at its COCO conversion, cached under a name
    that includes a digest of the records, so that an edited or regenerated dataset is never
    evaluated against a stale conversion (COCOEvaluator's own cache is keyed by name only).
    """
    meta = MetadataCatalog.get(dataset_name)
    if "json_file" in meta.as_dict():
        return meta.json_file
    records = DatasetCatalog.get(dataset_name)
    digest = hashlib.sha1(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()
    folder = os.environ.get(
        "SAMPROMPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "samprompt")
    )
    path = os.path.join(folder, "coco_gt", f"{dataset_name}_{digest[:16]}.json")
    if comm.is_main_process() and not os.path.exists(path):
        convert_to_coco_json(dataset_name, path, allow_cached=False)
    comm.synchronize()
    meta.json_file = path
    return path


def argument_parser():
    """Detectron2's standard arguments, plus SAMPrompt's shorthands for config keys."""
    parser = default_argument_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--prompt", choices=("box", "point"), help="shorthand for MODEL.SAM.PROMPT.TYPE"
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        help="train on NAME_train and test on NAME_test, found in --data-root/NAME "
        "(Detectron2 JSON, COCO or VIA; 'iwp_synthetic' is generated on first use)",
    )
    parser.add_argument("--data-root", metavar="DIR", help="shorthand for DATASETS.ROOT")
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="also evaluate with up to 20 corrective clicks per instance (mIoU@k, NoC@85/90); "
        "shorthand for MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS 20 MODEL.SAM.TEST_AUG '' (the clicks "
        "replay one view of the image: the whole run, COCO AP included, is without test-time "
        "augmentation)",
    )
    parser.add_argument(
        "--class-attribute", metavar="ATTR", help="shorthand for DATASETS.VIA_CLASS_ATTRIBUTE"
    )
    parser.add_argument(
        "--merge-classes", metavar="NAME", help="shorthand for DATASETS.MERGE_CLASSES"
    )
    return parser


def register_cfg_datasets(cfg):
    """Register the NAME_train / NAME_test datasets of ``cfg`` that are not registered yet."""
    known = set(DatasetCatalog.list())
    names = set()
    for d in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        if d not in known:
            base, _, split = d.rpartition("_")
            if split not in ("train", "test") or not base:
                raise KeyError(
                    f"Dataset {d!r} is not registered, and only NAME_train / NAME_test names are "
                    f"found automatically (in DATASETS.ROOT={cfg.DATASETS.ROOT!r})"
                )
            names.add(base)
    for base in sorted(names):
        register_dataset(
            base,
            cfg.DATASETS.ROOT,
            class_attribute=cfg.DATASETS.VIA_CLASS_ATTRIBUTE or None,
            merge_classes=cfg.DATASETS.MERGE_CLASSES or None,
            skip_invalid=cfg.DATASETS.SKIP_INVALID,
            test_fraction=cfg.DATASETS.TEST_FRACTION,
        )


def setup(args):
    """Config from the file, the shorthand flags and the opts; datasets registered; logging."""
    shorthands = []
    if getattr(args, "prompt", None):
        shorthands += ["MODEL.SAM.PROMPT.TYPE", args.prompt]
    if getattr(args, "interactive", False):
        shorthands += ["MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS", 20, "MODEL.SAM.TEST_AUG", ""]
    if getattr(args, "dataset", None):
        shorthands += [
            "DATASETS.TRAIN",
            (f"{args.dataset}_train",),
            "DATASETS.TEST",
            (f"{args.dataset}_test",),
        ]
    for flag, key in (
        ("data_root", "DATASETS.ROOT"),
        ("class_attribute", "DATASETS.VIA_CLASS_ATTRIBUTE"),
        ("merge_classes", "DATASETS.MERGE_CLASSES"),
    ):
        if getattr(args, flag, None):
            shorthands += [key, getattr(args, flag)]
    cfg = load_config(args.config_file, shorthands + list(args.opts))
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sam_prompt")
    logging.getLogger("sam_prompt").info(
        f"SAMPrompt from {os.path.dirname(os.path.abspath(__file__))}"
    )
    register_cfg_datasets(cfg)
    check_num_classes(cfg)
    return cfg


def check_num_classes(cfg):
    """A detector's class count must match its training data (SAMPrompt takes classes from prompts)."""
    if uses_prompts(cfg) or not cfg.DATASETS.TRAIN:
        return
    n = len(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != n:
        raise ValueError(
            f"{cfg.DATASETS.TRAIN[0]} has {n} classes but MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: add 'MODEL.ROI_HEADS.NUM_CLASSES {n}' to the command"
        )


def train_and_test(cfg, resume=True):
    """
    Train ``cfg``'s model (resuming from its OUTPUT_DIR, so a finished run is reused and an
    interrupted one continues); DefaultTrainer evaluates it on ``cfg.DATASETS.TEST`` at the end.

    Returns:
        (model, results, train_seconds): results as returned by ``Trainer.test`` (task -> metric
        -> value); the wall time spent training, summed over the runs that resumed this one
        (kept in OUTPUT_DIR/train_seconds.json).
    """
    if cfg.SEED >= 0:  # default_setup does this for train_net.py; other entry points come here
        seed_all_rng(cfg.SEED)
    timing = os.path.join(cfg.OUTPUT_DIR, "train_seconds.json")
    spent = 0.0
    if resume and os.path.isfile(timing):
        with open(timing) as f:
            spent = json.load(f)["seconds"]
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    start = time.perf_counter()
    trainer.train()
    spent += time.perf_counter() - start
    if comm.is_main_process():
        with open(timing, "w") as f:
            json.dump({"seconds": spent}, f)
    # DefaultTrainer keeps the results of its final evaluation (it returns them only when
    # TEST.EXPECTED_RESULTS is set); evaluate here when it did not run one.
    results = getattr(trainer, "_last_eval_results", None)
    return trainer.model, results or Trainer.test(cfg, trainer.model), spent


def instance_repeat_factors(dataset, max_instances):
    """
    Repeat factors for ``DATALOADER.SAMPLER_TRAIN "InstanceRepeatFactor"``: an image with n
    instances, of which ``MODEL.SAM.MAX_INSTANCES_PER_IMAGE`` = k are drawn as prompts, repeats
    max(1, n / k) times per epoch, so that every instance is as likely to be trained on as in any
    other image (the cap alone under-trains dense tiles).
    """
    if max_instances <= 0:
        raise ValueError(
            'DATALOADER.SAMPLER_TRAIN "InstanceRepeatFactor" repeats the images that hold more '
            "instances than MODEL.SAM.MAX_INSTANCES_PER_IMAGE, which is 0 (no cap): nothing would "
            'repeat. Set a cap, or DATALOADER.SAMPLER_TRAIN "TrainingSampler"'
        )
    counts = torch.tensor(
        [sum(not a.get("iscrowd", 0) for a in d.get("annotations", [])) for d in dataset],
        dtype=torch.float32,
    )
    return (counts / max_instances).clamp(min=1.0)
