"""Packaging of the configs: they stay at the repository's top level (``configs/``, the design card) and ship inside
the wheel as the ``captionless3d/configs`` directory, where :func:`captionless3d.hydra_utils.find_config_dir` looks
first. Every folder of ``configs/`` is declared as a data-only package so setuptools copies its YAML files. Everything
else about the package is in ``pyproject.toml``."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CONFIG_PACKAGES = ["captionless3d.configs"] + sorted(
    "captionless3d.configs." + ".".join(folder.relative_to(HERE / "configs").parts)
    for folder in (HERE / "configs").rglob("*") if folder.is_dir() and not folder.name.startswith((".", "__"))
)

setup(
    packages=find_packages("src") + CONFIG_PACKAGES,
    package_dir={"": "src", "captionless3d.configs": "configs"},
    package_data={"captionless3d": ["py.typed"], **{package: ["*.yaml"] for package in CONFIG_PACKAGES}},
)
