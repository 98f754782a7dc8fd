import logging
import os
import sys

import pytest

# Tests import their helpers as `common`, and the project by folder, as tools/train_net.py does.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))
sys.path.append(os.path.join(HERE, "..", "tools"))  # entry points with a main(argv)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """COCO ground-truth conversions go to a temporary folder, not the user's cache."""
    os.environ["SAMPROMPT_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def sam_log(caplog):
    """caplog that also sees the 'sam_prompt' logger (which setup_logger stops propagating)."""
    logger = logging.getLogger("sam_prompt")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
