"""The poller against the real simulator on real sockets and a real pty: cadence, isolation of a dead
meter, every transport, and bad input (exceptions, garbled frames, wrong unit, missing/busy port)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict

import pytest

from edge.config import EdgeConfig, ModbusConfig
from edge.metrics import Metrics
from edge.modbus.plan import plan_reads
from edge.modbus.poller import ModbusPoller, next_slot, offline_backoff
from edge.modbus.reader import read_meter
from edge.modbus.transport import (LIVE, PROBE, BadFrame, Bus, ConnectFailed, ExceptionReply, PriorityGate, SerialLine, WrongUnit, inter_frame_gap)
from edge.profiles import ProfileLibrary
from edge.registry import Device, Transport
from simulators.meter import Faults, MeterServer, SerialMeterServer, SimMeter

LIB = ProfileLibrary()


def make_cfg(tmp_path, timeout=0.3, retries=1, health=60.0) -> EdgeConfig:
    return EdgeConfig(site="s", gateway="gw", state_dir=str(tmp_path), uplink={"url": "mqtt://127.0.0.1:1883"},
                      modbus=ModbusConfig(timeout_s=timeout, retries=retries), health_interval_s=health)


async def start_sim(profile: str, units, faults: Faults | None = None, framing="tcp") -> tuple[MeterServer, int]:
    prof = LIB.get(profile)
    srv = MeterServer({u: SimMeter(prof, u) for u in units}, faults or Faults(), framing=framing)
    return srv, await srv.start("127.0.0.1", 0)


class Sink:
    def __init__(self) -> None:
        self.points = []

    async def __call__(self, points) -> None:
        self.points.extend(points)

    def of(self, measurement: str, device: str):
        return [p for p in self.points if p.measurement == measurement and p.tags["device"] == device]


# -- pure logic --------------------------------------------------------------------------------------
def test_slots_and_backoff():
    assert next_slot(10.0, 5) == 15.0 and next_slot(12.3, 5) == 15.0 and next_slot(14.999, 0.5) == 15.0
    assert [offline_backoff(60, k) for k in (1, 2, 3, 4, 5, 6, 9)] == [60, 120, 240, 300, 300, 300, 300]
    assert [offline_backoff(1, k) for k in (1, 2, 5, 9)] == [1, 2, 16, 16]
    assert offline_backoff(900, 5) == 900  # never polled more often than its own interval


def test_inter_frame_gap():
    assert inter_frame_gap(SerialLine(9600, "N", 8, 1)) == pytest.approx(3.5 * 10 / 9600)
    assert inter_frame_gap(SerialLine(2400, "E", 8, 1)) == pytest.approx(3.5 * 11 / 2400)  # ~16 ms
    assert inter_frame_gap(SerialLine(38400)) == 0.00175


async def test_priority_gate_serves_live_polls_before_probes():
    gate = PriorityGate(1)
    order = []

    async def take(name, prio):
        async with gate.hold(prio):
            order.append(name)
            await asyncio.sleep(0.01)

    async with gate.hold(LIVE):
        tasks = [asyncio.create_task(take("probe", PROBE)), asyncio.create_task(take("live1", LIVE))]
        cancelled = asyncio.create_task(take("gone", LIVE))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        tasks.append(asyncio.create_task(take("live2", LIVE)))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == ["live1", "live2", "probe"]
    async with gate.hold(PROBE):  # the slot was given back, also by the cancelled waiter
        pass


# -- isolation and cadence -----------------------------------------------------------------------------
async def test_dead_meter_on_a_serial_bus_never_costs_the_live_ones_a_reading(tmp_path, caplog):
    """RTU over TCP: one RS-485 line behind a device server, units 1-3 live, unit 4 dead."""
    srv, port = await start_sim("eastron-sdm120", [1, 2, 3, 4], Faults(dead_units={4}), framing="rtu")
    sink, metrics = Sink(), Metrics()
    poller = ModbusPoller(make_cfg(tmp_path, timeout=0.15, retries=1, health=60), LIB, sink, metrics)
    t = Transport("rtu_over_tcp", host="127.0.0.1", port=port)
    devs = [Device(f"m{u}", "eastron-sdm120", t, unit=u, interval_s=0.5) for u in (1, 2, 3, 4)]
    caplog.set_level(logging.INFO, logger="edge.modbus.poller")
    poller.reconcile(devs)
    await asyncio.sleep(4.2)
    await poller.stop()
    await srv.stop()
    for u in (1, 2, 3):
        ts = sorted(p.time_ns for p in sink.of("meter", f"m{u}"))
        assert len(ts) >= 7, (u, ts)
        steps = {b - a for a, b in zip(ts, ts[1:])}
        assert steps == {500_000_000}, f"m{u} lost a slot: {steps}"  # every slot, aligned, none missed
        assert all(x % 500_000_000 == 0 for x in ts)
        assert 200 < sink.of("meter", f"m{u}")[-1].fields["voltage"] < 240
    assert not sink.of("meter", "m4")
    st = poller.state["m4"]
    assert st["online"] is False and st["consecutive_failures"] >= 2 and "no answer" in st["last_error"]
    # backed off: probed fewer times than the live ones were polled
    assert st["polls"] < poller.state["m1"]["polls"] - 2
    assert metrics.counters["modbus_missed_slots"] == 0
    assert metrics.counters["modbus_timeout_errors"] >= 2
    # offline logged once, health on the change only (health interval is 60 s)
    offline = [r for r in caplog.records if "m4 is offline" in r.getMessage()]
    assert len(offline) == 1
    health = sink.of("device_health", "m4")
    assert len(health) == 1 and health[0].fields["online"] is False
    assert [h.fields["online"] for h in sink.of("device_health", "m1")] == [True]


async def test_meter_that_returns_comes_back_online(tmp_path, caplog):
    srv, port = await start_sim("eastron-sdm120", [1, 2], Faults(dead_units={2}))
    sink = Sink()
    poller = ModbusPoller(make_cfg(tmp_path, timeout=0.1, retries=0), LIB, sink, Metrics())
    t = Transport("tcp", host="127.0.0.1", port=port)
    caplog.set_level(logging.INFO, logger="edge.modbus.poller")
    poller.reconcile([Device("back", "eastron-sdm120", t, unit=2, interval_s=0.25)])
    await asyncio.sleep(0.8)
    assert poller.state["back"]["online"] is False
    srv.faults.dead_units.clear()
    deadline = time.time() + 5
    while time.time() < deadline and not sink.of("meter", "back"):
        await asyncio.sleep(0.05)
    await poller.stop()
    await srv.stop()
    assert sink.of("meter", "back"), "the meter was not probed again"
    assert poller.state["back"]["online"] is True and poller.state["back"]["consecutive_failures"] == 0
    assert [h.fields["online"] for h in sink.of("device_health", "back")] == [False, True]
    assert any("back" in r.getMessage() and "online again" in r.getMessage() for r in caplog.records)


async def test_tcp_endpoint_polls_in_parallel_up_to_its_limit(tmp_path):
    srv, port = await start_sim("chint-dtsu666", range(1, 9))
    t = Transport("tcp", host="127.0.0.1", port=port)
    prof = LIB.get("chint-dtsu666")
    plan = plan_reads(prof)
    bus = Bus(t, 1.0, parallel=4)
    in_flight, peak = 0, 0
    orig = bus.read

    async def counting(*a, **k):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)
            return await orig(*a, **k)
        finally:
            in_flight -= 1

    bus.read = counting
    readings = await asyncio.gather(*(read_meter(bus, u, plan) for u in range(1, 9)))
    connected = sum(1 for link in bus._links if link.client.connected)
    bus.close()
    await srv.stop()
    assert all(r.complete for r in readings)
    assert peak == 8 and len(bus._links) == 4 and bus.gate._free == 4
    assert connected >= 2  # really more than one connection to the endpoint


async def test_rtu_on_a_serial_port(tmp_path):
    """Modbus RTU on a pty pair: the simulator holds one end, pymodbus' serial client opens the other."""
    prof = LIB.get("chint-ddsu666")
    srv = MeterServer({u: SimMeter(prof, u) for u in (1, 2)})
    ser = SerialMeterServer(srv, "pty", 9600)
    path = ser.start()
    sink, metrics = Sink(), Metrics()
    poller = ModbusPoller(make_cfg(tmp_path, timeout=0.5), LIB, sink, metrics)
    t = Transport("serial", device=path, baud=9600, parity="N")
    poller.reconcile([Device(f"s{u}", "chint-ddsu666", t, unit=u, interval_s=0.5) for u in (1, 2)])
    deadline = time.time() + 5
    while time.time() < deadline and not (sink.of("meter", "s1") and sink.of("meter", "s2")):
        await asyncio.sleep(0.05)
    await poller.stop()
    ser.stop()
    p = sink.of("meter", "s2")[-1]
    assert 200 < p.fields["voltage"] < 240 and 49 < p.fields["frequency"] < 51
    assert p.fields["active_power"] >= 0 and p.fields["energy_import"] > 0
    assert poller.state["s1"]["online"] is True
    assert "9600 8N1" in poller.state["s1"]["address"]


async def test_missing_and_busy_serial_ports_are_clear_errors_and_cost_no_other_readings(tmp_path):
    import serial
    srv, port = await start_sim("eastron-sdm120", [1])
    prof = LIB.get("eastron-sdm120")
    holder = SerialMeterServer(MeterServer({1: SimMeter(prof, 1)}), "pty")
    busy_path = holder.start()
    grab = serial.Serial(busy_path, exclusive=True)  # another program holds the port
    sink, metrics = Sink(), Metrics()
    poller = ModbusPoller(make_cfg(tmp_path, timeout=0.2), LIB, sink, metrics)
    poller.reconcile([
        Device("good", "eastron-sdm120", Transport("tcp", host="127.0.0.1", port=port), unit=1, interval_s=0.25),
        Device("nosuch", "eastron-sdm120", Transport("serial", device="/dev/ttyUSB-nonexistent"), unit=1,
               interval_s=0.25),
        Device("busy", "eastron-sdm120", Transport("serial", device=busy_path), unit=1, interval_s=0.25),
    ])
    await asyncio.sleep(1.6)
    await poller.stop()
    grab.close()
    holder.stop()
    await srv.stop()
    assert "does not exist" in poller.state["nosuch"]["last_error"]
    assert "busy" in poller.state["busy"]["last_error"]
    assert poller.state["nosuch"]["online"] is False and poller.state["busy"]["online"] is False
    assert metrics.counters["modbus_connect_errors"] >= 2
    assert len(sink.of("meter", "good")) >= 5


async def test_conflicting_line_settings_and_bad_profiles_stop_only_that_device(tmp_path):
    srv, port = await start_sim("eastron-sdm120", [1])
    sink, metrics = Sink(), Metrics()
    poller = ModbusPoller(make_cfg(tmp_path), LIB, sink, metrics)
    poller.reconcile([
        Device("a", "eastron-sdm120", Transport("serial", device="/dev/ttyX9", baud=9600), unit=1),
        Device("b", "eastron-sdm120", Transport("serial", device="/dev/ttyX9", baud=2400), unit=2),
        Device("c", "no-such-profile", Transport("tcp", host="127.0.0.1", port=port), unit=1),
        Device("d", "hikvision-isapi", Transport("tcp", host="127.0.0.1", port=port), unit=1),
        Device("ok", "eastron-sdm120", Transport("tcp", host="127.0.0.1", port=port), unit=1, interval_s=0.2),
    ])
    await asyncio.sleep(0.7)
    await poller.stop()
    await srv.stop()
    errs = {k: v.get("error", "") for k, v in poller.state.items()}
    assert "one RS-485 line has one speed" in errs["a"] + errs["b"]
    assert "not a Modbus profile" in errs["c"] and "not a Modbus profile" in errs["d"]
    assert metrics.counters["modbus_device_config_errors"] == 3
    assert sink.of("meter", "ok")


async def test_reconcile_restarts_changed_devices_and_forgets_removed_ones(tmp_path):
    srv, port = await start_sim("eastron-sdm120", [1, 2])
    sink = Sink()
    poller = ModbusPoller(make_cfg(tmp_path), LIB, sink, Metrics())
    t = Transport("tcp", host="127.0.0.1", port=port)
    poller.reconcile([Device("x", "eastron-sdm120", t, unit=1, interval_s=0.2)])
    await asyncio.sleep(0.5)
    poller.reconcile([Device("x", "eastron-sdm120", t, unit=2, interval_s=0.2)])
    await asyncio.sleep(0.5)
    assert poller.state["x"]["address"].endswith("unit 2")
    poller.reconcile([])
    await asyncio.sleep(0.05)
    assert "x" not in poller.state and not poller._buses
    await poller.stop()
    await srv.stop()


# -- bad answers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_bad_answers_are_classified_counted_and_never_raise(framing):
    prof = LIB.get("eastron-sdm120")
    plan = plan_reads(prof)
    srv, port = await start_sim("eastron-sdm120", [1, 2, 3, 4], framing=framing)
    kind = "tcp" if framing == "tcp" else "rtu_over_tcp"
    bus = Bus(Transport(kind, host="127.0.0.1", port=port), 0.2)
    srv.faults.exception_rate = 1.0
    r = await read_meter(bus, 1, plan, retries=1)
    assert r.answered and not r.values and len(r.problems) == len(plan)
    assert all(isinstance(p, ExceptionReply) and p.code == 4 for p in r.problems)
    assert r.requests == len(plan)  # an exception is the meter's answer: not retried
    assert "exception 4 (server device failure)" in str(r.problems[0])
    srv.faults.exception_rate = 0
    srv.faults.garble_rate = 1.0
    r = await read_meter(bus, 1, plan, retries=1)
    assert not r.values and r.problems
    # TCP: a short answer (a register missing); RTU: a bad CRC (seen from the right unit: not "no answer")
    assert isinstance(r.problems[0], BadFrame) and r.requests == 2 * len(plan)
    srv.faults.garble_rate = 0
    srv.faults.wrong_unit_rate = 1.0
    r = await read_meter(bus, 1, plan, retries=0)
    assert isinstance(r.problems[0], WrongUnit) and "unit 2 answered a request for unit 1" in str(r.problems[0])
    srv.faults.wrong_unit_rate = 0
    # the bus still works after all that
    r = await read_meter(bus, 3, plan)
    assert r.complete and 200 < r.values["voltage"] < 240
    # quirks: the SDM refuses an odd start address with exception 2, as the real meter does
    with pytest.raises(ExceptionReply) as exc:
        await bus.read(3, 4, 0x0001, 2)
    assert exc.value.code == 2
    bus.close()
    await srv.stop()


async def test_partial_answer_keeps_the_good_fields():
    """One block refused (exception 2), the others read: the good values are kept and reported."""
    prof = LIB.get("eastron-sdm120")
    plan = plan_reads(prof)
    srv, port = await start_sim("eastron-sdm120", [1])
    meter = srv.meters[1]
    orig = meter.read

    def refuse_energy_total(fc, address, count):
        if address == 0x0156:
            from simulators.meter import ILLEGAL_ADDRESS, ModbusError
            raise ModbusError(ILLEGAL_ADDRESS)
        return orig(fc, address, count)

    meter.read = refuse_energy_total
    bus = Bus(Transport("tcp", host="127.0.0.1", port=port), 0.3)
    r = await read_meter(bus, 1, plan)
    bus.close()
    await srv.stop()
    assert "voltage" in r.values and "energy_import" in r.values and "energy_total" not in r.values
    assert len(r.problems) == 1 and r.problems[0].code == 2 and not r.complete


async def test_garbage_from_a_tcp_peer_and_a_closed_port(tmp_path):
    async def junk(reader, writer):
        await reader.read(100)
        writer.write(os.urandom(3) + b"\x00\x00\x00\x05\x01\x04\x02")  # nonsense MBAP and a cut-off PDU
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(junk, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bus = Bus(Transport("tcp", host="127.0.0.1", port=port), 0.2)
    r = await read_meter(bus, 1, plan_reads(LIB.get("eastron-sdm120")), retries=1)
    assert not r.values and r.problems
    bus.close()
    server.close()
    await server.wait_closed()
    bus = Bus(Transport("tcp", host="127.0.0.1", port=port), 0.2)  # nothing listens any more
    r = await read_meter(bus, 1, plan_reads(LIB.get("eastron-sdm120")), retries=1)
    assert isinstance(r.problems[0], ConnectFailed) and "cannot connect" in str(r.problems[0])
    assert r.requests == 2  # tried, retried, then stopped: the other requests would only cost bus time
    bus.close()


async def test_health_every_health_interval_and_on_change(tmp_path):
    srv, port = await start_sim("eastron-sdm120", [1])
    sink = Sink()
    poller = ModbusPoller(make_cfg(tmp_path, health=0.5), LIB, sink, Metrics())
    poller.reconcile([Device("h", "eastron-sdm120", Transport("tcp", host="127.0.0.1", port=port), unit=1,
                             interval_s=0.1)])
    await asyncio.sleep(1.6)
    await poller.stop()
    await srv.stop()
    polls = len(sink.of("meter", "h"))
    health = sink.of("device_health", "h")
    assert polls >= 10 and 2 <= len(health) <= 5  # not every poll
    h = health[-1].fields
    assert h["online"] is True and h["consecutive_failures"] == 0 and h["response_ms"] > 0 and h["errors"] == 0
    by_ts = defaultdict(int)
    for p in sink.of("meter", "h"):
        by_ts[p.time_ns] += 1
    assert max(by_ts.values()) == 1


async def test_a_serial_line_carries_one_transaction_at_a_time_with_the_gap(tmp_path):
    """Four meters behind one serial device server, polled at once with a parallel limit of 4:
    the line still sees one request at a time, each after the previous answer plus 3.5 characters."""
    srv, port = await start_sim("eastron-sdm120", [1, 2, 3, 4], framing="rtu")
    srv.trace = []
    cfg = make_cfg(tmp_path, timeout=0.5, retries=0)
    cfg.modbus.max_parallel_per_endpoint = 4  # tempt it: a serial line must ignore this
    sink = Sink()
    poller = ModbusPoller(cfg, LIB, sink, Metrics())
    t = Transport("rtu_over_tcp", host="127.0.0.1", port=port, baud=1200, parity="E", data_bits=8, stop_bits=1)
    poller.reconcile([Device(f"m{u}", "eastron-sdm120", t, unit=u, interval_s=0.5) for u in (1, 2, 3, 4)])
    await asyncio.sleep(2.3)
    await poller.stop()
    await srv.stop()
    trace = sorted(srv.trace)
    assert len(trace) >= 4 * 3 * 3, len(trace)  # 4 meters x 3 requests per poll x >= 3 polls
    gap = 3.5 * 11 / 1200  # 8E1: 11 bits a character
    for (in_a, out_a, _), (in_b, _, _) in zip(trace, trace[1:]):
        assert in_b > out_a, "a request arrived before the previous answer left: two transactions at once"
        assert in_b - out_a >= gap * 0.9, f"only {1000 * (in_b - out_a):.1f} ms of silence; {1000 * gap:.1f} needed"
    assert {u for *_, u in trace} == {1, 2, 3, 4}
    for u in (1, 2, 3, 4):
        assert sink.of("meter", f"m{u}")
