"""mepic-sglang: an SGLang plugin for position-independent chunk caching (MEPIC) and multi-SLO
serving (HyperFlexis).

SGLang loads it from the ``sglang.srt.plugins`` entry point (:func:`mepic_sglang.plugin.register`)
in every process. This module stays import-light: it must not import SGLang or torch, because it is
imported by ``register()`` while SGLang is still loading plugins.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
