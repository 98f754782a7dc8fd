"""Bad input as users bring it: each case is a clear error naming the file/key, a counted skip, or
read correctly, never a silent wrong result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from common import REPO, polygon_ellipse, shapes_image, small_dataset, tiny_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from sam_prompt import SAMDatasetMapper
from sam_prompt.checkpoint import CheckpointError, SAMCheckpointer
from sam_prompt.data import (
    DatasetFormatError,
    InvalidRecordError,
    find_problems,
    load_records,
    read_image,
    register_dataset,
)
from sam_prompt.data.check import annotation_problem
from sam_prompt.engine import Trainer, coco_ground_truth


def check_dataset(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "check_dataset.py"), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )


def via_folder(folder, images, regions=None, name="via_region_data.json"):
    """A VIA 2 folder: images (file name -> PIL image), one ellipse region each (or ``regions``)."""
    os.makedirs(folder, exist_ok=True)
    via = {}
    for fn, im in images.items():
        im.save(
            os.path.join(folder, fn), **({"exif": im.info["exif"]} if "exif" in im.info else {})
        )
        xy = polygon_ellipse(im.width / 2, im.height / 2, im.width / 4, im.height / 4)
        default = [
            {
                "shape_attributes": {
                    "name": "polygon",
                    "all_points_x": xy[:, 0].tolist(),
                    "all_points_y": xy[:, 1].tolist(),
                },
                "region_attributes": {"object_name": "iwp"},
            }
        ]
        via[fn] = {
            "filename": fn,
            "size": 0,
            "regions": default if regions is None else regions,
            "file_attributes": {},
        }
    with open(os.path.join(folder, name), "w") as f:
        json.dump(via, f)
    return os.path.join(folder, name)


# --- images ---------------------------------------------------------------------------------
def test_16_bit_grayscale_is_stretched_not_clipped(tmp_path):
    # Values 1000..3000 (an 11-bit sensor): detectron2's read_image clips all of it to 255.
    ramp = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = str(tmp_path / "dem.png")
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = read_image(path)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255  # stretched between its 2nd and 98th percentiles
    assert np.all(np.diff(img[:, :, 0].ravel().astype(int)) >= 0)  # order kept: a ramp stays a ramp
    assert len(np.unique(img)) > 200
    rec = {"file_name": path, "height": 64, "width": 64, "image_id": 0, "annotations": []}
    out = SAMDatasetMapper(tiny_cfg(), is_train=False)(rec)
    assert out["image"].float().std() > 50  # not a white (or black) image


def _exif_rotated(w, h):
    """A w x h JPEG whose EXIF orientation (6: rotate 90) shows it as h x w."""
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.info["exif"] = exif.tobytes()
    return im


def test_exif_rotated_image_is_read_as_displayed(tmp_path):
    # Stored 80 wide x 50 high, displayed 50 wide x 80 high: the polygon reaches y = 70.
    region = {
        "shape_attributes": {
            "name": "polygon",
            "all_points_x": [10, 40, 25],
            "all_points_y": [10, 10, 70],
        },
        "region_attributes": {"object_name": "iwp"},
    }
    path = via_folder(str(tmp_path / "d"), {"rot.jpg": _exif_rotated(80, 50)}, regions=[region])
    (rec,) = load_records(path).records
    assert (rec["height"], rec["width"]) == (80, 50)  # as an annotation tool displays it
    assert read_image(rec["file_name"]).shape[:2] == (80, 50)
    rec["annotations"][0]["category_id"] = 0
    assert find_problems([rec], 1) == []
    out = SAMDatasetMapper(tiny_cfg(), is_train=False)(rec)
    assert (out["height"], out["width"]) == (80, 50) and len(out["instances"]) == 1


def test_truncated_and_rotated_images_are_found_and_skippable(tmp_path):
    root = tmp_path / "data" / "bad"
    good = Image.fromarray(np.full((64, 64, 3), 120, np.uint8))
    via_folder(
        str(root / "train"), {"good.png": good, "cut.jpg": good, "rot.jpg": _exif_rotated(64, 48)}
    )
    via_folder(str(root / "test"), {"good.png": good})
    data = open(root / "train" / "cut.jpg", "rb").read()
    open(root / "train" / "cut.jpg", "wb").write(data[: len(data) // 2])  # truncated JPEG
    # A COCO-style size recorded before the EXIF rotation: 64x48 where the image shows 48x64.
    via = json.loads((root / "train" / "via_region_data.json").read_text())
    coco = {
        "images": [
            {
                "id": i,
                "file_name": f"train/{k}",
                "height": 48 if k == "rot.jpg" else 64,
                "width": 64,
            }
            for i, k in enumerate(via)
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "iwp"}],
    }
    for i, (k, v) in enumerate(via.items()):
        r = v["regions"][0]["shape_attributes"]
        xy = np.stack([r["all_points_x"], r["all_points_y"]], 1)
        coco["annotations"].append(
            {
                "id": i + 1,
                "image_id": i,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [xy.ravel().tolist()],
                "bbox": [*xy.min(0), *(xy.max(0) - xy.min(0))],
            }
        )
    (root / "bad_train.json").write_text(json.dumps(coco))
    test = dict(coco, images=coco["images"][:1], annotations=coco["annotations"][:1])
    (root / "bad_test.json").write_text(json.dumps(test))
    # (the COCO layout is found first)
    with pytest.raises(InvalidRecordError) as e:
        register_dataset("bad", str(tmp_path / "data"))
    assert "cut.jpg" in str(e.value) and "rot.jpg" in str(e.value) and "EXIF" in str(e.value)
    train, _ = register_dataset("bad", str(tmp_path / "data"), skip_invalid=True)
    assert [os.path.basename(r["file_name"]) for r in DatasetCatalog.get(train)] == ["good.png"]
    report = check_dataset("--dataset", "bad", "--data-root", str(tmp_path / "data"))
    assert report.returncode == 1
    assert "cut.jpg" in report.stdout and "unreadable image" in report.stdout
    assert "rot.jpg" in report.stdout and "EXIF orientation applied" in report.stdout


def test_unreadable_image_in_training_is_a_counted_skip_with_skip_invalid(tmp_path):
    rec = shapes_image(
        str(tmp_path / "a.png"), [(polygon_ellipse(50, 50, 20, 15), 0)], size=(100, 100)
    )
    open(rec["file_name"], "wb").write(b"not an image")
    with pytest.raises(InvalidRecordError, match=r"a\.png"):
        SAMDatasetMapper(tiny_cfg(), is_train=True)(rec)
    m = SAMDatasetMapper(tiny_cfg(DATASETS__SKIP_INVALID=True), is_train=True)
    assert m(rec) is None and sum(m.counts.values()) == 1


# --- annotation files -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "regions, message",
    [
        ("oops", r"'regions' is a str"),
        (["oops"], r"region 0: a region is a str"),
        ([{"shape_attributes": "polygon"}], r"region 0: shape_attributes is a str"),
        ([{"shape_attributes": {"name": "rect", "x": 1}}], r"region 0: malformed rect shape"),
        (
            [{"shape_attributes": {"name": "circle", "cx": 1, "cy": 1, "r": 2}}],
            r"unsupported VIA shape 'circle'",
        ),
        (
            [
                {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": [1, 5, 5],
                        "all_points_y": [1, 1, 5],
                    },
                    "region_attributes": {},
                }
            ],
            r"region 0: the region has no attributes",
        ),
    ],
)
def test_malformed_via_regions_name_file_and_region(tmp_path, regions, message):
    path = via_folder(str(tmp_path), {"t.png": Image.new("RGB", (20, 20))}, regions=regions)
    with pytest.raises(DatasetFormatError, match=rf"via_region_data\.json.*t\.png.*{message}"):
        load_records(path)


def test_class_name_variants_are_one_class_and_flagged(tmp_path):
    root = tmp_path / "data" / "cls"
    images = {f"t{i}.png": Image.new("RGB", (40, 40), (90, 90, 90)) for i in range(3)}
    path = via_folder(str(root), images)
    via = json.loads(open(path).read())
    for (k, v), name in zip(via.items(), ["lowcenter", "Lowcenter", "lowcenter "]):
        v["regions"][0]["region_attributes"]["object_name"] = name
    open(path, "w").write(json.dumps(via))
    train, test = register_dataset("cls", str(tmp_path / "data"), test_fraction=0)
    assert MetadataCatalog.get(train).thing_classes == ["lowcenter"]
    assert {a["category_id"] for r in DatasetCatalog.get(train) for a in r["annotations"]} == {0}
    report = check_dataset("--dataset", "cls", "--data-root", str(tmp_path / "data"))
    assert "class-name variants" in report.stdout and "'Lowcenter'" in report.stdout


def test_empty_coco_file_is_a_problem(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "iwp"}]})
    )
    report = check_dataset("--json", str(path))
    assert report.returncode == 1 and "no images" in report.stdout


def test_messages_are_plain(tmp_path):
    nan = annotation_problem(
        {"segmentation": [[1.0, float("nan"), 5, 5, 9, 1]], "bbox": [1, 1, 9, 5]}
    )
    assert nan == "polygon with non-finite (NaN or infinite) coordinates"
    flat = annotation_problem(
        {"segmentation": [[1, 1, 5, 1, 9, 1]], "bbox": [np.float64(1), 1.0, 9, 1]}
    )
    assert flat == "zero-area box [1, 1, 9, 1]"
    rec = {
        "file_name": None,
        "image_id": 0,
        "height": 10,
        "width": 10,
        "annotations": [
            {
                "segmentation": [[1, 1, 30.5, 1, 30.5, 8]],
                "bbox": [np.float64(1), 1, 30.5, 8],
                "category_id": 0,
            }
        ],
    }
    (
        _,
        (_, _, box),
    ) = find_problems([rec], 1, decode_images=False)
    assert "np.float64" not in box and "[1, 1, 30.5, 8] outside the 10x10 image" in box


def test_coco_category_without_annotations_in_a_split_evaluates(tmp_path):
    # The test split has no "lowcenter" instance: evaluation used to die after training.
    root = tmp_path / "data" / "two"
    os.makedirs(root)
    recs = [
        shapes_image(
            str(root / f"{s}.png"), [(polygon_ellipse(60, 60, 30, 20), 0)], size=(128, 128)
        )
        for s in ("a", "b")
    ]
    cats = [{"id": 7, "name": "highcenter"}, {"id": 9, "name": "lowcenter"}]
    for split, r, cid in (("train", recs[0], 9), ("test", recs[1], 7)):
        a = r["annotations"][0]
        coco = {
            "images": [
                {
                    "id": 1,
                    "file_name": os.path.basename(r["file_name"]),
                    "height": 128,
                    "width": 128,
                }
            ],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": cid,
                    "iscrowd": 0,
                    "segmentation": a["segmentation"],
                    "bbox": [
                        a["bbox"][0],
                        a["bbox"][1],
                        a["bbox"][2] - a["bbox"][0],
                        a["bbox"][3] - a["bbox"][1],
                    ],
                }
            ],
            "categories": cats,
        }
        (root / f"two_{split}.json").write_text(json.dumps(coco))
    _, test = register_dataset("two", str(tmp_path / "data"))
    assert MetadataCatalog.get(test).thing_dataset_id_to_contiguous_id == {7: 0, 9: 1}
    coco_ground_truth(test)  # KeyError here before
    cfg = tiny_cfg(
        MODEL__META_ARCHITECTURE="FilledPromptBox",
        DATASETS__TEST=(test,),
        OUTPUT_DIR=str(tmp_path / "o"),
    )
    res = Trainer.test(cfg, build_model(cfg))
    assert 0 < res["segm"]["AP"] <= 100


# --- checkpoints ----------------------------------------------------------------------------
def test_sam_layout_file_as_model_weights_is_refused(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    official = build_model(cfg).sam.state_dict()  # image_encoder.*, prompt_encoder.*, ...
    path = str(tmp_path / "sam_custom.pth")
    torch.save(official, path)
    model = build_model(cfg)
    with pytest.raises(
        CheckpointError,
        match=r"sam_custom\.pth.*SAM parameters not in the file.*MODEL\.SAM\.CHECKPOINT",
    ):
        SAMCheckpointer.from_config(cfg, model).load(path)
    # Given where it belongs, the same file loads every tensor.
    cfg2 = tiny_cfg(MODEL__SAM__CHECKPOINT=path)
    loaded = build_model(cfg2)
    for k, v in official.items():
        torch.testing.assert_close(loaded.sam.state_dict()[k], v)
    # An intentional partial load: the decoder only.
    partial = {f"sam.{k}": v for k, v in official.items() if k.startswith("mask_decoder.")}
    torch.save({"model": partial}, str(tmp_path / "decoder.pth"))
    with pytest.raises(CheckpointError, match="image_encoder"):
        SAMCheckpointer.from_config(cfg, build_model(cfg)).load(str(tmp_path / "decoder.pth"))
    SAMCheckpointer.from_config(tiny_cfg(MODEL__SAM__ALLOW_PARTIAL_WEIGHTS=True), model).load(
        str(tmp_path / "decoder.pth")
    )
    torch.testing.assert_close(
        model.sam.mask_decoder.state_dict(), build_model(cfg2).sam.mask_decoder.state_dict()
    )


def test_fine_features_weights_into_a_model_without_them_are_refused(tmp_path):
    cfg = tiny_cfg(MODEL__SAM__FINE_FEATURES=8)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    # Dropped, the trained model's masks would silently change.
    with pytest.raises(CheckpointError, match=r"model_final\.pth.*FINE_FEATURES"):
        SAMCheckpointer.from_config(tiny_cfg(), build_model(tiny_cfg())).load(path)
    # The other way round they start fresh (zero: plain SAM), as LoRA adapters do.
    plain = str(tmp_path / "plain.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, plain)
    SAMCheckpointer.from_config(cfg, build_model(cfg)).load(plain)
    SAMCheckpointer.from_config(cfg, build_model(cfg)).load(path)
    # A mask refinement likewise: refused when dropped, fresh (zero: no change) when absent.
    refined = tiny_cfg(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4)
    path2 = str(tmp_path / "refined.pth")
    torch.save({"model": build_model(refined).state_dict()}, path2)
    with pytest.raises(CheckpointError, match=r"refined\.pth.*FINE_REFINE"):
        SAMCheckpointer.from_config(cfg, build_model(cfg)).load(path2)
    SAMCheckpointer.from_config(refined, build_model(refined)).load(path)
    # Rescored masks likewise: their scores would change.
    rescored = tiny_cfg(
        MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4, MODEL__SAM__FINE_RESCORE=True
    )
    path3 = str(tmp_path / "rescored.pth")
    torch.save({"model": build_model(rescored).state_dict()}, path3)
    with pytest.raises(CheckpointError, match=r"rescored\.pth.*FINE_RESCORE"):
        SAMCheckpointer.from_config(refined, build_model(refined)).load(path3)
    SAMCheckpointer.from_config(rescored, build_model(rescored)).load(path2)
    # Further refinement passes likewise.
    passes = tiny_cfg(
        MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_REFINE=4, MODEL__SAM__FINE_REFINE_PASSES=2
    )
    path5 = str(tmp_path / "two_passes.pth")
    torch.save({"model": build_model(passes).state_dict()}, path5)
    with pytest.raises(CheckpointError, match=r"two_passes\.pth.*FINE_REFINE_PASSES"):
        SAMCheckpointer.from_config(refined, build_model(refined)).load(path5)
    SAMCheckpointer.from_config(passes, build_model(passes)).load(path2)
    # A deeper stem likewise: refused when its blocks would be dropped, fresh when absent.
    deep = tiny_cfg(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_DEPTH=2)
    path4 = str(tmp_path / "deep.pth")
    torch.save({"model": build_model(deep).state_dict()}, path4)
    shallower = tiny_cfg(MODEL__SAM__FINE_FEATURES=8, MODEL__SAM__FINE_DEPTH=1)
    with pytest.raises(CheckpointError, match=r"deep\.pth.*FINE_DEPTH"):
        SAMCheckpointer.from_config(shallower, build_model(shallower)).load(path4)
    SAMCheckpointer.from_config(deep, build_model(deep)).load(path)


def test_resume_skips_broken_checkpoints(tmp_path, sam_log):
    name = small_dataset(tmp_path)
    out = str(tmp_path / "run")
    opts = dict(
        DATASETS__TRAIN=(name,),
        DATASETS__TEST=(),
        OUTPUT_DIR=out,
        SOLVER__MAX_ITER=6,
        SOLVER__CHECKPOINT_PERIOD=2,
    )
    trainer = Trainer(tiny_cfg(**opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    open(os.path.join(out, "model_final.pth"), "wb").close()  # zero bytes
    data = open(os.path.join(out, "model_0000005.pth"), "rb").read()
    open(os.path.join(out, "model_0000005.pth"), "wb").write(data[:1000])  # truncated
    trainer = Trainer(tiny_cfg(**dict(opts, SOLVER__MAX_ITER=8)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4  # from model_0000003.pth, the newest readable
    assert "model_final.pth" in sam_log.text and "model_0000005.pth" in sam_log.text
    assert "Resumed from" in sam_log.text and "model_0000003.pth" in sam_log.text
    for f in ("model_final.pth", "model_0000005.pth", "model_0000003.pth", "model_0000001.pth"):
        os.truncate(os.path.join(out, f), 0)
    with pytest.raises(CheckpointError, match="No readable checkpoint"):
        Trainer(tiny_cfg(**opts)).resume_or_load(resume=True)


# --- train_net.py as a superset of detectron2's ---------------------------------------------
@pytest.mark.parametrize(
    "kind, evaluator",
    [
        ("coco", "SAMCOCOEvaluator"),
        ("lvis", "LVISEvaluator"),
        ("sem_seg", "SemSegEvaluator"),
        ("coco_panoptic_seg", "DatasetEvaluators"),
        ("pascal_voc", "PascalVOCDetectionEvaluator"),
        ("cityscapes_instance", "CityscapesInstanceEvaluator"),
    ],
)
def test_stock_detectron2_config_gets_detectron2s_evaluators(tmp_path, kind, evaluator):
    from detectron2 import model_zoo

    from sam_prompt.config import load_config

    cfg = load_config(
        model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
        ["OUTPUT_DIR", str(tmp_path)],
    )
    name = f"stock_{kind}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    meta = dict(
        evaluator_type=kind,
        thing_classes=["a"],
        stuff_classes=["a", "b"],
        ignore_label=255,
        json_file=str(tmp_path / "x.json"),
        panoptic_json="",
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={0: 0, 1: 1},
        panoptic_root="",
        gt_dir=str(tmp_path),
        dirname=str(tmp_path),
        year=2012,
        split="val",
    )
    (tmp_path / "x.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    )
    MetadataCatalog.get(name).set(**meta)
    try:
        ev = Trainer.build_evaluator(cfg, name)
    except (ImportError, ModuleNotFoundError) as e:  # lvis / cityscapesscripts are optional extras
        pytest.skip(f"{evaluator} needs an optional package: {e}")
    assert type(ev).__name__ == evaluator
    if kind == "coco_panoptic_seg":
        assert [type(e).__name__ for e in ev._evaluators] == [
            "SemSegEvaluator",
            "SAMCOCOEvaluator",
            "COCOPanopticEvaluator",
        ]
