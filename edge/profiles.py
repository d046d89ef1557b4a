"""The profile library: device profiles (device_profiles/*.yaml) by id, of either kind.

A profile's `kind` chooses its loader: `modbus` (edge/modbus/profile.py) or `mqtt`
(edge/mqtt/profile.py). Shipped profiles live in the repository's device_profiles/ folder;
a site can add its own folders (config `profiles_dirs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from common.yamlconf import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "device_profiles"


def profile_dirs(extra: list[str] | None = None) -> list[Path]:
    dirs = [Path(p) for p in (extra or [])]
    env = os.environ.get("POPLAR_PROFILES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(SHIPPED_DIR)
    return dirs


def _kind_of(path: Path) -> str:
    try:
        head = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return "unknown"
    return head.get("kind", "unknown") if isinstance(head, dict) else "unknown"


def load_profile_file(path: str | Path) -> Any:
    """Load and validate one profile file of any kind. Raises ConfigError (file, line, field)."""
    path = Path(path)
    kind = _kind_of(path)
    if kind == "modbus":
        from edge.modbus.profile import load_modbus_profile
        return load_modbus_profile(path)
    if kind == "mqtt":
        from edge.mqtt.profile import load_mqtt_profile
        return load_mqtt_profile(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    raise ConfigError(f"{path}:1: kind: expected 'modbus' or 'mqtt', got {kind!r}")


class ProfileLibrary:
    def __init__(self, extra_dirs: list[str] | None = None) -> None:
        self.dirs = profile_dirs(extra_dirs)
        self._cache: dict[str, Any] = {}

    def paths(self) -> dict[str, Path]:
        """Profile id -> file; earlier folders override later ones (a site may patch a model)."""
        found: dict[str, Path] = {}
        for d in self.dirs:
            if d.is_dir():
                for p in sorted(d.glob("*.yaml")):
                    found.setdefault(p.stem, p)
        return found

    def ids(self) -> list[str]:
        return sorted(self.paths())

    def get(self, profile_id: str) -> Any:
        if profile_id not in self._cache:
            path = self.paths().get(profile_id)
            if path is None:
                known = ", ".join(self.ids()) or "none"
                raise ConfigError(f"unknown profile {profile_id!r}; known profiles: {known}")
            self._cache[profile_id] = load_profile_file(path)
        return self._cache[profile_id]

    def kind(self, profile_id: str) -> str:
        path = self.paths().get(profile_id)
        return _kind_of(path) if path else "unknown"
