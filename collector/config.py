"""The collector's config file (YAML), validated once, on load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.mqtt import MqttUrl, TlsFiles
from common.yamlconf import load_model

ENV_VAR = "POPLAR_COLLECTOR_CONFIG"
DEFAULT_PATH = "/etc/poplar/collector.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def files(self) -> TlsFiles:
        return TlsFiles(self.ca_file, self.cert_file, self.key_file, self.insecure)


class BrokerConfig(_Strict):
    url: str = Field(description="central broker, mqtt://HOST:PORT or mqtts://HOST:PORT")
    username: str | None = None
    password: str | None = None
    client_id: str | None = Field(None, description="default: poplar-collector-<host>-<pid>")
    tls: TlsConfig | None = None
    shared_group: str | None = Field(
        "poplar-collectors", description="MQTT shared-subscription group; collectors in one group share the load")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        MqttUrl.parse(v)
        return v

    def parsed(self) -> MqttUrl:
        return MqttUrl.parse(self.url)


class Influx1Sink(_Strict):
    type: Literal["influxdb1"] = "influxdb1"
    url: str = Field(description="http://HOST:8086")
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=300)
    gzip: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected http://HOST:PORT or https://HOST:PORT")
        return v.rstrip("/")


class Influx2Sink(_Strict):
    type: Literal["influxdb2"]
    url: str
    org: str
    bucket: str
    token: str
    timeout_s: float = Field(10.0, gt=0, le=300)
    gzip: bool = True

    _url = field_validator("url")(Influx1Sink._url.__func__)


class Limits(_Strict):
    max_batch_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="compressed payload size")
    max_points_per_batch: int = Field(100_000, ge=1)
    max_tags: int = Field(16, ge=3)
    max_fields: int = Field(64, ge=1)
    max_string_len: int = Field(1024, ge=16)
    max_past_s: float = Field(30 * 86400, gt=0, description="refuse points older than this")
    max_future_s: float = Field(600, gt=0, description="refuse points further ahead than this")


class CollectorConfig(_Strict):
    broker: BrokerConfig
    sink: Annotated[Union[Influx1Sink, Influx2Sink], Field(discriminator="type")]
    state_dir: str = Field(description="folder for the gateway registry")
    limits: Limits = Limits()
    health_interval_s: float = Field(30.0, gt=0, le=3600)
    name: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}",
                      description="this collector's name in collector_health")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def gateways_db(self) -> Path:
        return self.state_path / "gateways.db"


def resolve_path(path: str | None) -> Path:
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: str | Path) -> CollectorConfig:
    cfg = load_model(CollectorConfig, path)
    if not Path(cfg.state_dir).is_absolute():
        cfg.state_dir = str((Path(path).parent / cfg.state_dir).resolve())
    return cfg
