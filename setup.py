"""Packaging for casd.

The Triton kernels live in the top-level folder ``kernels/`` but are installed as
``casd.kernels``: the bare name ``kernels`` belongs to an unrelated PyPI project.
"""
import re
from pathlib import Path

from setuptools import setup


def read_version() -> str:
    """casd/_version.py holds the version; read, not imported (torch may not be installed yet)."""
    text = (Path(__file__).parent / "casd" / "_version.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


setup(
    name="casd",
    version=read_version(),
    license="MIT",
    description=(
        "Confidence-Aware Self-Distillation for multimodal sentiment analysis with "
        "missing modalities, with fused Triton kernels"
    ),
    python_requires=">=3.10",
    packages=["casd", "casd.data", "casd.study", "casd.kernels", "casd.kernels.fused"],
    package_dir={"casd": "casd", "casd.data": "casd/data", "casd.study": "casd/study",
                 "casd.kernels": "kernels", "casd.kernels.fused": "kernels/fused"},
    package_data={"casd": ["py.typed"]},  # PEP 561: the package ships its type hints
    # The ranges the tests have passed on (README, "Tested versions"): Triton 3.6.0 (the GPU
    # machines') and 3.9.0 (CI); numpy 2.0.2 and 2.4.6 (1.26 fails: the tests use
    # np.trapezoid); torch 2.13 (CI), and 2.11 is the GPU machines' release.
    install_requires=[
        "torch>=2.11",
        "triton>=3.6,<3.10",
        "numpy>=2.0",
        "tqdm>=4.60",        # progress bars for training and evaluation
        "matplotlib>=3.6",   # metric-versus-missing-rate plots
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "hypothesis>=6",
            "scipy>=1.10",
            "scikit-learn>=1.2",  # independent cross-check of the MMSA metric semantics
            "mpmath>=1.3",  # 50-digit references for the in-kernel lgamma/digamma (torch pulls it in too)
        ],
        # GPU profiling: NVML readings (device, power, energy) beside the benchmark timings.
        "bench": ["pytest>=7", "pytest-benchmark>=4", "nvidia-ml-py>=12"],
    },
    entry_points={"console_scripts": [
        "casd-train=casd.train:main",
        "casd-predict=casd.predict:main",
        "casd-study=casd.study.cli:main",
        "casd=casd.mmsa_run:main",  # MMSA's command line: casd -m casd -d mosi -s 1111 -s 1112
    ]},
)
