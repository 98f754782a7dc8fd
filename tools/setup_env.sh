#!/usr/bin/env bash
# Set up the Python environment SAMPrompt needs, idempotently.
#
# Usage: tools/setup_env.sh [PYTHON]
#   With no argument a virtual environment is created in .venv (override with VENV=dir).
#   With PYTHON (an interpreter of an environment you already have, e.g. one with your own
#   CUDA build of torch and detectron2) nothing is created: only what is missing is added.
#
# What is never done: replacing an importable torch or detectron2. When detectron2 is not
# importable, FAIR's v0.6 Python sources (PyPI: pb1-detectron2==0.6, which ships no C++ sources)
# are installed as a pure-Python package with a placeholder for the compiled ops.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ $# -ge 1 ]; then
  py=$1
else
  venv=${VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    python3 -m venv "$venv"
  fi
  py=$venv/bin/python
fi
pip() { "$py" -m pip --disable-pip-version-check "$@"; }
has() { "$py" -c "import $1" >/dev/null 2>&1; }

# 1. torch: pinned, the release that lies on these machines' disks (an unpinned torch would
#    download a multi-GB CUDA build).
if ! has torch; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  pip install -q torch==2.14.1 torchvision==0.29.1
elif ! has torchvision; then
  echo "[setup] torch is installed but torchvision is not: install the torchvision built for your torch" >&2
  echo "        (installing it here could replace your torch)" >&2
  exit 1
fi

# 2. detectron2's pure-Python dependencies, then detectron2 itself only when it is missing.
#    setuptools<81: v0.6 imports pkg_resources. Pillow<10: v0.6 uses Image.LINEAR.
if ! has detectron2; then
  echo "[setup] detectron2 not importable: installing FAIR's v0.6 Python sources (no compiled ops)"
  pip install -q "setuptools<81" "Pillow<10" "numpy<2.6" fvcore iopath yacs termcolor tabulate \
    cloudpickle matplotlib omegaconf "hydra-core>=1.1" pycocotools tensorboard
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$tmp" pb1-detectron2==0.6
  tar -xzf "$tmp"/pb1*detectron2-0.6.tar.gz -C "$tmp"
  src=$(dirname "$(find "$tmp" -maxdepth 3 -type d -name detectron2 -path '*/detectron2' | head -n 1)")
  site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp -r "$src/detectron2" "$site/detectron2"
  # model_zoo.get_config_file() looks for the configs inside the package.
  [ -d "$src/configs" ] && cp -r "$src/configs" "$site/detectron2/model_zoo/configs"
  cat > "$site/detectron2/_C.py" <<'PY'
"""Placeholder for detectron2's compiled ops (not built in this environment).

Installed by SAMPrompt's tools/setup_env.sh because the PyPI copy of detectron2 0.6 ships no C++
sources. Pure-Python parts of detectron2 work; ops that need this module raise a clear error.
"""

COMPILED = False


def get_compiler_version():
    return "not compiled (placeholder detectron2._C)"


def get_cuda_version():
    return "not compiled (placeholder detectron2._C)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"detectron2._C.{name} is unavailable: this detectron2 was installed without its compiled "
        "ops (deformable conv, rotated boxes, fast COCOeval). Build detectron2 from source to use it."
    )
PY
fi

# 3. The project and the rest of its dependencies (declared in setup.py), editable.
echo "[setup] installing SAMPrompt (pip install -e .)"
pip install -q -e ".[dev]"
"$py" -c "import detectron2, torch, segment_anything, sam_prompt; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__)"
