"""Where the project keeps its data by default (overridable with ALZPROG_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def data_home() -> Path:
    """The project's data folder: ``$ALZPROG_HOME``, else ``./data`` under the working directory."""
    return Path(os.environ.get("ALZPROG_HOME", Path.cwd() / "data")).resolve()


def presets_dir() -> Path:
    """Folder of the YAML presets shipped inside the package (``quick``, ``full``)."""
    return PACKAGE_DIR / "presets"
