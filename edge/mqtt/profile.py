"""MQTT device profiles: the YAML schema and its loader.

A profile describes one vendor dialect, so a new vendor needs a YAML file, not code. The mapper
(edge/mqtt/mapper.py) interprets it. Schema in brief (docs/profiles-mqtt.md has the full story):

    id, kind: mqtt, vendor, description, sources, time_zone, options, signature, device_id
    messages: [{name, topics, kind, match, device_id, time, privacy, points: [
        {measurement, when, explode, person, tags: [...], fields: [...]}]}]

Value sources ("refs") are strings: `a.b[0].c` is a payload path, `@topic.NAME` a captured topic
segment, `@item` / `@item.x` the current element of an `explode`d list. A list of refs joins
their values with "/" into one key, e.g. Hikvision's (major, minor) pair "5/27".
"""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.points import MEASUREMENTS
from common.yamlconf import ConfigError, load_model
from edge.privacy import is_personal_key

Scalar = str | int | float | bool
Ref = str
Refs = Ref | list[Ref]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_REF = re.compile(r"^(@topic\.[A-Za-z_]\w*|@item(\.[^@\s]+)?|[^@\s][^\s]*)$")
_SEGMENT = re.compile(r"^(\{[A-Za-z_]\w*\}|\+|#|[^{}+#/]+)$")
_INT_TEXT = re.compile(r"^[+-]?\d+$")

#: Tag names the caller owns; a profile must not set them.
RESERVED_TAGS = frozenset({"site", "gateway", "device", "building", "unit_no", "floor"})
#: Field names the mapper itself sets.
RESERVED_FIELDS = frozenset({"time_corrected", "device_time", "count"})


def canon(value: object) -> str:
    """The string form used for enum keys and recognisers: 4, 4.0, "04" and " 4" all give "4".

    Vendors disagree on whether codes are numbers or zero-padded strings (GB/T 24476 "04").
    """
    t = type(value)
    if t is int:  # the common case, first: codes are mostly JSON numbers
        return str(value)
    if t is str:
        return _canon_str(value)  # type: ignore[arg-type]
    return _canon(value)


@lru_cache(maxsize=4096)
def _canon_str(value: str) -> str:
    # Codes and enum words repeat endlessly in a stream (majorEventType, "checkIn", "04"): cached.
    return _canon(value)


def _canon(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if _INT_TEXT.match(text) and len(text) < 20:
        return str(int(text))
    return text


def _refs(value: Refs | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _check_ref(ref: str) -> str:
    if not _REF.match(ref):
        raise ValueError(f"not a value reference (payload path, @topic.NAME or @item): {ref!r}")
    return ref


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Cond(_Model):
    """One recogniser test; all tests of a list must hold."""

    ref: Refs
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    prefix: str | None = None
    exists: bool | None = None

    @field_validator("ref")
    @classmethod
    def _refs_ok(cls, v: Refs) -> Refs:
        for r in _refs(v):
            _check_ref(r)
        return v

    @cached_property
    def refs(self) -> list[str]:
        return _refs(self.ref)

    @model_validator(mode="after")
    def _one_test(self) -> "Cond":
        tests = [self.equals, self.in_, self.not_in, self.prefix, self.exists]
        if sum(t is not None for t in tests) != 1:
            raise ValueError("give exactly one of equals, in, not_in, prefix, exists")
        return self


class FieldMap(_Model):
    """Maps a value (payload path, topic segment or constant) to one point field."""

    name: str
    ref: Refs | None = None
    value: Scalar | None = None
    type: Literal["int", "float", "bool", "str"] | None = None
    enum: dict[str, Scalar] | None = None
    default: Scalar | None = None  # when the ref is missing or its value is not in the enum
    ignore: list[Scalar] = []  # values that mean "not reported" (FC BodyTemp 0)
    scale: float | None = None
    offset: float = 0.0
    required: bool = False
    max_len: int = Field(default=64, ge=1, le=1024)
    if_option: str | None = None
    unless_option: str | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("field names are lower_snake_case")
        if v in RESERVED_TAGS or v in RESERVED_FIELDS:
            # a field named like a registry tag (floor!) makes InfluxQL ambiguous
            raise ValueError(f"{v!r} is reserved (a registry tag or a field the mapper sets)")
        return v

    @field_validator("ref")
    @classmethod
    def _refs_ok(cls, v: Refs | None) -> Refs | None:
        for r in _refs(v):
            _check_ref(r)
        return v

    @field_validator("enum", mode="before")
    @classmethod
    def _enum_keys(cls, v: object) -> object:
        # YAML gives int keys for `5: x`; the mapper looks up canonical strings
        if isinstance(v, dict):
            return {"/".join(canon(p) for p in str(k).split("/")): val for k, val in v.items()}
        return v

    @model_validator(mode="after")
    def _source(self) -> "FieldMap":
        if (self.ref is None) == (self.value is None):
            raise ValueError("give exactly one of ref (where the value comes from) or value (a constant)")
        return self

    @cached_property
    def refs(self) -> list[str]:  # read for every field of every message: made once
        return _refs(self.ref)


class TagMap(FieldMap):
    """A tag: only bounded values (an enum table, a bool, or a constant), never free text."""

    max_len: int = Field(default=32, ge=1, le=64)

    @model_validator(mode="after")
    def _bounded(self) -> "TagMap":
        if self.name in RESERVED_TAGS:
            raise ValueError(f"tag {self.name!r} is set by the edge from its registry, not by a profile")
        if self.ref is not None and self.enum is None and self.type != "bool":
            raise ValueError("a tag from the payload needs an enum table (tags must stay low-cardinality)")
        if self.scale is not None or self.offset:
            raise ValueError("tags take no scale or offset")
        values = list((self.enum or {}).values()) + [v for v in (self.default, self.value) if v is not None]
        for v in values:
            if not isinstance(v, str) or not v or len(v) > self.max_len:
                raise ValueError(f"tag values must be short non-empty strings, got {v!r}")
        return self


class Explode(_Model):
    """Make one point per element of a list (JSON array, or a string split on `sep`)."""

    ref: Ref
    sep: str = ","
    max_items: int = Field(default=32, ge=1, le=1000)

    @field_validator("ref")
    @classmethod
    def _ref_ok(cls, v: str) -> str:
        return _check_ref(v)


class PointSpec(_Model):
    measurement: str
    when: list[Cond] = []
    explode: Explode | None = None
    person: bool = False  # add the `person` field (pseudonym) from the message's privacy.person
    tags: list[TagMap] = []
    fields: list[FieldMap] = []

    @field_validator("measurement")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MEASUREMENTS:
            raise ValueError(f"unknown measurement; expected one of {', '.join(MEASUREMENTS)}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "PointSpec":
        # A name may be mapped several times: the first mapping that yields a value wins
        # (e.g. "qr" from the reader kind, else the method from the event code).
        if self.person and "person" in [f.name for f in self.fields]:
            raise ValueError("`person` is filled from privacy.person; do not map it as a field")
        if {t.name for t in self.tags} & {f.name for f in self.fields}:
            raise ValueError("tag names must differ from field names")
        return self


class TimeSource(_Model):
    ref: Ref
    format: Literal["auto", "iso8601", "local", "epoch_s", "epoch_ms"] = "auto"
    zone: str | None = None  # for local times; default: the profile's time_zone

    @field_validator("ref")
    @classmethod
    def _ref_ok(cls, v: str) -> str:
        return _check_ref(v)


class PrivacySpec(_Model):
    person: list[Ref] = []  # person ids, first non-empty wins -> pseudonym or dropped
    drop: list[Ref] = []  # names, pictures, free text: never read by any mapping
    snapshot: Ref | None = None  # base64 JPEG decoded for on-box use only
    absent: list[str] = [""]  # person id values that mean "nobody" (FC sends CardNum "0")


class MessageSpec(_Model):
    name: str
    topics: list[str] = Field(min_length=1)
    kind: Literal["event", "alarm", "status", "heartbeat"]
    match: list[Cond] = []
    device_id: Ref | None = None  # default: the profile's
    time: list[TimeSource] = []  # first present wins; none: receive time
    on_bad_time: Literal["correct", "reject"] = "correct"
    privacy: PrivacySpec = PrivacySpec()
    points: list[PointSpec] = []

    @field_validator("topics")
    @classmethod
    def _topics_ok(cls, v: list[str]) -> list[str]:
        for topic in v:
            segs = topic.split("/")
            for i, s in enumerate(segs):
                if not _SEGMENT.match(s) or (s == "#" and i != len(segs) - 1):
                    raise ValueError(f"bad topic filter {topic!r}: segment {s!r}")
            names = [s[1:-1] for s in segs if s.startswith("{")]
            if len(set(names)) != len(names):
                raise ValueError(f"topic filter {topic!r} names a segment twice")
        return v

    @model_validator(mode="after")
    def _self_consistent(self) -> "MessageSpec":
        _check_message(self)
        return self

    @property
    def captures(self) -> set[str]:
        out: set[str] = set()
        for t in self.topics:
            out |= {s[1:-1] for s in t.split("/") if s.startswith("{")}
        return out


class MqttProfile(_Model):
    id: str
    kind: Literal["mqtt"]
    vendor: str
    description: str
    sources: list[str] = []
    time_zone: str = "Asia/Shanghai"
    options: dict[str, Scalar] = {}
    gzip: bool = False  # accept gzip-compressed payloads (FC terminals: MQTT_UseGZIP)
    signature: list[Cond] = []  # what every payload of this dialect looks like; else wrong_dialect
    device_id: Ref = "@topic.id"
    #: Silence after which a device of this dialect is reported offline (device_health). None:
    #: the dialect has no keep-alive, so silence proves nothing (a quiet gate at night).
    heartbeat_timeout_s: float | None = Field(default=None, ge=1, le=86_400)
    messages: list[MessageSpec] = Field(min_length=1)

    @field_validator("time_zone")
    @classmethod
    def _zone_ok(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (expected an IANA name such as Asia/Shanghai)") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "MqttProfile":
        names = [m.name for m in self.messages]
        if len(set(names)) != len(names):
            raise ValueError("message names must be unique")
        for m in self.messages:
            dev = m.device_id or self.device_id
            if dev.startswith("@topic.") and dev[7:] not in m.captures:
                raise ValueError(f"message {m.name!r}: device_id {dev} is not a named segment of {m.topics}")
            for p in m.points:
                for f in [*p.fields, *p.tags]:
                    for opt in (f.if_option, f.unless_option):
                        if opt is not None and opt not in self.options:
                            raise ValueError(f"message {m.name!r}: option {opt!r} is not declared under options")
        return self

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def subscriptions(self) -> list[str]:
        """MQTT subscription filters for this profile ({name} segments become +)."""
        out: list[str] = []
        for m in self.messages:
            for t in m.topics:
                f = "/".join("+" if s.startswith("{") else s for s in t.split("/"))
                if f not in out:
                    out.append(f)
        return out


def _check_message(m: MessageSpec) -> None:
    """Cross-field rules: refs resolvable, and no personal data reachable by a field or tag."""
    captures = m.captures
    for p in m.points:
        for f in [*p.fields, *p.tags]:
            for ref in f.refs:
                if ref.startswith("@topic.") and ref[7:] not in captures:
                    raise ValueError(f"{f.name}: {ref} is not a named segment of the topics {m.topics}")
                if ref.startswith("@item") and p.explode is None:
                    raise ValueError(f"{f.name}: reads {ref} but the point has no explode")
    private = set(m.privacy.person) | set(m.privacy.drop) | ({m.privacy.snapshot} - {None})
    for p in m.points:
        for f in [*p.fields, *p.tags]:
            for ref in f.refs:
                last = re.split(r"[.\[\]]+", ref.rstrip("]"))[-1]
                if ref in private or is_personal_key(last):
                    raise ValueError(
                        f"{f.name} reads {ref}, which is personal data (names, ids, pictures); "
                        "declare it under privacy.person or privacy.drop instead")
    if any(p.person for p in m.points) and not m.privacy.person:
        raise ValueError("a point asks for `person` but privacy.person lists no paths")


def load_mqtt_profile(path: str | Path) -> MqttProfile:
    """Load and validate an MQTT profile. Raises ConfigError naming file, line and field.

    The profile's id must equal the file name, so registry entries name profiles unambiguously.
    """
    path = Path(path)
    profile = load_model(MqttProfile, path)
    if profile.id != path.stem:
        raise ConfigError(f"{path}: id: must equal the file name {path.stem!r}, got {profile.id!r}")
    return profile
