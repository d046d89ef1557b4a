"""The device registry: which devices this gateway reads, kept in STATE_DIR/registry.db.

Managed by `poplar-edge devices ...` while the agent runs; the agent notices changes through
SQLite's data_version and picks them up without a restart.
"""

from __future__ import annotations

import json
import sqlite3
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from common.lineprotocol import tag_problem
from common.points import LOCATION_TAGS


class RegistryError(ValueError):
    """A registration that cannot be accepted. str() tells property staff what to change."""


@dataclass
class Transport:
    """Where a device is reached. kind: tcp | rtu_over_tcp | serial | mqtt."""

    kind: str
    host: str | None = None
    port: int | None = None
    device: str | None = None      # serial port, e.g. /dev/ttyUSB0
    baud: int | None = None
    parity: str | None = None      # N, E, O
    data_bits: int | None = None
    stop_bits: int | None = None
    mqtt_id: str | None = None

    def endpoint(self) -> str:
        """A key for devices that share one connection (a TCP endpoint or a serial bus)."""
        if self.kind in ("tcp", "rtu_over_tcp"):
            return f"{self.kind}://{self.host}:{self.port}"
        if self.kind == "serial":
            return f"serial://{self.device}"
        return f"mqtt://{self.mqtt_id}"

    def describe(self) -> str:
        if self.kind == "serial":
            return f"serial {self.device} {self.baud or ''}{(' ' + self.parity) if self.parity else ''}".strip()
        if self.kind == "mqtt":
            return f"mqtt id {self.mqtt_id}"
        return f"{self.kind.replace('_', '-')} {self.host}:{self.port}"


@dataclass
class Device:
    id: str
    profile: str
    transport: Transport
    display_name: str = ""
    unit: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    interval_s: float | None = None
    enabled: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.display_name or self.id

    def to_doc(self) -> dict:
        d = asdict(self)
        d["transport"] = {k: v for k, v in d["transport"].items() if v is not None}
        return d

    @classmethod
    def from_doc(cls, d: dict) -> "Device":
        d = dict(d)
        t = Transport(**d.pop("transport"))
        return cls(transport=t, **d)


def check_device_id(name: str) -> str:
    """Names become the `device` tag. Chinese and punctuation are welcome; control characters
    (newlines, tabs) are not, because no InfluxDB tag can hold them."""
    if not name or not name.strip():
        raise RegistryError("the device name is empty; give each device a unique name such as 5幢1单元电表")
    if len(name) > 128:
        raise RegistryError(f"the device name is {len(name)} characters long; 128 is the most")
    bad = [c for c in name if unicodedata.category(c).startswith("C")]
    if bad:
        raise RegistryError(f"the device name {name!r} contains a control character ({bad[0]!r}); "
                            "remove line breaks and tabs")
    if tag_problem(name):
        raise RegistryError(f"the device name {name!r} has a backslash before \\ , = or a space, or at its end; "
                            "InfluxDB cannot store that exactly. Use / or - instead")
    if name != name.strip():
        raise RegistryError(f"the device name {name!r} starts or ends with a space; remove it")
    return name


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    out = {}
    for k, v in tags.items():
        if k not in LOCATION_TAGS:
            raise RegistryError(f"unknown location tag {k!r}; use {', '.join(LOCATION_TAGS)}")
        if v is None or str(v) == "":
            continue
        v = str(v)
        if any(unicodedata.category(c).startswith("C") for c in v) or len(v) > 64:
            raise RegistryError(f"location tag {k}={v!r} must be up to 64 characters, without line breaks")
        out[k] = v
    return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS discovered (
    source TEXT NOT NULL,
    device_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (source, device_id)
);
"""


class Registry:
    """Synchronous access (used by the CLI, and by the agent from a worker thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits: cheap change detection."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def same_address(self, device: Device) -> Device | None:
        """Another registered device at the same address (endpoint + unit id, or MQTT id): the
        same meter or gate registered twice would be read twice under two names."""
        for other in self.all():
            if other.id != device.id and other.transport.endpoint() == device.transport.endpoint() \
                    and (other.profile == device.profile if device.transport.kind == "mqtt"
                         else other.unit == device.unit):
                return other
        return None

    def add(self, device: Device, replace: bool = False) -> None:
        check_device_id(device.id)
        device.tags = check_tags(device.tags)
        twin = self.same_address(device)
        if twin is not None:
            where = device.transport.describe() + (f" unit {device.unit}" if device.unit is not None else "")
            raise RegistryError(f"{where} is already registered as {twin.id!r}; one device, one name "
                                f"(poplar-edge devices rename {twin.id} NEW-NAME to rename it)")
        doc = json.dumps(device.to_doc(), ensure_ascii=False)
        try:
            if replace:
                self._db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?, ?)", (device.id, doc, time.time_ns()))
            else:
                self._db.execute("INSERT INTO devices VALUES (?, ?, ?)", (device.id, doc, time.time_ns()))
        except sqlite3.IntegrityError:
            raise RegistryError(f"a device named {device.id!r} is already registered; "
                                "choose another name or remove it first") from None

    def update(self, device: Device) -> None:
        if self.get(device.id) is None:
            raise RegistryError(f"no device named {device.id!r}")
        self.add(device, replace=True)

    def remove(self, device_id: str) -> None:
        cur = self._db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
        if cur.rowcount == 0:
            raise RegistryError(f"no device named {device_id!r}; `poplar-edge devices list` shows the names")

    def rename(self, old: str, new: str) -> None:
        dev = self.get(old)
        if dev is None:
            raise RegistryError(f"no device named {old!r}")
        check_device_id(new)
        if self.get(new) is not None:
            raise RegistryError(f"a device named {new!r} is already registered")
        dev.id = new
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM devices WHERE id = ?", (old,))
            self.add(dev)
            self._db.execute("COMMIT")
        except Exception:
            self._db.execute("ROLLBACK")
            raise

    def get(self, device_id: str) -> Device | None:
        row = self._db.execute("SELECT doc FROM devices WHERE id = ?", (device_id,)).fetchone()
        return Device.from_doc(json.loads(row[0])) if row else None

    def all(self) -> list[Device]:
        return [Device.from_doc(json.loads(r[0])) for r in self._db.execute("SELECT doc FROM devices ORDER BY id")]

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        dev = self.get(device_id)
        if dev is None:
            raise RegistryError(f"no device named {device_id!r}")
        dev.enabled = enabled
        self.add(dev, replace=True)

    # -- discovery of unregistered devices (MQTT) ----------------------------------------
    def record_discovered(self, source: str, device_id: str, topic: str, guess: str | None,
                          now_ns: int, count: int = 1) -> None:
        row = self._db.execute("SELECT doc FROM discovered WHERE source=? AND device_id=?",
                               (source, device_id)).fetchone()
        doc = json.loads(row[0]) if row else {"id": device_id, "topic": topic, "profile": guess,
                                               "first_seen_ns": now_ns, "count": 0}
        doc.update(topic=topic, last_seen_ns=now_ns, count=doc["count"] + count)
        if guess:
            doc["profile"] = guess
        self._db.execute("INSERT OR REPLACE INTO discovered VALUES (?, ?, ?)",
                         (source, device_id, json.dumps(doc, ensure_ascii=False)))

    def discovered(self) -> list[dict]:
        return [json.loads(r[0]) for r in self._db.execute("SELECT doc FROM discovered ORDER BY device_id")]

    def forget_discovered(self, device_id: str) -> None:
        self._db.execute("DELETE FROM discovered WHERE device_id = ?", (device_id,))

    def import_docs(self, docs: Iterable[dict], replace: bool = False) -> int:
        n = 0
        for d in docs:
            self.add(Device.from_doc(d), replace=replace)
            n += 1
        return n
