import os
import sys

# Tests import their helpers as `common`, and the project by folder, as tools/train_net.py does.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "projects", "SAMPrompt"))


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def sam_log(caplog):
    """caplog that also sees the 'sam_prompt' logger (which setup_logger stops propagating)."""
    logger = logging.getLogger("sam_prompt")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
