"""Install SAMPrompt (the ``sam_prompt`` package in ``projects/SAMPrompt``).

torch and detectron2 are deliberately not listed: detectron2 is not on PyPI, and an unpinned torch
would replace a user's own CUDA build. ``tools/setup_env.sh`` (run by ``make test``) installs both
when they are missing and never replaces them when they are present.
"""

from setuptools import find_packages, setup

setup(
    name="sam-prompt",
    version="0.1.0",
    description="Fine-tune and evaluate Segment Anything with box/point prompts in Detectron2",
    python_requires=">=3.9",
    package_dir={"": "projects/SAMPrompt"},
    packages=find_packages("projects/SAMPrompt", include=["sam_prompt", "sam_prompt.*"]),
    install_requires=[
        "segment-anything>=1.0",
        "pycocotools>=2.0.6",
        "faster-coco-eval>=1.6",  # C++ COCOeval when detectron2's compiled ops are missing
        "fvcore",
        "iopath",
        "timm>=1.0.3",
        "shapely>=2.0",
        "rasterio>=1.3",
        "scipy",
        "tqdm",
        "opencv-python-headless",  # detectron2.utils.visualizer
        "pyogrio>=0.7",  # GeoPackage outputs (GDAL)
    ],
    extras_require={
        # tools/export_model.py --format onnx (export and its onnxruntime check)
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        # tools/predict.py --ray (Ray Data on a local instance or a cluster)
        "ray": ["ray[data]>=2.40"],
        # MODEL.SAM.LORA (adapters on the image encoder)
        "lora": ["peft>=0.13"],
        # what `make test` installs: the test runner and every optional path the tests cover
        "dev": ["pytest>=7", "onnx>=1.15", "onnxruntime>=1.17", "ray[data]>=2.40", "peft>=0.13"],
    },
)
