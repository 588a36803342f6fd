"""Test-only fault injection in server processes (see ``sitecustomize.py`` here)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def env(**faults: str) -> dict[str, str]:
    """Environment for a server process with ``faults`` (``MEPIC_FAULT_*`` variables) on."""
    paths = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths), **faults}
