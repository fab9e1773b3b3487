"""Writes the generated traces of tests/cases (the hand-written files stay as they are).

Run `.venv/bin/python tests/cases/_gen.py` after changing a scenario below; the traces are committed so a
case can be read (and replayed with `meterwatch replay`) without running anything.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).parent
TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=TZ).timestamp()  # a Monday, 10:00 site time
V3 = ("voltage_l1", "voltage_l2", "voltage_l3")

Row = tuple[float, str, str, str]


def write(case: str, rows: list[Row]) -> None:
    d = HERE / case
    d.mkdir(exist_ok=True)
    rows.sort(key=lambda r: r[0])
    with (d / "trace.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "device", "quantity", "value"])
        for ts, dev, q, v in rows:
            local = datetime.fromtimestamp(ts, TZ).isoformat(timespec="seconds")
            w.writerow([local, dev, q, v])


def meter(rows: list[Row], dev: str, t: float, volts: float | None, phases: tuple[str, ...] = V3) -> None:
    if volts is None:
        rows.append((t, dev, "", ""))
        return
    for q in phases:
        rows.append((t, dev, q, f"{volts:g}"))


def neighbour(rows: list[Row], seconds: int) -> None:
    for i in range(0, seconds, 5):
        meter(rows, "B2-main", T0 + i, 231.0)


def main_meter_all_phases() -> None:
    rows: list[Row] = []
    for i in range(0, 180):
        t = T0 + i
        meter(rows, "B1-main", t, 0.0 if 30 <= i < 40 else 229.5)
        if i % 5 == 0:
            meter(rows, "B2-main", t, 231.0)
    write("main-meter-loses-all-phases-for-10s-one-power-incident", rows)


def twenty_silent(case: str, silent: Callable[[int, int], bool], seconds: int = 240) -> None:
    rows: list[Row] = []
    for i in range(0, seconds, 5):
        t = T0 + i
        for n in range(1, 21):
            dev = f"B1-u{n:02d}"
            meter(rows, dev, t, None if silent(n, i) else 228.0 + n % 3, ("voltage_l1",))
        for n in range(1, 4):
            meter(rows, f"B2-u{n:02d}", t, 230.0, ("voltage_l1",))
    write(case, rows)


def outage_then_data_stops() -> None:
    rows: list[Row] = []
    for i in range(0, 60):
        meter(rows, "B1-main", T0 + i, 0.0 if i >= 20 else 230.0)
    # the neighbour keeps answering for 12 minutes: B1-main's silence is recorded, not the recording's end
    for i in range(0, 725, 5):
        meter(rows, "B2-main", T0 + i, 230.0)
    write("outage-whose-data-stops-stays-open-no-all-clear", rows)


def voltage_flap() -> None:
    rows: list[Row] = []
    for i in range(0, 300):
        off = 20 <= i < 60 or 80 <= i < 140
        meter(rows, "B1-main", T0 + i, 0.0 if off else 230.0)
    neighbour(rows, 300)
    write("voltage-back-for-20s-then-gone-same-incident-flap-noted", rows)


def reopen() -> None:
    rows: list[Row] = []
    for i in range(0, 600):
        off = 20 <= i < 40 or 300 <= i < 320
        meter(rows, "B1-main", T0 + i, 0.0 if off else 230.0)
    neighbour(rows, 600)
    write("recurrence-within-reopen-window-reopens-same-incident", rows)


def pump_flow_collapse() -> None:
    rows: list[Row] = []
    for i in range(0, 300):
        t = T0 + i
        rows.append((t, "B1-pump", "current_l1", "4.2"))
        rows.append((t, "B1-pump", "power_total", "2100"))
        if i % 2 == 0:
            rows.append((t, "B1-flow", "flow", "0.03" if i >= 100 else "11.8"))
        rows.append((t, "B1-pressure", "pressure", "2.9" if i < 100 else "0.3"))
    write("pump-running-with-flow-collapsing-water-supply-incident", rows)


def night_flow(case: str, nights: int, leak_from_night: int) -> None:
    rows: list[Row] = []
    start = datetime(2026, 3, 1, 12, 0, tzinfo=TZ).timestamp()
    for step in range(0, (nights + 1) * 24 * 4):  # every 15 minutes
        t = start + step * 900
        local = datetime.fromtimestamp(t, TZ)
        night = (t - start) // 86400
        leaking = night >= leak_from_night
        hour = local.hour
        base = 0.9 if leaking else 0.0
        flow = (6.0 if 6 <= hour < 23 else 0.4) + base if not (2 <= hour < 4) else base + 0.05
        rows.append((t, "B1-flow", "flow", f"{flow:.2f}"))
    write(case, rows)


def late_root() -> None:
    rows: list[Row] = []
    for i in range(0, 400, 5):
        t = T0 + i
        for n in range(1, 6):
            dev = f"B1-u{n:02d}"
            silent = (n == 1 and i >= 20) or (n > 1 and i >= 200)
            meter(rows, dev, t, None if silent else 230.0, ("voltage_l1",))
        meter(rows, "B2-main", t, 231.0)  # still answering: the silence is B1's supply, not the gateway's
    write("late-root-cause-absorbs-open-device-fault", rows)


def line_fault() -> None:
    rows: list[Row] = []
    for i in range(0, 300, 2):
        t = T0 + i
        meter(rows, "B1-main", t, 230.0)
        for n in range(1, 4):
            meter(rows, f"B1-m{n}", t, None if i >= 30 else 230.0, ("voltage_l1",))
    write("all-meters-on-one-line-silent-with-mains-healthy-line-fault", rows)


def mains_lost() -> None:
    rows: list[Row] = []
    for i in range(0, 200, 2):
        t = T0 + i
        rows.append((t, "gw-ups", "mains_present", "0" if i >= 40 else "1"))
        for b in ("B1", "B2"):
            for n in range(1, 3):
                meter(rows, f"{b}-u{n}", t, None if i >= 42 else 230.0, ("voltage_l1",))
    write("gateway-mains-lost-one-site-outage-absorbs-domains", rows)


def phase_loss() -> None:
    rows: list[Row] = []
    for i in range(0, 200):
        t = T0 + i
        if 20 <= i < 120:
            rows.extend([(t, "B1-main", "voltage_l1", "231"), (t, "B1-main", "voltage_l2", "3"),
                         (t, "B1-main", "voltage_l3", "229")])  # fmt: skip
        else:
            meter(rows, "B1-main", t, 230.0)
    neighbour(rows, 200)
    write("one-phase-lost-phase-loss-not-outage", rows)


def power_back_main_first() -> None:
    rows: list[Row] = []
    for i in range(0, 300):
        t = T0 + i
        off = 30 <= i < 150
        if i % 5 == 0:
            meter(rows, "B1-main", t, 0.0 if off else 229.0)
            meter(rows, "B2-main", t, 231.0)
        for n in range(1, 5):
            if i % 10 == 2 * n:  # polled every 10 s, each at its own phase
                meter(rows, f"B1-u{n:02d}", t, 0.0 if off else 228.0)
    write("power-back-main-meter-first-unit-meters-stay-in-the-one-incident", rows)


def night_flow_across_midnight_and_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    rows: list[Row] = []
    start = datetime(2026, 3, 26, 12, 0, tzinfo=berlin).timestamp()
    leak_from = datetime(2026, 3, 27, 20, 0, tzinfo=berlin).timestamp()
    for step in range(0, 4 * 24 * 4):  # every 15 minutes for four days
        t = start + step * 900
        hour = datetime.fromtimestamp(t, berlin).hour
        base = 0.9 if t >= leak_from else 0.0
        flow = base + (6.0 if 6 <= hour < 23 else (0.05 if hour >= 23 or hour < 5 else 0.4))
        rows.append((t, "B1-flow", "flow", f"{flow:.2f}"))
    write("calendar-window-across-midnight-and-dst-in-site-time-host-elsewhere", rows)


def short_cycling() -> None:
    rows: list[Row] = []
    for i in range(0, 3 * 3600, 10):
        t = T0 + i
        minute = i / 60
        # first hour: a start every 15 min (on for 5); second hour: every 6 min (on for 2); then off
        if minute < 60:
            on = minute % 15 < 5
        elif minute < 120:
            on = (minute - 60) % 6 < 2
        else:
            on = False
        # while running, the motor current dips to 0.45 A every 30 s: at the 0.5 A threshold, not a stop
        current = (0.45 if i % 30 == 0 else 2.0) if on else 0.0
        rows.append((t, "B1-pump", "current_l1", f"{current:g}"))
        rows.append((t, "B1-flow", "flow", "6.0" if on else "0.0"))
    write("pump-short-cycling-starts-counted-with-hysteresis", rows)


def pressure_glitch() -> None:
    rows: list[Row] = []
    for i in range(0, 300):
        p = 0.0 if i == 100 else 3.0 + (0.02 if i % 3 == 0 else 0.0)  # one 0 bar reading at +100 s
        rows.append((T0 + i, "B1-pressure", "pressure", f"{p:g}"))
    write("single-zero-pressure-reading-is-a-glitch-no-burst", rows)


def real_burst() -> None:
    rows: list[Row] = []
    fall = (3.0, 2.325, 1.65, 0.975, 0.3)  # 3 bar -> 0.3 bar over 4 s from +100 s, then it stays low
    for i in range(0, 300):
        p = 3.0 if i < 100 else fall[min(i - 100, len(fall) - 1)]
        rows.append((T0 + i, "B1-pressure", "pressure", f"{p:g}"))
    write("real-burst-pressure-falls-and-stays-low-fires-in-time", rows)


def recovering_outage_data_gap() -> None:
    rows: list[Row] = []
    for i in range(0, 600):
        if 100 <= i < 400:
            continue  # nothing recorded from B1-main for 5 minutes
        meter(rows, "B1-main", T0 + i, 0.0 if 20 <= i < 80 else 230.0)
    neighbour(rows, 600)
    write("recovering-outage-across-a-data-gap-does-not-resolve-early", rows)


def partly_restored_outage(n: int, i: int) -> bool:
    """Meter n silent at +i s? All 20 drop out within 30 s from +60 s; at +200 s all but u16-u20 are back;
    u03 drops again at +300 s."""
    if i < 60 + (n - 1) * 1.5:
        return False
    if n >= 16:
        return True
    return i < 200 or (n == 3 and i >= 300)


def two_of_twenty_at_0v() -> None:
    """20 unit meters on a supply of their own (not line-powered): u07 and u13 read 0 V from +60 s."""
    rows: list[Row] = []
    for i in range(0, 240, 5):
        t = T0 + i
        for n in range(1, 21):
            volts = 0.0 if n in (7, 13) and i >= 60 else 228.0 + n % 3
            meter(rows, f"B1-u{n:02d}", t, volts, ("voltage_l1",))
        for n in range(1, 4):
            meter(rows, f"B2-u{n:02d}", t, 230.0, ("voltage_l1",))
    write("two-of-twenty-unit-meters-at-0v-unit-outages-not-domain-outage", rows)


def link_down(
    case: str, b1_main_volts: Callable[[int], float | None], b2_line_silent: Callable[[int], bool]
) -> None:
    """Two buildings on two Modbus lines, main meters on an auxiliary supply, unit meters line-powered."""
    rows: list[Row] = []
    for i in range(0, 700, 2):
        t = T0 + i
        meter(rows, "B1-main", t, b1_main_volts(i))
        dark_b1 = b1_main_volts(i) is None or b1_main_volts(i) == 0.0
        for n in range(1, 7):
            meter(rows, f"B1-u{n:02d}", t, None if dark_b1 else 229.0, ("voltage_l1",))
        gone = b2_line_silent(i)
        meter(rows, "B2-main", t, None if gone else 231.0)
        for n in range(1, 7):
            meter(rows, f"B2-u{n:02d}", t, None if gone else 230.0, ("voltage_l1",))
    write(case, rows)


def lost_phase_units(case: str, silent_unit: Callable[[int, int], bool]) -> None:
    """B1-main loses L2 from 60 s to 240 s; unit meters report every 5 s, each at its own second."""
    rows: list[Row] = []
    for i in range(0, 420):
        t = T0 + i
        if 60 <= i < 240:
            rows.extend([(t, "B1-main", "voltage_l1", "231"), (t, "B1-main", "voltage_l2", "4"),
                         (t, "B1-main", "voltage_l3", "229")])  # fmt: skip
        else:
            meter(rows, "B1-main", t, 230.0)
        for n in range(1, 37):
            if i % 5 == n % 5:
                meter(rows, f"B1-u{n:02d}", t, None if silent_unit(n, i) else 229.0, ("voltage_l1",))
    neighbour(rows, 420)
    write(case, rows)


STEP = 15  # the stuck-sensor cases: one reading of each meter every 15 s, 45 minutes


def _jitter(k: int) -> int:
    """A deterministic pseudo-random step in -2..2 for the k-th reading."""
    return (k * 7 + k // 3) % 5 - 2


def _day_flow(i: int) -> float:
    """A zone's daytime flow at +i s: demand swinging between 4 and 8 m3/h every ten minutes, with jitter."""
    phase = (i % 600) / 300
    return round(4.0 + 4.0 * (phase if phase <= 1 else 2 - phase) + 0.05 * _jitter(i // STEP), 2)


def stuck_pressure(case: str, pressure: Callable[[int], float], flow: Callable[[int], float]) -> None:
    rows: list[Row] = []
    for i in range(0, 45 * 60 + 1, STEP):
        rows.append((T0 + i, "B1-pressure", "pressure", f"{pressure(i):.3f}"))
        rows.append((T0 + i + 5, "B1-flow", "flow", f"{flow(i):.2f}"))
    write(case, rows)


def _healthy_pressure(i: int) -> float:
    """A transmitter that follows its zone: pressure sags 0.02 bar per m3/h of demand, 1-2 counts of noise."""
    return round(3.25 - 0.02 * (_day_flow(i) - 6.0) + 0.001 * _jitter(i // STEP + 3), 3)


def _frozen_from_330s(i: int) -> float:
    """Healthy until +330 s (3.220 bar, 9 counts above the reading before), then that reading for good."""
    return _healthy_pressure(min(i, 330))


if __name__ == "__main__":
    main_meter_all_phases()
    twenty_silent(
        "twenty-line-powered-meters-silent-within-30s-one-domain-outage",
        lambda n, i: i >= 60 + (n - 1) * 1.5,  # the 20 meters drop out over 30 s
    )
    twenty_silent("one-silent-meter-among-answering-ones-device-fault", lambda n, i: n == 7 and i >= 60)
    outage_then_data_stops()
    voltage_flap()
    reopen()
    pump_flow_collapse()
    night_flow("night-flow-three-nights-running-leak-suspected", 4, 1)
    night_flow("night-flow-two-nights-no-leak", 3, 2)
    late_root()
    line_fault()
    mains_lost()
    phase_loss()
    power_back_main_first()
    night_flow_across_midnight_and_dst()
    short_cycling()
    pressure_glitch()
    real_burst()
    recovering_outage_data_gap()
    twenty_silent(
        "two-silent-of-twenty-line-powered-meters-device-faults-not-outage",
        lambda n, i: n in (7, 13) and i >= 60,
    )
    twenty_silent("partly-restored-outage-meter-drops-again-same-incident", partly_restored_outage, 480)
    two_of_twenty_at_0v()
    link_down(
        "gateway-link-down-every-device-silent-one-comm-fault-no-outage",
        lambda i: None if 60 <= i < 300 else 230.0,
        lambda i: 60 <= i < 300,
    )
    link_down(
        "aux-supplied-main-meter-at-0v-outage-while-another-line-is-silent",
        lambda i: 0.0 if 60 <= i < 300 else 230.0,
        lambda i: 60 <= i < 300,
    )
    lost_phase_units(
        "unit-meters-on-a-lost-phase-silent-one-phase-loss-incident", lambda n, i: n <= 12 and 61 <= i < 240
    )
    lost_phase_units(
        "meter-declared-on-another-phase-silent-during-phase-loss-own-fault",
        lambda n, i: (n <= 12 and 61 <= i < 240) or (n == 13 and i >= 61),
    )
    stuck_pressure("pressure-frozen-40-minutes-while-flow-moves-sensor-fault", _frozen_from_330s, _day_flow)
    stuck_pressure(
        "pressure-varies-with-flow-never-stuck",
        lambda i: 3.25 + 0.001 * _jitter(i // STEP + 3),  # 1-2 counts of noise, nothing more
        _day_flow,
    )
    stuck_pressure(  # a quiet night: nothing drawn but a trickle, the zone pressure steady to the count
        "pressure-flat-while-flow-flat-not-stuck",
        lambda i: 3.412,
        lambda i: 0.2 + 0.05 * _jitter(i // STEP),
    )
