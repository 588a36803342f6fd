"""Entry point ``sglang.srt.plugins: mepic = mepic_sglang.plugin:register``.

SGLang's ``load_plugins()`` calls :func:`register` once in every process it starts (launcher,
scheduler, detokenizer, DP controller, ``Engine``) and then applies the registered hooks.
"""

from __future__ import annotations

import logging
import os

from mepic_sglang import __version__
from mepic_sglang.sglang import hooks

logger = logging.getLogger(__name__)


def register() -> None:
    """Register the hook table. Compatibility is checked when a plugin feature is enabled (fatal
    with ``--mepic-compat-check strict``) and reported by every scheduler."""
    hooks.register_all()
    logger.info("mepic-sglang %s registered in pid %d", __version__, os.getpid())
