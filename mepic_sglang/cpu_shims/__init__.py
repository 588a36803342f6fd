"""Import-time stand-ins that let stock SGLang 0.5.23 run on a CPU-only machine.

PyPI has no CPU build of ``sgl_kernel`` (sglang-kernel) and its ``torchvision`` wheels are CUDA
builds that fail to import beside CPU torch. SGLang imports both at module level. The two
packages in this folder are put on ``sys.path`` by the ``.pth`` file that
``python -m mepic_sglang.cpu_setup`` writes into a CPU virtual environment. A ``.pth`` path entry
comes after site-packages, so a real ``sgl_kernel`` / ``torchvision`` installed there always
wins: the shims are only active where the real package is missing. GPU installs never write the
``.pth`` file.
"""
