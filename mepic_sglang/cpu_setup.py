"""Activate the CPU shims in the current virtual environment (CPU installs only).

``python -m mepic_sglang.cpu_setup`` writes ``mepic_sglang_cpu.pth`` into this interpreter's
site-packages. The file

1. appends ``mepic_sglang/cpu_shims`` to ``sys.path`` (after site-packages, so a real
   ``sgl_kernel`` or ``torchvision`` still wins), and
2. defaults ``SGLANG_USE_CPU_ENGINE=1`` (SGLang's own CPU mode, which it reads once at import; set
   ``SGLANG_USE_CPU_ENGINE=0`` to override).

``python -m mepic_sglang.cpu_setup --remove`` deletes it. ``scripts/setup_cpu.sh`` calls this; a
GPU install never does.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

PTH_NAME = "mepic_sglang_cpu.pth"
SHIM_DIR = Path(__file__).resolve().parent / "cpu_shims"


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def pth_text() -> str:
    return (
        "# mepic-sglang CPU shims (python -m mepic_sglang.cpu_setup --remove to undo)\n"
        f"{SHIM_DIR}\n"
        "import os; os.environ.setdefault('SGLANG_USE_CPU_ENGINE', '1')\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mepic_sglang.cpu_setup", description=__doc__)
    parser.add_argument("--remove", action="store_true", help="remove the .pth file")
    args = parser.parse_args(argv)
    path = pth_path()
    if args.remove:
        path.unlink(missing_ok=True)
        print(f"removed {path}")
        return
    path.write_text(pth_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
