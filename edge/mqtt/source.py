"""MQTT ingest: face gates and elevator controllers on the box broker -> points -> outbox.

Delivery (DESIGN "nothing is lost"): a persistent session (clean_session=False, a client id that
stays the same across restarts), QoS 1 subscriptions and manual acknowledgement. A message is
acknowledged only after `emit` returned, i.e. after the points made from it are committed to the
outbox; a crash before that makes the broker deliver it again. Many messages share one commit:
paho hands messages over in bursts, each burst becomes one `emit`, and the outbox group-commits
the bursts that arrive within its commit interval.

Replays keep their identity: a message delivered again after a crash maps to the same points
with the same timestamp (the device's own time plus a sub-millisecond fingerprint of the
payload, see `_stable_time`), so InfluxDB overwrites instead of counting it twice.

Subscriptions: every MQTT profile in the library (shipped and site folders), not only those of
registered devices, so a gate that an installer pointed at the box shows up in
`poplar-edge devices discover` before anyone registers it.

Bad input never stops the stream: each message is mapped on its own; a failure is counted
(`mqtt_dropped_<reason>`), logged once per (reason, device or topic), acknowledged and dropped.
A device that floods is limited per device (token bucket), so it cannot starve the others.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from common.mqtt import AsyncMqtt, Message
from common.points import Point, Priority, UniqueTimestamps
from common.yamlconf import ConfigError
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.mqtt.mapper import MapError, Mapped, device_id_of, map_message, match_topic
from edge.mqtt.profile import MqttProfile
from edge.privacy import Privacy, SecretFileError, load_or_create_secret
from edge.profiles import ProfileLibrary
from edge.registry import Device, Registry

log = logging.getLogger(__name__)

Emit = Callable[..., Awaitable[None]]  # emit(points, *, stamped=False): Agent.emit

#: Largest payload mapped; gates with base64 snapshots send up to ~200 KB.
MAX_PAYLOAD = 256 * 1024
#: Per device: sustained messages per second, and the burst allowed on top (a backlog the broker
#: kept while the agent was down arrives as one burst and must pass).
FLOOD_RATE = 100.0
FLOOD_BURST = 5000.0
DISCOVERY_FLUSH_S = 2.0
CHUNK = 500  # messages mapped between two yields to the event loop (~20-50 ms of work)
#: Unacknowledged messages the source holds at most (received, being mapped or committed); past
#: it, reading pauses and the rest waits at the broker (AsyncMqtt max_unacked). About a second
#: of a busy stream; keeps a restart after a day's backlog from pulling the whole queue into
#: memory.
MAX_HELD = 20_000
COMMITS_IN_FLIGHT = 2  # emits under way at once; one fills the outbox's next group commit while the other lands
WATCHDOG_S = 1.0
_TOPIC_CACHE = 20_000
_DISCOVERY_MAX = 1000  # unregistered ids remembered between flushes


@dataclass
class _Registered:
    device: Device
    profile: MqttProfile
    options: dict[str, Any]
    tags: dict[str, str]  # what every point of the device carries: site, gateway, device, location


class _Bucket:
    """Flood limit per device, on the clock of the messages themselves (the device's time when it
    sends one, else the time of receipt). A backlog the broker kept while the agent was down
    arrives in one burst but spans hours of device time, so it is not a flood and is not dropped
    (dropping it would ack it away: lost); a device that really floods sends faster than its own
    clock allows."""

    __slots__ = ("tokens", "last")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.last: float | None = None

    def take(self, rate: float, burst: float, t: float) -> bool:
        last = self.last
        if last is None or t > last:  # (comparisons, not min/max: this runs for every message)
            if last is not None:
                tokens = self.tokens + (t - last) * rate
                self.tokens = burst if tokens > burst else tokens
            self.last = t
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


_KIND_COUNTER = {k: f"mqtt_{k}s" for k in ("event", "alarm", "status", "heartbeat")}


def _who(dev: Device) -> str:
    return f"{dev.id} (mqtt id {dev.transport.mqtt_id})"


def _stable_time(ts_ns: int, payload: bytes) -> int:
    """Device times have whole-second (at best millisecond) resolution, so two events of a gate
    often share one. Spread them by a fingerprint of the payload below the millisecond: distinct
    events get distinct timestamps, and the same message delivered again gets the same one."""
    if ts_ns % 1_000_000:
        return ts_ns  # the device already gave sub-millisecond time
    return ts_ns + zlib.crc32(payload) % 1_000_000


def _make_privacy(cfg: EdgeConfig) -> Privacy:
    if cfg.privacy.person_ids == "drop":
        return Privacy(b"", "drop")
    try:
        return Privacy(load_or_create_secret(cfg.secret_file), "pseudonymize")
    except (SecretFileError, OSError) as exc:
        # Keep events flowing, but never forward an id we cannot pseudonymise.
        log.error("%s -- until this is fixed, person ids are dropped from gate events", exc)
        return Privacy(b"", "drop")


class MqttSource:
    def __init__(self, cfg: EdgeConfig, profiles: ProfileLibrary, registry: Registry, emit: Emit,
                 metrics: Metrics, analytics: Any = None, *, flood_rate: float = FLOOD_RATE,
                 flood_burst: float = FLOOD_BURST, max_held: int = MAX_HELD) -> None:
        assert cfg.local_broker is not None, "MqttSource needs local_broker in the config"
        self.cfg = cfg
        self.library = profiles
        self.registry = registry
        self.emit = emit
        self.metrics = metrics
        self.analytics = analytics
        self.flood_rate, self.flood_burst = flood_rate, flood_burst
        self.max_held = max_held
        self.privacy = _make_privacy(cfg)
        self._unique = UniqueTimestamps()
        self._buf_points: list[Point] = []
        self._buf_msgs: list[Message] = []
        self._commits_in_flight = 0
        self.state: dict[str, dict] = {}
        self.profiles: dict[str, MqttProfile] = {}
        self._topic_profiles: dict[str, list[tuple[MqttProfile, str | None]]] = {}
        self._load_profiles()
        self._index: dict[tuple[str, str], _Registered] = {}  # (profile id, mqtt id) -> device
        self._reconciled = False
        self._buckets: dict[str, _Bucket] = {}
        self._discovered: dict[str, dict] = {}
        self._pending: set[asyncio.Task] = set()
        self._base_tags = {"site": cfg.site, "gateway": cfg.gateway}
        self._started_ns = time.time_ns()
        self.mqtt: AsyncMqtt | None = None
        self._closing = False
        self._failing = False  # the outbox refuses commits right now
        self._inbox: collections.deque[Message] = collections.deque()
        self._wake = asyncio.Event()

    # -- profiles and registry ------------------------------------------------------------
    def _load_profiles(self) -> None:
        for pid, path in self.library.paths().items():
            if pid in self.profiles or self.library.kind(pid) != "mqtt":
                continue
            try:
                self.profiles[pid] = self.library.get(pid)
            except ConfigError as exc:
                log.error("MQTT profile %s is not usable, its devices are ignored: %s", path, exc)
        self._topic_profiles.clear()

    def subscriptions(self) -> list[str]:
        out: list[str] = []
        for p in self.profiles.values():
            out += [f for f in p.subscriptions() if f not in out]
        return out

    def reconcile(self, devices: list[Device]) -> None:
        """Follow the registry: which MQTT ids are registered, as which device, with which profile."""
        index: dict[tuple[str, str], _Registered] = {}
        for d in devices:
            if d.transport.kind != "mqtt" or not d.transport.mqtt_id:
                continue
            if d.profile not in self.profiles:
                self._load_profiles()  # a site profile added after the start
                if self.mqtt is not None:
                    for f in self.subscriptions():
                        asyncio.get_running_loop().create_task(self._subscribe(f))
            prof = self.profiles.get(d.profile)
            if prof is None:
                self.metrics.once(log, logging.ERROR, ("mqtt_no_profile", d.id),
                                  "device %s: profile %r is not an MQTT profile the agent can load; "
                                  "its messages are not forwarded", d.id, d.profile)
                continue
            opts = {k: v for k, v in d.options.items() if k in prof.options}
            index[(prof.id, d.transport.mqtt_id)] = _Registered(
                d, prof, opts, {**self._base_tags, "device": d.id, **d.tags})
            self.state.setdefault(d.id, {"online": None, "last_seen_ns": None, "messages": 0,
                                         "errors": 0, "consecutive_failures": 0,
                                         "mqtt_id": d.transport.mqtt_id})
        known = {r.device.id for r in index.values()}
        for dev_id in list(self.state):
            if dev_id not in known:
                del self.state[dev_id]
        for key, entry in list(self._discovered.items()):
            if (entry["guess"], key) in index:
                del self._discovered[key]
        self._index = index
        self._reconciled = True

    async def _subscribe(self, filt: str) -> None:
        try:
            assert self.mqtt is not None
            await self.mqtt.subscribe(filt, 1)
        except (PermissionError, TimeoutError) as exc:
            log.error("box broker: cannot subscribe to %s: %s", filt, exc)

    # -- the stream ------------------------------------------------------------------------
    def _profiles_for(self, topic: str) -> list[tuple[MqttProfile, str | None]]:
        """The dialects that read TOPIC, each with the device id the topic names (None when the
        id is in the payload). Cached per topic: a compound has a few hundred device topics."""
        hit = self._topic_profiles.get(topic)
        if hit is None:
            hit = []
            for p in self.profiles.values():
                m = match_topic(p, topic)
                if m is None:
                    continue
                spec = next(x for x in p.messages if x.name == m["message"])
                in_topic = (spec.device_id or p.device_id).startswith("@topic.")
                hit.append((p, device_id_of(p, topic, b"") if in_topic else None))
            if len(self._topic_profiles) >= _TOPIC_CACHE:
                self._topic_profiles.clear()
            self._topic_profiles[topic] = hit
        return hit

    def _drop(self, reason: str, subject: str, detail: str = "") -> None:
        self.metrics.count("mqtt_dropped")
        self.metrics.count(f"mqtt_dropped_{reason}")
        self.metrics.once(log, logging.WARNING, (f"mqtt_{reason}", subject),
                          "dropped a message from %s: %s%s (counted as mqtt_dropped_%s; logged once)",
                          subject, reason.replace("_", " "), f" ({detail[:160]})" if detail else "", reason)

    def _on_messages(self, batch: list[Message]) -> None:
        """Runs in the event loop with every message paho received since the last call."""
        if self._closing:
            return  # not acknowledged: the broker delivers them again after the restart
        self._inbox.extend(batch)
        self._wake.set()

    async def _pump(self) -> None:
        """Map the inbox in chunks: a backlog of thousands of messages must not hold the event
        loop for a second (the uplink, health and acknowledgements run between chunks)."""
        while True:
            if not self._inbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(self._inbox), CHUNK)
            self._process([self._inbox.popleft() for _ in range(n)])
            await asyncio.sleep(0)

    def _process(self, batch: list[Message]) -> None:
        now = time.time_ns()
        self.metrics.count("mqtt_messages", len(batch))
        points: list[Point] = []
        to_ack: list[Message] = []
        done: list[Message] = []  # dropped or not forwarded: nothing to commit before the ack
        for msg in batch:
            try:
                result = self._handle(msg, now)
            except Exception as exc:  # a bug costs one message, never the stream
                self._drop("internal", "the box broker", f"{type(exc).__name__}: {exc}")
                result = None
            if result is None:
                done.append(msg)
                continue
            pts, snapshot = result
            if snapshot is not None and self.analytics is not None \
                    and any(p.measurement == "gate_event" for p in pts):
                self._spawn(self._enrich_and_commit(pts, snapshot, msg))
                continue
            points.extend(pts)
            to_ack.append(msg)
        if done:
            self._ack(done)
        if to_ack:
            self._queue_commit(points, to_ack)

    def _queue_commit(self, points: list[Point], msgs: list[Message]) -> None:
        """Coalesce: at most COMMITS_IN_FLIGHT emits are under way; what arrives meanwhile joins
        the next one, so a busy stream makes few large commits instead of many small ones."""
        self._buf_points.extend(points)
        self._buf_msgs.extend(msgs)
        if self._commits_in_flight < COMMITS_IN_FLIGHT:
            self._start_commit()

    def _start_commit(self) -> None:
        points, msgs = self._buf_points, self._buf_msgs
        self._buf_points, self._buf_msgs = [], []
        self._commits_in_flight += 1
        self._spawn(self._commit_then_next(points, msgs))

    async def _commit_then_next(self, points: list[Point], msgs: list[Message]) -> None:
        try:
            await self._commit(points, msgs)
        finally:
            self._commits_in_flight -= 1
            if self._buf_msgs and not self._closing:
                self._start_commit()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _ack(self, msgs: list[Message]) -> None:
        if self.mqtt is not None:
            self.mqtt.ack_many(msgs)  # one write for all; QoS 0 messages need none

    def _handle(self, msg: Message, now: int) -> tuple[list[Point], bytes | None] | None:
        """One message (counted in mqtt_messages by the caller): its points and snapshot, or None
        when it is dropped or not forwarded."""
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self._drop("bad_topic", "the box broker", "topic is not UTF-8")
            return None
        payload = msg.payload
        profs = self._profiles_for(topic)
        if not profs:
            self._drop("unknown_topic", topic[:100], "no MQTT profile reads this topic")
            return None
        if len(payload) > MAX_PAYLOAD:
            self._drop("too_large", profs[0][1] or topic[:100], f"{len(payload)} bytes > {MAX_PAYLOAD}")
            return None
        reg: _Registered | None = None
        first_id: str | None = None
        for p, did in profs:
            if did is None:
                did = device_id_of(p, topic, payload, MAX_PAYLOAD)
            if did is None:
                continue
            first_id = first_id or did
            reg = self._index.get((p.id, did))
            if reg is not None:
                break
        if reg is None:
            if first_id is None:  # not even a device id: say why with the first dialect
                try:
                    map_message(profs[0][0], topic, payload, privacy=self.privacy, now_ns=now,
                                max_bytes=MAX_PAYLOAD)
                    reason, detail = "missing_field", "no device id"
                except MapError as exc:
                    reason, detail = exc.reason, str(exc)
                self._drop(reason, topic[:100], detail)
            else:
                self._discover(first_id, topic, [p for p, _ in profs], payload, now)
            return None
        dev = reg.device
        st = self.state[dev.id]
        if not dev.enabled:
            self.metrics.count("mqtt_disabled_device")
            return None
        try:
            mapped = map_message(reg.profile, topic, payload, privacy=self.privacy, now_ns=now,
                                 max_bytes=MAX_PAYLOAD, options=reg.options)
        except MapError as exc:
            st["errors"] += 1
            self._drop(exc.reason, _who(dev), str(exc))
            return None
        bucket = self._buckets.get(dev.id)
        if bucket is None:
            bucket = self._buckets[dev.id] = _Bucket(self.flood_burst)
        pts = mapped.points
        msg_t = pts[0].time_ns if len(pts) == 1 else min((p.time_ns for p in pts), default=now)
        if not bucket.take(self.flood_rate, self.flood_burst, msg_t / 1e9):
            self._drop("flood", _who(dev), f"more than {self.flood_rate:g} messages/s sustained")
            return None
        for w in mapped.warnings:
            self.metrics.count("mqtt_warnings")
            self.metrics.once(log, logging.INFO, ("mqtt_warning:" + w.split(":")[0], dev.id),
                              "device %s: %s (logged once)", dev.id, w)
        return self._finish(reg, mapped, payload, now), mapped.snapshot

    def _finish(self, reg: _Registered, mapped: Mapped, payload: bytes, now: int) -> list[Point]:
        dev = reg.device
        tags = reg.tags
        st = self.state[dev.id]
        st["last_seen_ns"] = now
        st["messages"] += 1
        st["last_kind"] = mapped.kind
        points = mapped.points
        crc = None  # one fingerprint per message, whatever the number of points
        for p in points:
            p.tags.update(tags)
            if p.time_ns == now:
                # Stamped on receipt: nothing to keep stable across a redelivery, but two messages
                # handled in the same instant must not overwrite each other.
                self._unique.stamp(p)
            else:
                p.box_time = False  # the device's own clock: not the box's to correct
                if not p.time_ns % 1_000_000:  # see _stable_time
                    if crc is None:
                        crc = zlib.crc32(payload) % 1_000_000
                    p.time_ns += crc
            if p.measurement == "device_health":
                p.fields["online"] = True
        if st["online"] is not True:
            log.info("device %s (mqtt id %s, %s) is online", dev.id, dev.transport.mqtt_id, reg.profile.id)
            st["online"] = True
            if not any(p.measurement == "device_health" for p in points):
                points.append(self._health(dev, True, now))
        elif mapped.kind == "heartbeat" and not points:
            points.append(self._health(dev, True, now))
        self.metrics.count(_KIND_COUNTER.get(mapped.kind) or f"mqtt_{mapped.kind}s")
        return points

    def _health(self, dev: Device, online: bool, now: int, **extra: Any) -> Point:
        tags = {**self._base_tags, "device": dev.id, **dev.tags}
        return Point("device_health", tags, {"online": online, **extra}, now, Priority.HEALTH)

    def _discover(self, did: str, topic: str, profs: list[MqttProfile], payload: bytes, now: int) -> None:
        self.metrics.count("mqtt_unregistered")
        entry = self._discovered.get(did)
        if entry is None:
            if len(self._discovered) >= _DISCOVERY_MAX:
                return  # counted; the next flush makes room
            guess = None
            for p in profs:  # the first dialect that reads it (only on first sight: it costs a parse)
                try:
                    map_message(p, topic, payload, privacy=self.privacy, now_ns=now, max_bytes=MAX_PAYLOAD)
                    guess = p.id
                    break
                except MapError:
                    continue
            entry = self._discovered[did] = {"topic": topic, "guess": guess or profs[0].id, "first": now,
                                             "count": 0}
            other = next((r for (_, mid), r in self._index.items() if mid == did), None)
            if other is not None:
                self.metrics.once(log, logging.WARNING, ("mqtt_wrong_profile", did),
                                  "device %s (mqtt id %s) is registered with profile %s, but it publishes %s "
                                  "messages on %s, which are not forwarded; register it again with "
                                  "--profile %s", other.device.id, did, other.profile.id, entry["guess"], topic,
                                  entry["guess"])
            else:
                self.metrics.once(log, logging.INFO, ("mqtt_unregistered", did),
                                  "messages from unregistered device %s on %s are not forwarded; register it "
                                  "with: poplar-edge devices add NAME --profile %s --mqtt-id %s", did, topic,
                                  entry["guess"], did)
        entry["topic"], entry["last"] = topic, now
        entry["count"] += 1

    async def _commit(self, points: list[Point], msgs: list[Message]) -> None:
        # Sorted by time, so the agent's UniqueTimestamps rarely has to move a point.
        points.sort(key=lambda p: p.time_ns)
        delay = 0.5
        while True:
            try:
                # Our timestamps are replay-stable (device time + fingerprint): the agent must not move them.
                await self.emit(points, stamped=True)
                break
            except Exception as exc:  # outbox write failed: keep the messages unacknowledged
                self._failing = True
                self.metrics.count("mqtt_commit_errors")
                self.metrics.once(log, logging.ERROR, ("mqtt_commit", "outbox"),
                                  "cannot commit gate/elevator events to the outbox (%s); they stay "
                                  "unacknowledged at the broker and are retried", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._failing = False
        self._ack(msgs)
        self.metrics.count("mqtt_messages_committed", len(msgs))

    async def _enrich_and_commit(self, points: list[Point], snapshot: bytes, msg: Message) -> None:
        try:
            await self.analytics.enrich_gate_event(points, snapshot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # analytics are a bonus; the event itself must go through
            self.metrics.count("mqtt_enrich_errors")
            self.metrics.once(log, logging.WARNING, ("mqtt_enrich", "analytics"),
                              "face analytics failed on a gate snapshot (%s); events go on without it", exc)
        del snapshot  # the picture ends here: never forwarded, never stored
        await self._commit(points, [msg])

    # -- health and discovery loops --------------------------------------------------------
    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_S)
            if self.mqtt is not None:  # for status.json: how often the outbox held the broker back
                self.metrics.counters["mqtt_read_pauses"] = self.mqtt.read_pauses
            now = time.time_ns()
            for reg in list(self._index.values()):
                timeout = reg.profile.heartbeat_timeout_s
                dev = reg.device
                st = self.state.get(dev.id)
                if timeout is None or st is None or not dev.enabled or st["online"] is False:
                    continue
                last = st["last_seen_ns"] or self._started_ns
                if now - last > timeout * 1e9:
                    st["online"] = False
                    st["consecutive_failures"] += 1
                    log.warning("device %s (mqtt id %s) is offline: no message for %.0f s (its %s profile "
                                "expects a keep-alive within %g s); check its power, network and broker address",
                                dev.id, dev.transport.mqtt_id, (now - last) / 1e9, reg.profile.id, timeout)
                    self.metrics.count("mqtt_devices_went_offline")
                    try:
                        await self.emit([self._health(dev, False, now, silent_s=round((now - last) / 1e9, 1))])
                    except Exception as exc:  # outbox trouble: the health point is lost, the source lives on
                        self.metrics.count("mqtt_commit_errors")
                        log.debug("could not commit an offline health point: %s", exc)

    def _flush_discovered(self) -> None:
        items, self._discovered = self._discovered, {}
        for did, e in items.items():
            if (e["guess"], did) in self._index:
                continue
            try:
                self.registry.record_discovered("mqtt", did, e["topic"], e["guess"], e.get("last", e["first"]),
                                                e["count"])
            except Exception as exc:
                self.metrics.once(log, logging.WARNING, ("mqtt_discovery", "registry"),
                                  "cannot record discovered devices in the registry: %s", exc)

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_FLUSH_S)
            if self._discovered:
                # A worker thread, so the fsyncs never stall ingest; sharing the agent's registry
                # connection across threads is safe (sqlite3.threadsafety == 3, serialized).
                await asyncio.to_thread(self._flush_discovered)

    def _connection_changed(self, up: bool) -> None:
        assert self.mqtt is not None
        if up:
            log.info("box broker %s: connected (persistent session %s)", self.mqtt.url, self.mqtt.client_id)
        elif not self._closing:
            log.warning("box broker %s: connection lost (%s); reconnecting, nothing is lost meanwhile",
                        self.mqtt.url, self.mqtt.last_error or "no reason given")

    def client_id(self) -> str:
        lb = self.cfg.local_broker
        assert lb is not None
        # Stable across restarts: the broker keeps the session (and unacked messages) by this id.
        return lb.client_id or f"poplar-edge-{self.cfg.site}-{self.cfg.gateway}"

    async def run(self) -> None:
        lb = self.cfg.local_broker
        assert lb is not None
        if not self._reconciled:  # never map a message before knowing which devices are registered
            self.reconcile(self.registry.all())
        self.mqtt = AsyncMqtt(lb.parsed(), self.client_id(), persistent=True, manual_ack=True,
                              username=lb.username, password=lb.password,
                              tls=lb.tls_files(), max_inflight=1000,
                              max_unacked=self.max_held)
        self.mqtt.on_messages(self._on_messages)
        self.mqtt.on_connection_change = self._connection_changed
        for f in self.subscriptions():
            await self.mqtt.subscribe(f, 1)  # not connected yet: sent on every (re)connect
        loops = [asyncio.create_task(self._pump(), name="mqtt-pump"),
                 asyncio.create_task(self._watchdog(), name="mqtt-watchdog"),
                 asyncio.create_task(self._discovery_loop(), name="mqtt-discovery")]
        try:
            if not await self.mqtt.start(wait=10):
                log.warning("box broker %s: not reachable yet (%s); retrying in the background",
                            self.mqtt.url, self.mqtt.last_error or "no answer")
            await asyncio.gather(*loops)
        finally:
            self._closing = True
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._buf_msgs and not self._failing:
                self._start_commit()  # what was mapped but waiting for its turn
            # Let commits under way finish and acknowledge (the outbox closes after us), so a
            # clean stop leaves nothing to deliver twice; whatever is left is delivered again.
            if self._pending and not self._failing:
                await asyncio.wait(list(self._pending), timeout=5)
            for t in list(self._pending):
                t.cancel()
            await asyncio.gather(*self._pending, return_exceptions=True)
            await self.mqtt.stop()
            if self._discovered:
                self._flush_discovered()
