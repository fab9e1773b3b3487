"""Scenarios: a YAML timeline of what happens to a simulated site (outage at 30 s, restore at 90 s, ...).

    name: b1-outage
    description: Building B1 loses mains power for one minute.
    timeline:
      - {at: 30s, cut_power: B1}
      - {at: 90s, restore_power: B1}

Each step has `at` (seconds from the start, or "30s", "2m"), an optional `note` (what to watch for, printed
with the timeline) and exactly one action:
  set: {device, quantity, value, noise?, period?}   hold a value, or wander within +-noise around it
  ramp: {device, quantity, to, over, from?}          linear change over a duration
  clear: {device, quantity?}                         back to the nominal value(s)
  cut_power: B1 | B1-power                           a building (all its power domains) or one power domain
  restore_power: B1 | B1-power
  stop_device: B2-shop / restore_device: B2-shop     one device stops / starts answering
  flicker: {target, times, period, off_for?}         power off and on `times` times, every `period`
  error_bit: {device, bit, set?, quantity?}          e.g. TUF-2000M REG72 bit 3 = pipe empty
  pump: {device, running}                            the pump motor load on or off
  delay: {device, seconds}                           answer Modbus requests this much later (slow device)

Errors name file:line and the field, like the site file's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.config import ConfigError, ConfigIssue, Site
from gateway.config.yamlsrc import Loc, YamlSyntaxError, load
from gateway.core.durations import Duration
from simulators.world import World, WorldError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SetAction(Strict):
    device: str
    quantity: str
    value: float
    noise: float = Field(default=0.0, ge=0, description="amplitude of a seeded waveform around value")
    period: Duration = Field(default=60.0, gt=0, description="period of the waveform's slow swing")


class RampAction(Strict):
    device: str
    quantity: str
    to: float
    over: Duration = Field(description="how long the ramp takes")
    start: float | None = Field(default=None, alias="from", description="start value; default: current")


class ClearAction(Strict):
    device: str
    quantity: str | None = None


class FlickerAction(Strict):
    target: str = Field(description="building or power supply domain")
    times: int = Field(ge=1, le=1000)
    period: Duration = Field(gt=0, description="from one cut to the next")
    # Not `off`: YAML 1.1 reads an unquoted off/on key as a boolean.
    off_for: Duration | None = Field(
        default=None, gt=0, description="how long each cut lasts; default period/2"
    )

    @model_validator(mode="after")
    def _off_inside_period(self) -> FlickerAction:
        if self.off_for is not None and self.off_for >= self.period:
            raise ValueError(f"off_for ({self.off_for:g}s) must be shorter than period ({self.period:g}s)")
        return self


class ErrorBitAction(Strict):
    device: str
    bit: int = Field(ge=0, le=15)
    set: bool = Field(default=True, description="true sets the bit, false clears it")
    quantity: str = "error_code"


class PumpAction(Strict):
    device: str
    running: bool


class DelayAction(Strict):
    device: str
    seconds: Duration


ACTIONS = (
    "set", "ramp", "clear", "cut_power", "restore_power", "stop_device", "restore_device", "flicker",
    "error_bit", "pump", "delay",
)  # fmt: skip


class Step(Strict):
    at: Duration = Field(description="seconds from the start of the scenario, or 30s, 2m")
    note: str = Field(default="", description="what to watch for, e.g. 'a comm fault incident opens'")
    set: SetAction | None = None
    ramp: RampAction | None = None
    clear: ClearAction | None = None
    cut_power: str | None = None
    restore_power: str | None = None
    stop_device: str | None = None
    restore_device: str | None = None
    flicker: FlickerAction | None = None
    error_bit: ErrorBitAction | None = None
    pump: PumpAction | None = None
    delay: DelayAction | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            what = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(f"each step needs exactly one action ({', '.join(ACTIONS)}); {what}")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)


class ScenarioModel(Strict):
    name: str = ""
    description: str = ""
    timeline: list[Step] = Field(default_factory=list)


@dataclass(frozen=True)
class TimedAction:
    """One thing that happens at `t` seconds (scenario time) to the world."""

    t: float
    label: str
    apply: Callable[[World], None]


@dataclass(frozen=True)
class Scenario:
    model: ScenarioModel
    path: Path | None
    actions: tuple[TimedAction, ...]

    @property
    def name(self) -> str:
        return self.model.name or (self.path.stem if self.path else "scenario")

    @property
    def duration(self) -> float:
        return self.actions[-1].t if self.actions else 0.0


def compile_steps(model: ScenarioModel) -> tuple[TimedAction, ...]:
    """The timeline as single world actions sorted by time (a flicker becomes its cuts and restores)."""
    out: list[TimedAction] = []
    for step in model.timeline:
        out.extend(_expand(step))
    out.sort(key=lambda a: a.t)  # stable: steps at the same time keep their file order
    return tuple(out)


# Steps that name one thing and call the World method of the step's field name: (field and method, label).
_NAMED_STEPS = (
    ("cut_power", "cut power"),
    ("restore_power", "restore power"),
    ("stop_device", "stop"),
    ("restore_device", "restore"),
)


def _expand(step: Step) -> list[TimedAction]:
    t = step.at
    if step.set is not None:
        s = step.set
        label = f"set {s.device}.{s.quantity} = {s.value:g}" + (f" +-{s.noise:g}" if s.noise else "")
        return [
            TimedAction(
                t, label, lambda w: w.set_value(s.device, s.quantity, s.value, noise=s.noise, period=s.period)
            )
        ]
    if step.ramp is not None:
        r = step.ramp
        label = f"ramp {r.device}.{r.quantity} -> {r.to:g} over {r.over:g}s"
        return [TimedAction(t, label, lambda w: w.ramp(r.device, r.quantity, r.to, r.over, r.start))]
    if step.clear is not None:
        c = step.clear
        label = f"clear {c.device}" + (f".{c.quantity}" if c.quantity else "")
        return [TimedAction(t, label, lambda w: w.clear(c.device, c.quantity))]
    for method, verb in _NAMED_STEPS:
        name: str | None = getattr(step, method)
        if name is not None:
            return [TimedAction(t, f"{verb} {name}", methodcaller(method, name))]
    if step.flicker is not None:
        f = step.flicker
        off = f.off_for if f.off_for is not None else f.period / 2
        acts: list[TimedAction] = []
        for k in range(f.times):
            start = t + k * f.period
            acts.append(TimedAction(start, f"flicker {k + 1}/{f.times}: cut {f.target}", _cut(f.target)))
            acts.append(
                TimedAction(start + off, f"flicker {k + 1}/{f.times}: restore {f.target}", _rest(f.target))
            )
        return acts
    if step.error_bit is not None:
        e = step.error_bit
        label = f"{e.device}.{e.quantity} bit {e.bit} {'set' if e.set else 'cleared'}"
        return [TimedAction(t, label, lambda w: w.set_error_bit(e.device, e.bit, e.set, e.quantity))]
    if step.pump is not None:
        p = step.pump
        label = f"pump {p.device} {'running' if p.running else 'stopped'}"
        return [TimedAction(t, label, lambda w: w.set_pump(p.device, p.running))]
    if step.delay is not None:
        d = step.delay
        return [
            TimedAction(t, f"delay {d.device} {d.seconds:g}s", lambda w: w.set_delay(d.device, d.seconds))
        ]
    raise AssertionError("validated step without action")


def phrase(step: Step) -> str:
    """What a step does, in words: "B2-shop stops answering", "power cut in B1"."""
    obj = getattr(step, step.action)
    if isinstance(obj, str):
        return {
            "cut_power": f"power cut in {obj}",
            "restore_power": f"power back in {obj}",
            "stop_device": f"{obj} stops answering",
            "restore_device": f"{obj} answers again",
        }[step.action]
    if isinstance(obj, SetAction):
        return f"{obj.device} {obj.quantity} {obj.value:g}" + (f"±{obj.noise:g}" if obj.noise else "")
    if isinstance(obj, RampAction):
        return f"{obj.device} {obj.quantity} ramps to {obj.to:g} over {obj.over:g}s"
    if isinstance(obj, ClearAction):
        return f"{obj.device} {obj.quantity or 'readings'} back to normal"
    if isinstance(obj, FlickerAction):
        off = obj.off_for if obj.off_for is not None else obj.period / 2
        return f"power in {obj.target} flickers {obj.times} times (off {off:g}s every {obj.period:g}s)"
    if isinstance(obj, ErrorBitAction):
        return f"{obj.device} {obj.quantity} bit {obj.bit} {'set' if obj.set else 'cleared'}"
    if isinstance(obj, PumpAction):
        return f"pump {obj.device} {'starts' if obj.running else 'stops'}"
    if isinstance(obj, DelayAction):
        return f"{obj.device} answers {obj.seconds:g}s late"
    raise AssertionError(f"no phrase for {step.action}")


def timeline_lines(scenario: Scenario) -> list[str]:
    """The timeline for people, one line per moment: "+20s  B2-shop stops answering: <note>".

    Steps at the same moment share a line; a step's note follows its phrase."""
    moments: dict[float, list[str]] = {}
    for step in scenario.model.timeline:
        text = phrase(step) + (f": {step.note}" if step.note else "")
        moments.setdefault(step.at, []).append(text)
    return [f"{'+' + format(t, 'g') + 's':<6} {'; '.join(texts)}" for t, texts in sorted(moments.items())]


def _cut(target: str) -> Callable[[World], None]:
    return lambda w: w.cut_power(target)


def _rest(target: str) -> Callable[[World], None]:
    return lambda w: w.restore_power(target)


# ---------------------------------------------------------------------------------------------------------
# Loading and validation


def load_scenario(path: str | Path, site: Site | None = None) -> Scenario:
    """Validate a scenario file (and, given the site, every name it uses). Raises ConfigError."""
    p = Path(path)
    try:
        src = load(p)
    except YamlSyntaxError as exc:
        raise ConfigError([ConfigIssue(p, exc.line, (), exc.message)]) from None
    issues = [ConfigIssue(p, src.line_of(i.loc), i.loc, i.message) for i in src.issues]
    if not isinstance(src.data, dict):
        raise ConfigError([*issues, ConfigIssue(p, 1, (), "expected a mapping with name and timeline")])
    try:
        model = ScenarioModel.model_validate(src.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            issues.append(ConfigIssue(p, src.line_of(loc), loc, _message(err)))
        raise ConfigError(issues) from None
    if site is not None:
        world = World(site, clock=lambda: 0.0)
        for loc, msg in check_names(model, world):
            issues.append(ConfigIssue(p, src.line_of(loc), loc, msg))
    if issues:
        raise ConfigError(issues)
    return Scenario(model=model, path=p, actions=compile_steps(model))


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown field; a step takes `at`, `note` and one of: {', '.join(ACTIONS)}"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    inp = err.get("input")
    if inp is not None and not isinstance(inp, dict | list):
        msg += f", got {inp!r}"
    return msg


def check_names(model: ScenarioModel, world: World) -> list[tuple[Loc, str]]:
    """Every device, quantity, building and domain the timeline names must exist in the site."""
    out: list[tuple[Loc, str]] = []
    for i, step in enumerate(model.timeline):
        base: Loc = ("timeline", i, step.action)
        obj = getattr(step, step.action)
        try:
            if isinstance(obj, str):
                if step.action in ("cut_power", "restore_power"):
                    world.power_domains(obj)
                else:
                    world.quantities(obj)
                continue
            device = getattr(obj, "device", None)
            if device is not None:
                try:
                    quantities = world.quantities(device)
                except WorldError as exc:
                    out.append(((*base, "device"), str(exc)))
                    continue
                quantity = getattr(obj, "quantity", None)
                if quantity is not None and quantity not in quantities:
                    out.append(
                        ((*base, "quantity"), f"device {device} has no quantity {quantity!r}; "
                         f"known: {sorted(quantities)}")
                    )  # fmt: skip
            target = getattr(obj, "target", None)
            if target is not None:
                try:
                    world.power_domains(target)
                except WorldError as exc:
                    out.append(((*base, "target"), str(exc)))
        except WorldError as exc:
            out.append((base, str(exc)))
    return out
