"""Config keys of SAMPrompt (yacs)."""

import logging

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def load_config(config_file, opts=(), freeze=True):
    """
    Detectron2's defaults + SAMPrompt's keys, then ``config_file`` and ``opts`` (KEY VALUE list).
    A CUDA device on a machine without one falls back to the CPU, with a warning.
    """
    cfg = get_cfg()
    add_sam_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    logger = logging.getLogger(__name__)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        logger.warning("CUDA is not available: running on the CPU")
    if cfg.MODEL.META_ARCHITECTURE == "SAMPrompt":
        from .prompts import validate_prompt_source

        if validate_prompt_source(cfg) == "detector":
            cfg.MODEL.META_ARCHITECTURE = "DetectorPromptedSAM"
            logger.info(
                "MODEL.SAM.DETECTOR.CONFIG_FILE is set: META_ARCHITECTURE DetectorPromptedSAM"
            )
        else:
            _warn_centrality_with_random_points(cfg, logger)
    if freeze:
        cfg.freeze()
    return cfg


def _warn_centrality_with_random_points(cfg, logger):
    """
    MODEL.SAM.MULTIMASK_CENTRALITY prefers the mask a click lies deepest in, which assumes clicks
    near their objects' middles; evaluation points placed anywhere in an object break that. It
    chooses among a point's three masks: without them it does nothing, and nothing is said.
    """
    s = cfg.MODEL.SAM
    if (
        s.PROMPT.TYPE == "point"
        and s.MULTIMASK_FOR_SINGLE_POINT
        and s.MULTIMASK_CENTRALITY > 0
        and s.PROMPT.EVAL_POINT == "random"
    ):
        logger.warning(
            f"MODEL.SAM.MULTIMASK_CENTRALITY {s.MULTIMASK_CENTRALITY} prefers the mask a click "
            "lies deepest in, for clicks near their objects' middles; MODEL.SAM.PROMPT.EVAL_POINT "
            "random places them anywhere in the object, where it costs AP (README: point "
            "prompts). For such clicks add MODEL.SAM.MULTIMASK_CENTRALITY 0"
        )


def add_sam_config(cfg):
    """
    Add the config keys of SAMPrompt to ``cfg`` (in place). Keys that already exist are kept as
    they are, so calling this twice is harmless.
    """
    _C = cfg

    _C.MODEL.SAM = CN()
    # Architecture: "vit_b", "vit_l", "vit_h" (the official models, 1024-px input) or "custom",
    # whose sizes come from MODEL.SAM.CUSTOM (small models for CPU tests and demos).
    _C.MODEL.SAM.TYPE = "vit_b"
    # Path to an official Segment Anything checkpoint (sam_vit_*.pth) or a state dict of the same
    # layout. Loaded when the model is built; MODEL.WEIGHTS (a Detectron2 checkpoint) is applied after.
    _C.MODEL.SAM.CHECKPOINT = ""
    # MODEL.WEIGHTS that leave parameters of SAM unloaded are an error listing them; True allows
    # an intentional partial load (the rest keeps MODEL.SAM.CHECKPOINT's or random weights).
    _C.MODEL.SAM.ALLOW_PARTIAL_WEIGHTS = False

    _C.MODEL.SAM.CUSTOM = CN()
    # Side of the square encoder input (images are resized so that their longest side equals it).
    _C.MODEL.SAM.CUSTOM.IMAGE_SIZE = 256
    # ViT patch size; the image embedding has IMAGE_SIZE / PATCH_SIZE cells a side.
    _C.MODEL.SAM.CUSTOM.PATCH_SIZE = 16
    # Width, depth and heads of the ViT image encoder.
    _C.MODEL.SAM.CUSTOM.ENCODER_EMBED_DIM = 96
    _C.MODEL.SAM.CUSTOM.ENCODER_DEPTH = 2
    _C.MODEL.SAM.CUSTOM.ENCODER_NUM_HEADS = 4
    # Blocks that use global attention (the others use windowed attention).
    _C.MODEL.SAM.CUSTOM.ENCODER_GLOBAL_ATTN_INDEXES = [1]
    # Attention window of the windowed blocks, in embedding cells.
    _C.MODEL.SAM.CUSTOM.ENCODER_WINDOW_SIZE = 8
    # Channels of the image embedding and of the prompt tokens.
    _C.MODEL.SAM.CUSTOM.PROMPT_EMBED_DIM = 64
    # Hidden size of the mask decoder's two-way transformer MLP.
    _C.MODEL.SAM.CUSTOM.DECODER_MLP_DIM = 256

    _C.MODEL.SAM.PROMPT = CN()
    # "box" or "point": how each ground-truth instance is turned into a prompt.
    _C.MODEL.SAM.PROMPT.TYPE = "box"
    # Positive points (inside the instance mask) and negative points (inside its box, outside the
    # mask) per instance, for PROMPT.TYPE == "point".
    _C.MODEL.SAM.PROMPT.NUM_POSITIVE_POINTS = 1
    _C.MODEL.SAM.PROMPT.NUM_NEGATIVE_POINTS = 0
    # Training-time box noise (SAM paper): each coordinate moves by a normal sample whose std is
    # this fraction of the box side, clipped to BOX_JITTER_MAX_PIXELS.
    _C.MODEL.SAM.PROMPT.BOX_JITTER_STD = 0.1
    _C.MODEL.SAM.PROMPT.BOX_JITTER_MAX_PIXELS = 20.0
    # First point of an evaluation point prompt: "interior" (the interior point farthest from the
    # boundary), "center" (the box centre, which falls outside concave polygons) or "random"
    # (a pixel of the mask, seeded by file name and instance).
    _C.MODEL.SAM.PROMPT.EVAL_POINT = "interior"
    # First point of a training point prompt: "uniform" (any pixel of the mask, SAM's) or "inner"
    # (a pixel drawn with probability proportional to its distance from the mask's boundary).
    _C.MODEL.SAM.PROMPT.TRAIN_POINT = "uniform"
    # "" (off), "box" or "ellipse": also give each box prompt as SAM's dense mask prompt (the
    # filled box, or the ellipse inscribed in it, on the mask-prompt grid) where no previous mask
    # is fed back. The decoder then knows where the box lies on the
    # image grid from the first iteration, instead of learning it from the corner embeddings:
    # what lets a SAM trained from random weights escape predicting empty masks on real tiles
    # (sam_small_cpu.yaml). Off for the official weights, which were not trained with it.
    _C.MODEL.SAM.PROMPT.BOX_AS_MASK = ""
    # The same for point prompts: > 0 also gives them as a dense mask prompt, a disk of this radius
    # (in mask-prompt cells, 4 input pixels each) at each positive point; 0 = off.
    _C.MODEL.SAM.PROMPT.POINT_AS_MASK = 0.0

    # > 0: a small convolutional stem on the image (this many channels) whose features, at the
    # mask decoder's output resolution, are added to its upscaled embedding, so that mask edges can
    # follow thin image structure that 16-pixel patches blur (sam_prompt.modeling.FineFeatures).
    # New weights, zero-initialised: the model starts as plain SAM. 0 = off (the official layout).
    _C.MODEL.SAM.FINE_FEATURES = 0
    # Residual blocks (3 x 3 convolutions at the mask resolution) in that stem: each fine feature
    # then sees more than the stem's 7 input pixels. Zero-initialised. 0 = none.
    _C.MODEL.SAM.FINE_DEPTH = 0
    # > 0 (with FINE_FEATURES): a per-mask refinement of the decoder's logits by three small
    # convolutions (this many channels) over the mask and the fine features, added to the logits
    # (sam_prompt.modeling.MaskRefinement). Zero-initialised. 0 = off.
    _C.MODEL.SAM.FINE_REFINE = 0
    # With FINE_REFINE: also correct each mask's predicted IoU (its score) from the refinement's
    # features over the refined mask and its edge; the decoder predicts it before they shape the
    # mask. Zero-initialised.
    _C.MODEL.SAM.FINE_RESCORE = False
    # With FINE_REFINE: refinement passes, each with its own weights, the next on the last's
    # output and reaching 8 cells further; a pass after the first starts as the identity, so
    # weights of fewer passes load and start as they were (README: point prompts, 2 passes).
    _C.MODEL.SAM.FINE_REFINE_PASSES = 1
    # > 0: decode each prompt on a window of the image embedding around it (its box, or its
    # points, grown by this many cells each side; the side rounded up to 4 cells, prompts grouped
    # by it) instead of the whole embedding: the decoder's attention and upscaling then cost the window's
    # cells, not the grid's (small objects, CPU). Outside the window the mask is background.
    # 0 = the whole embedding, as SAM (and its official weights) decode.
    _C.MODEL.SAM.DECODER_WINDOW = 0

    # Parts of SAM kept fixed during training.
    _C.MODEL.SAM.FREEZE_IMAGE_ENCODER = False
    _C.MODEL.SAM.FREEZE_PROMPT_ENCODER = False
    _C.MODEL.SAM.FREEZE_MASK_DECODER = False
    # LoRA adapters on the image encoder (through peft): RANK > 0 freezes the encoder's weights and
    # trains rank-RANK adapters on TARGET_MODULES (the attention projections), scaled ALPHA / RANK.
    _C.MODEL.SAM.LORA = CN()
    _C.MODEL.SAM.LORA.RANK = 0
    _C.MODEL.SAM.LORA.ALPHA = 16.0
    _C.MODEL.SAM.LORA.TARGET_MODULES = ["qkv"]
    _C.MODEL.SAM.LORA.DROPOUT = 0.0
    # With a frozen image encoder, compute each image embedding once: "" (off), "memory", or a
    # folder (kept across runs). Keyed by the encoder input (a flipped image is another key) and a
    # digest of the encoder weights, so never stale. Refused when the encoder is trained.
    _C.MODEL.SAM.EMBEDDING_CACHE = ""
    # Storage type of cached embeddings: "float32" (exact) or "float16" (half the memory).
    _C.MODEL.SAM.EMBEDDING_CACHE_DTYPE = "float32"
    # Memory cache: least recently used embeddings are dropped beyond this size.
    _C.MODEL.SAM.EMBEDDING_CACHE_MAX_GB = 4.0

    # With a single point prompt SAM is ambiguous: predict three masks, train on the one with the
    # lowest loss and, at inference, keep the one with the highest predicted IoU (SAM paper).
    _C.MODEL.SAM.MULTIMASK_FOR_SINGLE_POINT = True
    # "single": when training starts from MODEL.WEIGHTS (not when it resumes), those three masks
    # start as copies of the single mask's output, 1% apart (sam_prompt.modeling.
    # copy_single_mask_output): for point prompts fine-tuned from a box model, which only trains
    # that output. "" = as loaded.
    _C.MODEL.SAM.MULTIMASK_INIT = ""
    # > 0: inference chooses among those three masks, and scores the one it keeps, by the
    # predicted IoU times (the point's depth in the mask / the mask's greatest depth) ** this.
    # A click near its object's middle (EVAL_POINT interior, as users click) lies deepest in the
    # mask of that object, shallow in one that also spans its neighbours; a point anywhere in its
    # object (EVAL_POINT random) loses AP with it (README: point prompts). The --interactive
    # replay keeps SAM's choice. 0 = the predicted IoU alone (SAM's).
    _C.MODEL.SAM.MULTIMASK_CENTRALITY = 0.0
    # True: among those three masks, inference keeps one that holds the fewest of the image's other
    # prompts' first points (then by the rule above): a mask that holds another prompt's click
    # spans that prompt's object too. Needs all of an image's objects prompted at once, as when a
    # tile's objects are all clicked (and evaluation's ground-truth prompts).
    _C.MODEL.SAM.MULTIMASK_AVOID_OTHERS = False
    # True: no pixel goes to two masks of one image; a pixel that several masks claim stays in
    # the one whose prompt (its first point, or its box's centre) is nearest. Instances that truly
    # overlap (a dataset's occlusions) would lose their shared pixels: for objects that tile the
    # ground, such as ice-wedge polygons.
    _C.MODEL.SAM.RESOLVE_OVERLAPS = False

    # SAM's iterative training: after the first prompt (box or point), CLICK_ROUNDS rounds each
    # add one click sampled in the error of the previous prediction (positive in a false
    # negative, negative in a false positive) with the previous low-resolution logits as mask
    # prompt, then MASK_ONLY_ROUNDS rounds with the mask prompt alone. The loss is taken at every
    # round (previous logits detached); memory stays that of one round of one chunk.
    _C.MODEL.SAM.ITERATIVE = CN()
    _C.MODEL.SAM.ITERATIVE.ENABLED = False
    _C.MODEL.SAM.ITERATIVE.CLICK_ROUNDS = 8
    _C.MODEL.SAM.ITERATIVE.MASK_ONLY_ROUNDS = 2

    # Interactive evaluation (tools/train_net.py --interactive): per instance, the first prompt
    # then corrective clicks at the interior of the largest error region, up to MAX_CLICKS in all;
    # mIoU@1/3/5/10, NoC@85/90 beside COCO AP. 0 = off.
    _C.MODEL.SAM.INTERACTIVE_EVAL = CN()
    _C.MODEL.SAM.INTERACTIVE_EVAL.MAX_CLICKS = 0

    _C.MODEL.SAM.LOSS = CN()
    # Weights of the per-instance losses (SAM paper: focal 20 : dice 1 : IoU-prediction MSE 1).
    _C.MODEL.SAM.LOSS.FOCAL_WEIGHT = 20.0
    _C.MODEL.SAM.LOSS.DICE_WEIGHT = 1.0
    _C.MODEL.SAM.LOSS.IOU_WEIGHT = 1.0
    # Sigmoid focal loss parameters (alpha < 0 disables the class balancing term).
    _C.MODEL.SAM.LOSS.FOCAL_ALPHA = 0.25
    _C.MODEL.SAM.LOSS.FOCAL_GAMMA = 2.0
    # Pixels the focal loss of an instance is averaged over: "image" (every pixel, as SAM) or
    # "box" (its box grown by half its size each side), which keeps objects that cover a tiny
    # share of the image from being outweighed by its background.
    _C.MODEL.SAM.LOSS.FOCAL_REGION = "image"

    # Prompts decoded together. The mask decoder copies the image embedding once per prompt, so
    # this bounds memory; gradients of all chunks reach the image encoder. 0 = all prompts of an
    # image at once (memory grows with the number of instances). Each chunk also has a fixed cost
    # (SAM's decoder is ~1,600 operator calls forward): at ViT-B size 32 prompts hold ~3.5 GB and
    # the fixed cost is negligible; tiny CPU decoders (64 channels, 16 x 16 embedding) ran at 0.92
    # of one-shot speed with 32 and 0.93-0.96 with 64 (benchmarks/train_memory.py).
    _C.MODEL.SAM.PROMPTS_PER_CHUNK = 32
    # Train on at most this many (randomly chosen) instances per image; 0 = all of them.
    # Inference always uses every prompt.
    _C.MODEL.SAM.MAX_INSTANCES_PER_IMAGE = 0
    # Mask logits above this are foreground.
    _C.MODEL.SAM.MASK_THRESHOLD = 0.0
    # Test-time augmentation: "" (off), "flip" (the image and its mirror) or "d4" (its 8 rotations
    # and reflections, for overhead imagery): each prompt is decoded on every view (each encoded as
    # an image) and the masks' logits and predicted IoUs are averaged. Costs one encoder and decoder
    # pass per view; not with the interactive evaluation.
    _C.MODEL.SAM.TEST_AUG = ""

    # INPUT.RANDOM_FLIP (Detectron2's key) takes one more value here: "d4", each of the 8
    # rotations and reflections of a training image with probability 1/8 (overhead imagery).

    # DATALOADER.SAMPLER_TRAIN (Detectron2's key) takes one more value here: "InstanceRepeatFactor",
    # an image with n instances repeats max(1, n / MODEL.SAM.MAX_INSTANCES_PER_IMAGE) times per
    # epoch (Detectron2's RepeatFactorTrainingSampler), so that the instances of dense images are
    # as likely to be trained on as the others despite the cap.

    # When a training crop leaves no instance, try another crop of the same image this many times
    # before the data loader draws another image.
    _C.INPUT.CROP.MAX_RETRIES = 10
    # Data problems (missing image, size mismatch, bad polygon, zero-area box): False = stop with an
    # error naming the file and record; True = skip the record, log and count it.
    _C.DATASETS.SKIP_INVALID = False

    # Folder that holds datasets (DATASETS.ROOT/NAME/...). Names in DATASETS.TRAIN/TEST of the form
    # NAME_train / NAME_test that are not registered yet are registered from there
    # (see sam_prompt.data.register_dataset); "iwp_synthetic" is generated on first use.
    _C.DATASETS.ROOT = "data"
    # VIA region attribute that holds the class name ("" = the only attribute, or "object_name").
    _C.DATASETS.VIA_CLASS_ATTRIBUTE = ""
    # If not empty, every class becomes this one class (e.g. "iwp").
    _C.DATASETS.MERGE_CLASSES = ""
    # A dataset with one annotation file is split by image into NAME_train and NAME_test: this
    # share of the images (chosen by a hash of the file name, so adding images moves no other)
    # is the test split. 0 = both splits are all images (development only; warned).
    _C.DATASETS.TEST_FRACTION = 0.2

    # Autocast dtype of SOLVER.AMP.ENABLED: "auto" (bfloat16 on the CPU, float16 with a gradient
    # scaler on CUDA), "bfloat16" or "float16" (CUDA only).
    _C.SOLVER.AMP.PRECISION = "auto"
    # "SGD" (Detectron2's default) or "ADAMW" (what SAM was trained with).
    _C.SOLVER.OPTIMIZER = "ADAMW"

    _C.MODEL.TIMM = CN()
    # timm model with features_only support, e.g. "mvitv2_tiny", "mvitv2_small", "mvitv2_base".
    _C.MODEL.TIMM.NAME = "mvitv2_tiny"
    # Feature levels it returns (named res2..res5 by stride for the FPN).
    _C.MODEL.TIMM.OUT_INDICES = [0, 1, 2, 3]
    # Fixed input size of models that need one (MViTv2, ViT); inputs are padded to it. 0 = none.
    _C.MODEL.TIMM.IMG_SIZE = 512
    # Local file of the full timm model's weights (nothing is downloaded). "" = random init.
    _C.MODEL.TIMM.PRETRAINED_FILE = ""
    # 0 trains everything; 1 freezes the stem; k freezes the stem and the first k - 1 stages.
    _C.MODEL.TIMM.FREEZE_AT = 0

    # Where prompts come from: "ground_truth" (the instances of each image) or "detector" (boxes,
    # classes and scores of a detector: MODEL.SAM.DETECTOR). Detector prompts are for evaluation
    # and prediction; training always uses ground-truth prompts.
    _C.MODEL.SAM.PROMPT.SOURCE = "ground_truth"
    _C.MODEL.SAM.DETECTOR = CN()
    # (a) A Detectron2 detector run in the same process: its config file and weights.
    _C.MODEL.SAM.DETECTOR.CONFIG_FILE = ""
    _C.MODEL.SAM.DETECTOR.WEIGHTS = ""
    # (b) Or a COCO results file (e.g. the coco_instances_results.json of COCOEvaluator).
    _C.MODEL.SAM.DETECTOR.RESULTS_FILE = ""
    # Detections scoring less are not used as prompts.
    _C.MODEL.SAM.DETECTOR.SCORE_THRESHOLD = 0.05
    # Score of each mask: "detector" (the detection's score) or "detector_x_iou" (times SAM's
    # predicted IoU).
    _C.MODEL.SAM.DETECTOR.SCORE_MODE = "detector"
