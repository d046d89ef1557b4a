"""The edge agent's config file (YAML), validated once, on load.

`poplar-edge init` writes one; configs/edge.example.yaml shows every setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator

from common.broker_config import BrokerConfig as SharedBrokerConfig
from common.wire import ID_PATTERN, WIRE_VERSION, WIRE_VERSIONS
from common.yamlconf import StrictModel as _Strict, load_model

ENV_VAR = "POPLAR_EDGE_CONFIG"
DEFAULT_PATH = "/etc/poplar/edge.yaml"


class BrokerConfig(SharedBrokerConfig):
    client_id: str | None = None


class UplinkConfig(BrokerConfig):
    batch_max_points: int = Field(5000, ge=1, le=100_000)
    batch_max_wait_s: float = Field(1.0, gt=0, le=60, description="longest a live point waits to be batched")
    ack_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_inflight: int = Field(8, ge=1, le=256, description="batches sent and not yet acknowledged")
    wire_version: int = Field(WIRE_VERSION, description=(
        "uplink batch format (docs/wire-format.md): 2 is columnar and costs the collector much less; "
        "1 only while the central collector is older (it counts v2 batches as malformed and never acks them)"))

    @field_validator("wire_version")
    @classmethod
    def _wire_version(cls, v: int) -> int:
        if v not in WIRE_VERSIONS:
            raise ValueError(f"use {WIRE_VERSION}, or 1 while the central collector is too old to read "
                             f"v{WIRE_VERSION} (docs/wire-format.md)")
        return v


class OutboxConfig(_Strict):
    max_bytes: int = Field(2 * 1024**3, ge=1024 * 1024, description="size cap of the outbox, bytes")
    commit_interval_s: float = Field(0.05, gt=0, le=5)


class ModbusConfig(_Strict):
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=10)
    max_parallel_per_endpoint: int = Field(1, ge=1, le=32)
    max_gap: int | None = Field(None, ge=0, le=125, description="override every profile's largest gap worth reading")


class PrivacyConfig(_Strict):
    person_ids: Literal["pseudonymize", "drop"] = "pseudonymize"
    secret_file: str | None = Field(None, description="per-site secret for pseudonyms; default STATE_DIR/site-secret")


class AnalyticsConfig(_Strict):
    faces: bool = False
    meter_anomaly: bool = False
    care_watch: bool = False
    time_zone: str = Field("Asia/Shanghai", description="local time zone of meter days and care-watch hours (IANA name)")
    anomaly_threshold: float | None = Field(None, gt=0, description="override the anomaly model's threshold (site tuning)")

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Asia/Shanghai") from None
        return v


class EdgeConfig(_Strict):
    site: str = Field(description="site (compound) id, e.g. sunny-garden")
    gateway: str = Field(description="this gateway box's id, e.g. gw-01")
    state_dir: str = Field(description="folder for the outbox, device registry and secrets")
    local_broker: BrokerConfig | None = Field(None, description="the box's own MQTT broker (gates, elevators)")
    uplink: UplinkConfig
    outbox: OutboxConfig = OutboxConfig()
    modbus: ModbusConfig = ModbusConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    profiles_dirs: list[str] = Field(default_factory=list, description="extra folders of device profiles")
    health_interval_s: float = Field(60.0, gt=0, le=3600)
    registry_reload_s: float = Field(2.0, gt=0, le=600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("site", "gateway")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-' (no spaces or '/')")
        return v

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def registry_db(self) -> Path:
        return self.state_path / "registry.db"

    @property
    def outbox_db(self) -> Path:
        return self.state_path / "outbox.db"

    @property
    def status_file(self) -> Path:
        return self.state_path / "status.json"

    @property
    def secret_file(self) -> Path:
        return Path(self.privacy.secret_file) if self.privacy.secret_file else self.state_path / "site-secret"


def resolve_path(path: str | None) -> Path:
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: str | Path) -> EdgeConfig:
    """Load and validate; raises common.yamlconf.ConfigError naming file, line and field."""
    cfg = load_model(EdgeConfig, path)
    # Relative state_dir is relative to the config file, so a config folder can be moved whole.
    if not Path(cfg.state_dir).is_absolute():
        cfg.state_dir = str((Path(path).parent / cfg.state_dir).resolve())
    return cfg


def dump(cfg: EdgeConfig) -> str:
    data = cfg.model_dump(exclude_none=True, exclude_defaults=False)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
