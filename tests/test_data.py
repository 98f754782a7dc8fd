"""Dataset formats, registration, checks and the synthetic IWP generator."""

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from common import REPO, SHARED_IWP
from detectron2.data import DatasetCatalog, MetadataCatalog

from sam_prompt import InvalidRecordError
from sam_prompt.data import (
    SyntheticIWPSpec,
    find_problems,
    generate_dataset,
    load_records,
    register_dataset,
    write_dataset,
)

SMALL = SyntheticIWPSpec(num_train=3, num_test=2, image_size=128, cell_spacing=40, seed=7)


def _tree_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def via_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    generate_dataset(str(root), SMALL, fmt="via")
    return root


def _canonical(records):
    out = []
    for r in sorted(records, key=lambda r: os.path.basename(r["file_name"])):
        out.append(
            (
                os.path.basename(r["file_name"]),
                r["height"],
                r["width"],
                [
                    (
                        a["category_name"],
                        a.get("category_id"),
                        np.round(a["segmentation"][0], 2).tolist(),
                    )
                    for a in r["annotations"]
                ],
            )
        )
    return out


def test_every_format_loads_to_the_same_dicts(via_root, tmp_path):
    ref_train, ref_test = register_dataset("synth", str(via_root.parent))
    reference = {
        s: _canonical(DatasetCatalog.get(n)) for s, n in (("train", ref_train), ("test", ref_test))
    }
    assert reference["train"] and all(r[3] for r in reference["train"])
    classes = MetadataCatalog.get(ref_train).thing_classes
    assert classes == ["highcenter", "lowcenter"]

    for fmt in ("coco", "detectron2"):
        root = tmp_path / fmt / "synth"
        shutil.copytree(via_root, root)
        for split in ("train", "test"):
            os.remove(root / split / "via_region_data.json")
            records = [
                dict(r, file_name=os.path.basename(r["file_name"]))
                for r in DatasetCatalog.get(f"synth_{split}")
            ]
            write_dataset(str(root), split, records, classes, fmt)
        names = register_dataset("synth", str(tmp_path / fmt))
        assert MetadataCatalog.get(names[0]).source_format == fmt
        assert MetadataCatalog.get(names[0]).thing_classes == classes
        for split, name in zip(("train", "test"), names):
            assert _canonical(DatasetCatalog.get(name)) == reference[split], fmt


def test_via1_regions_dict_and_class_attribute(via_root, tmp_path):
    root = tmp_path / "v1" / "synth"
    shutil.copytree(via_root, root)
    for split in ("train", "test"):
        path = root / split / "via_region_data.json"
        via = json.loads(path.read_text())
        for entry in via.values():
            regions = entry["regions"]
            for r in regions:
                r["region_attributes"] = {
                    "type": r["region_attributes"]["object_name"],
                    "note": "x",
                }
            entry["regions"] = {str(i): r for i, r in enumerate(regions)}
        path.write_text(json.dumps(via))
    with pytest.raises(ValueError, match="which region attribute"):
        register_dataset("synth", str(tmp_path / "v1"))
    names = register_dataset("synth", str(tmp_path / "v1"), class_attribute="type")
    original = _canonical(load_records(str(via_root / "train" / "via_region_data.json")).records)
    got = _canonical(DatasetCatalog.get(names[0]))
    strip = lambda rows: [(r[:3], [(a[0], a[2]) for a in r[3]]) for r in rows]  # noqa: E731
    assert strip(got) == strip(original)
    assert MetadataCatalog.get(names[0]).thing_classes == ["highcenter", "lowcenter"]


def test_merge_classes(via_root):
    train, _ = register_dataset("synth", str(via_root.parent), merge_classes="iwp")
    assert MetadataCatalog.get(train).thing_classes == ["iwp"]
    cats = {a["category_id"] for r in DatasetCatalog.get(train) for a in r["annotations"]}
    assert cats == {0}


def test_generator_is_deterministic(tmp_path):
    generate_dataset(str(tmp_path / "a"), SMALL)
    generate_dataset(str(tmp_path / "b"), SMALL)
    generate_dataset(str(tmp_path / "c"), SyntheticIWPSpec(**{**SMALL.__dict__, "seed": 8}))
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


REALISTIC = SyntheticIWPSpec(
    num_train=2, num_test=1, image_size=128, cell_spacing=40, seed=7, style="realistic"
)


def test_realistic_tiles_vary_in_look_and_keep_valid_labels():
    from shapely.geometry import Polygon

    from sam_prompt.data.synthetic import generate_tile

    tiles = [generate_tile(REALISTIC, "train", i) for i in range(6)]
    again, _ = generate_tile(REALISTIC, "train", 3)
    assert np.array_equal(again, tiles[3][0])  # deterministic
    means = np.array([img.reshape(-1, 3).mean(0) for img, _ in tiles])
    assert means.std(0).max() > 10  # another palette per tile, not one look
    for img, annos in tiles:
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert annos and all(a["category_id"] in (0, 1) for a in annos)
        for a in annos:
            xy = np.asarray(a["segmentation"][0]).reshape(-1, 2)
            assert xy.min() >= 0 and xy.max() <= 128
            assert Polygon(xy).is_valid and Polygon(xy).area >= REALISTIC.min_cell_area - 1
    with pytest.raises(ValueError, match="'clean' or 'realistic'"):
        generate_tile(SyntheticIWPSpec(style="photo"), "train", 0)


def test_synthetic_stamp_keeps_clean_datasets_and_refuses_another_style(tmp_path):
    from sam_prompt.data import ensure_synthetic_dataset

    clean = SyntheticIWPSpec(**{**REALISTIC.__dict__, "style": "clean"})
    root = ensure_synthetic_dataset(str(tmp_path), "synth", clean)
    # Datasets generated before styles existed carry stamps without the field: still valid.
    stamp = tmp_path / "synth" / ".spec.json"
    old = {k: v for k, v in json.loads(stamp.read_text()).items() if k != "style"}
    stamp.write_text(json.dumps(old))
    assert "style" not in json.loads(stamp.read_text())
    assert ensure_synthetic_dataset(str(tmp_path), "synth", clean) == root
    with pytest.raises(FileExistsError, match="another spec"):
        ensure_synthetic_dataset(str(tmp_path), "synth", REALISTIC)
    ensure_synthetic_dataset(str(tmp_path), "real", REALISTIC)
    stamp = json.loads((tmp_path / "real" / ".spec.json").read_text())
    assert stamp["style"] == "realistic"
    assert len(load_records(str(tmp_path / "real" / "train" / "via_region_data.json")).records) == 2


def test_generator_labels_every_cell_with_both_classes(via_root):
    records = load_records(str(via_root / "train" / "via_region_data.json")).records
    names = {a["category_name"] for r in records for a in r["annotations"]}
    assert names == {"highcenter", "lowcenter"}
    assert all(len(r["annotations"]) >= 5 for r in records)


def test_missing_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset_train.json"):
        register_dataset("empty", str(tmp_path))


# --- problems -------------------------------------------------------------------------------
@pytest.fixture
def broken(via_root):
    records = load_records(str(via_root / "train" / "via_region_data.json")).records
    for r in records:
        for a in r["annotations"]:
            a["category_id"] = 0
    return copy.deepcopy(records)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda rs: rs[0].update(file_name=rs[0]["file_name"] + ".gone"), "image file missing"),
        (lambda rs: rs[1].update(height=999), "but the record says 128x999"),
        (lambda rs: rs[0]["annotations"][0].update(segmentation=[[1, 1, 5, 5]]), "2 points"),
        (
            lambda rs: rs[0]["annotations"][1].update(
                segmentation=[[1, 1, 5, 1, 9, 1]], bbox=[1, 1, 9, 1]
            ),
            "zero-area box",
        ),
        (
            lambda rs: rs[0]["annotations"][2].update(
                segmentation=[[100, 100, 200, 100, 200, 140]], bbox=[100, 100, 200, 140]
            ),
            "outside the 128x128 image",
        ),
        (lambda rs: rs[2].update(image_id=rs[0]["image_id"]), "duplicate image_id"),
        (lambda rs: rs[0]["annotations"][3].update(category_id=5), "not a known class"),
    ],
)
def test_each_problem_is_reported_with_file_name(broken, breakage, expected):
    breakage(broken)
    problems = find_problems(broken, num_classes=2)
    assert len(problems) == 1, problems
    i, _, message = problems[0]
    assert expected in message
    assert os.path.basename(broken[i]["file_name"]) in message


def test_training_refuses_broken_data_unless_told_to_skip(via_root, tmp_path, caplog):
    root = tmp_path / "bad" / "synth"
    shutil.copytree(via_root, root)
    os.remove(root / "train" / "iwp_train_0001.png")
    with pytest.raises(InvalidRecordError, match=r"iwp_train_0001\.png.*missing"):
        register_dataset("synth", str(tmp_path / "bad"))
    train, _ = register_dataset("synth", str(tmp_path / "bad"), skip_invalid=True)
    assert len(DatasetCatalog.get(train)) == SMALL.num_train - 1


def test_check_dataset_tool(via_root, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", "check_dataset.py"), *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )

    good = run("--dataset", "synth", "--data-root", str(via_root.parent))
    assert good.returncode == 0, good.stderr
    assert (
        "images: 3" in good.stdout and "highcenter=" in good.stdout and "no problems" in good.stdout
    )

    root = tmp_path / "bad" / "synth"
    shutil.copytree(via_root, root)
    os.remove(root / "test" / "iwp_test_0001.png")
    bad = run("--dataset", "synth", "--data-root", str(tmp_path / "bad"))
    assert bad.returncode == 1
    assert "iwp_test_0001.png" in bad.stdout and "image file missing" in bad.stdout


# --- real data --------------------------------------------------------------------------------
needs_iwp = pytest.mark.skipif(
    not os.path.isdir(SHARED_IWP), reason=f"real IWP tiles not present at {SHARED_IWP}"
)


@needs_iwp
def test_real_iwp_val_loads():
    records, fmt, _, _ = load_records(os.path.join(SHARED_IWP, "via_region_data.json"))
    assert fmt == "via"
    assert len(records) == 129
    assert sum(len(r["annotations"]) for r in records) == 6045
    assert {a["category_name"] for r in records for a in r["annotations"]} == {
        "highcenter",
        "lowcenter",
    }
    assert all(r["height"] and r["width"] for r in records)


@needs_iwp
def test_real_iwp_val_problems_are_named_and_skippable():
    data_root = os.path.dirname(SHARED_IWP)
    with pytest.raises(InvalidRecordError, match=r"FID_\d+_Polygon_2\.jpg.*annotation \d+"):
        register_dataset("iwp-val", data_root)
    train, test = register_dataset("iwp-val", data_root, skip_invalid=True)
    n = {s: sum(len(r["annotations"]) for r in DatasetCatalog.get(s)) for s in (train, test)}
    assert n[train] + n[test] == 6045 - 13  # the 13 bad polygons of the README


@needs_iwp
@pytest.mark.slow
def test_few_training_iterations_on_real_iwp_val(tmp_path):
    """The README's command for the real tiles: a few iterations of the tiny SAM through --dataset."""
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file",
        os.path.join(REPO, "projects", "SAMPrompt", "configs", "sam_instant_test.yaml"),
        "--dataset",
        "iwp-val",
        "--data-root",
        os.path.dirname(SHARED_IWP),
        "DATASETS.SKIP_INVALID",
        "True",
        "DATASETS.TEST",
        "()",
        "SOLVER.MAX_ITER",
        "3",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    sizes = {
        s: int(re.search(rf"Registered iwp-val_{s}: (\d+) images", log).group(1))
        for s in ("train", "test")
    }
    assert sizes["train"] + sizes["test"] == 129 and 15 <= sizes["test"] <= 40  # ~20% held out
    with open(tmp_path / "out" / "metrics.json") as f:
        losses = [json.loads(l)["total_loss"] for l in f if "total_loss" in l]
    assert losses and np.isfinite(losses).all()
