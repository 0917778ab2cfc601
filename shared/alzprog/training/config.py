"""Training configuration: preset YAML -> user YAML -> CLI overrides, resolved into one dict.

The resolved dict is what a run logs and saves, so a result can always be traced to the
exact values that produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alzprog.paths import presets_dir


def preset_path(family: str, preset: str) -> Path:
    """``presets/{family}_{preset}.yaml`` inside the package."""
    return presets_dir() / f"{family}_{preset}.yaml"


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_config(
    family: str,
    preset: str,
    config_file: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve a training config.

    Order (later wins): the packaged preset ``{family}_{preset}.yaml``, then the user's YAML
    file, then ``overrides`` (values that are None are ignored, so unset CLI flags keep the
    defaults). Nested keys may be given as ``"a.b"`` in ``overrides``.
    """
    path = preset_path(family, preset)
    if not path.is_file():
        available = sorted(p.stem.split("_", 1)[1] for p in presets_dir().glob(f"{family}_*.yaml"))
        raise FileNotFoundError(f"no preset {preset!r} for {family}; available: {', '.join(available) or 'none'}")
    cfg: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    if config_file is not None:
        user = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{config_file}: top level must be a mapping")
        _deep_update(cfg, user)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        target = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    cfg["preset"] = preset
    cfg["family"] = family
    return cfg


def save_config(cfg: dict[str, Any], path: Path | str) -> Path:
    """Write the resolved config as YAML (keys in insertion order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
