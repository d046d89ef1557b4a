"""The collector's config file (YAML), validated once, on load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from common.broker_config import BrokerConfig as SharedBrokerConfig
from common.yamlconf import StrictModel as _Strict, load_model

ENV_VAR = "POPLAR_COLLECTOR_CONFIG"
DEFAULT_PATH = "/etc/poplar/collector.yaml"


class BrokerConfig(SharedBrokerConfig):
    url: str = Field(description="central broker, mqtt://HOST:PORT or mqtts://HOST:PORT")
    client_id: str | None = Field(None, description="default: poplar-collector-<host>-<pid>")
    shared_group: str | None = Field(
        "poplar-collectors", description="MQTT shared-subscription group; collectors in one group share the load")


class Influx1Sink(_Strict):
    type: Literal["influxdb1"] = "influxdb1"
    url: str = Field(description="http://HOST:8086")
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=300)
    gzip: bool = Field(False, description=(
        "gzip the HTTP bodies: about 14x smaller, but it costs CPU on both sides (bench/collector_write.py: "
        "about 1 µs per point in InfluxDB 1.6 and 0.8 in the collector, 10-30 % of throughput on a shared "
        "host). Off for a LAN; on when the link to InfluxDB is slow or metered"))

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
    string_newlines: Literal["keep", "escape"] = Field(
        "keep", description="keep: raw newlines inside string fields (InfluxDB 2.x/3.x store them); "
        "escape: write them as \\n, for servers that split lines first (VictoriaMetrics)")

    _url = field_validator("url")(Influx1Sink._url.__func__)


class Limits(_Strict):
    max_batch_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="compressed payload size")
    max_points_per_batch: int = Field(100_000, ge=1)
    max_tags: int = Field(16, ge=3)
    max_fields: int = Field(64, ge=1)
    max_string_len: int = Field(1024, ge=16)
    max_past_s: float = Field(30 * 86400, gt=0, description="refuse points older than this")
    max_future_s: float = Field(600, gt=0, description="refuse points further ahead than this")


class WriteConfig(_Strict):
    """How batches become InfluxDB writes. Several queued batches go into one HTTP write
    (throughput), each is acked after that write succeeded."""
    max_points: int = Field(50_000, ge=1, description="points per HTTP write, at most")
    max_batches: int = Field(200, ge=1, description="uplink batches per HTTP write, at most")
    max_in_flight: int = Field(2, ge=1, le=16, description=(
        "HTTP writes handed to InfluxDB at once. The sink sends them one after another on one "
        "connection: with 2 the next is ready the moment InfluxDB answers the one before"))
    retries: int = Field(3, ge=0, le=20, description="attempts after the first before answering 'retry'")
    backoff_s: float = Field(0.5, gt=0, le=60, description="first wait between attempts; doubles each time")
    backoff_max_s: float = Field(10.0, gt=0, le=600)


class Influx1Admin(_Strict):
    """`poplar-collector init-db` (InfluxDB 1.x): retention policies and roll-ups."""
    raw_rp: str = "raw"
    raw_days: int = Field(90, ge=1, description="how long raw points are kept")
    rollup_rp: str = "rollup"
    rollup_days: int = Field(0, ge=0, description="how long hourly roll-ups are kept; 0 = forever")


class CollectorConfig(_Strict):
    broker: BrokerConfig
    sink: Annotated[Union[Influx1Sink, Influx2Sink], Field(discriminator="type")]
    state_dir: str = Field(description="folder for the gateway registry")
    limits: Limits = Limits()
    write: WriteConfig = WriteConfig()
    database_setup: Influx1Admin = Influx1Admin()
    status_interval_s: float = Field(5.0, gt=0, le=3600, description="how often status-NAME.json is written")
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
