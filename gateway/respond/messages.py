"""The words of a notice: one Jinja2 template per stage and language, rendered in a sandbox.

Where the templates are
    The shipped ones are gateway/respond/templates/<lang>/<stage>.j2 (lang zh or en, stage a `Stage`
    value). A site's `notify.templates_dir` (relative to the site file) has the same layout; a file there
    replaces the shipped one of that name, every other template stays the shipped one. Files whose name
    starts with `_` are pieces the stage templates include (`{% include "_advice.j2" %}`); a site may
    replace those too.

The title convention
    The first line a template renders must be `title: <the title>`; the rest, after it, is the body:

        title: 【停电通知】{{ buildings|names }}
        尊敬的住户：
        ...

    Lines holding only a `{% ... %}` tag leave nothing behind (trim_blocks, lstrip_blocks), so a template
    may start with `{% set %}` lines. Trailing spaces are dropped, runs of blank lines become one.

What a template may read
    The context of gateway/respond/context.py (site, incident, buildings, advice, now_local) and the
    stage's own keys. These optional keys are always there, None (or empty) when not set, so
    `{% if eta_local %}` is the test:
        eta_local   the expected restoration time staff have set (a local ISO time), or None
        planned     True for a planned maintenance window's advance notice (residents_notice) or an
                    incident inside one (staff_open); then `maintenance` holds the window: id,
                    start_local, end_local, categories, note (and a residents_notice has no `incident`)
        duration_s  how long the outage lasted, in seconds (all_clear, resolved), or None
        step        the escalation step (escalation), or None
        links       {"ack": url or None, "on_site": url or None, "vote": url or None}: the dispatch links
                    (dispatch, escalation) and the residents' one-tap rating page (all_clear)
        team        who is called (dispatch, escalation, target_missed): a list of {"role", "name",
                    "phone"}, role one of oncall, backup, supervisor, manager; name empty when the roster
                    names nobody for the role
        items       the notices a digest merges: a list of {"title", "body"} (digest: its only key)
    `incident.drill` is always there too (False unless the incident is a drill).
    Any other name a template uses that the context lacks is an error (StrictUndefined).

Drills
    A drill's messages (`incident.drill` true; a digest whose every item is one) are marked by `render`
    itself, whatever the template says, so a site's own templates cannot forget it: the title starts with
    【演练】 / [DRILL] and the body with a line saying it is a drill (DRILL_MARK, DRILL_LINE). A title or
    body that already starts with the mark is left as it is.

Filters (in the template's language)
    time      a local ISO time (or Unix seconds) -> "3月2日 10:05" / "2 Mar 10:05"
    duration  seconds -> "2小时15分" / "2 h 15 min"
    names     buildings -> "1号楼、2号楼" / "Building 1 and Building 2" (past `limit`: "…等7栋楼")
    what      category -> what residents are told happened: "停电" / "a power cut"; in English
              what("the") gives "the power cut", what("") "power cut"
    category  category -> its name for staff: "停电" / "power outage"
    severity  severity -> "紧急" / "critical"

Safety
    Templates run in Jinja2's immutable sandbox: no attribute starting with `_`, no method that changes a
    value, ranges capped. Autoescape is off (the messages are plain text).

Errors
    A template that does not parse, names a missing key, breaks the sandbox or renders no title raises
    `TemplateProblem` (path, line, message; its text "path:line: message"); the sender catches it and the
    daemon runs on. `Messages.check()` parses every override and renders every stage of each overridden
    language against sample contexts (`sample_context`), returning those texts; `meterwatch notify
    preview` runs it first.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError, pass_context
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.config import Site
from gateway.config.notify import Language
from gateway.respond.context import ADVICE
from gateway.respond.model import Stage

LANGUAGES: tuple[str, ...] = get_args(Language)
SHIPPED = Path(__file__).parent / "templates"

# Keys a template may always read: their value when the notice does not set them.
OPTIONAL: dict[str, Any] = {
    "eta_local": None,
    "duration_s": None,
    "step": None,
    "links": {},
    "items": [],
    "planned": False,
    "maintenance": None,
    "team": [],
}
LINKS = ("ack", "on_site", "vote")

# The first words of every message of a drill, title and body (see "Drills" above).
DRILL_MARK: dict[str, str] = {"zh": "【演练】", "en": "[DRILL]"}
DRILL_LINE: dict[str, str] = {
    "zh": "【演练】这是一次应急演练，不是真实事件。",
    "en": "[DRILL] This is a drill, not a real incident.",
}


class TemplateProblem(Exception):
    """A template that cannot give a message: where (file and line, when known) and what."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str


# ---------------------------------------------------------------------------------------------- words

CATEGORY_NAMES: dict[str, dict[str, str]] = {
    "zh": {
        "power_outage": "停电",
        "phase_loss": "缺相",
        "undervoltage": "欠压",
        "overvoltage": "过压",
        "comm_fault": "通信故障",
        "water_supply": "供水中断",
        "water_burst": "爆管",
        "leak_suspected": "疑似漏水",
        "pump_fault": "水泵故障",
        "sensor_fault": "传感器故障",
    },
    "en": {
        "power_outage": "power outage",
        "phase_loss": "phase loss",
        "undervoltage": "undervoltage",
        "overvoltage": "overvoltage",
        "comm_fault": "communication fault",
        "water_supply": "water supply",
        "water_burst": "burst main",
        "leak_suspected": "leak suspected",
        "pump_fault": "pump fault",
        "sensor_fault": "sensor fault",
    },
}

# What residents (and the utility) are told happened; English as (article, noun).
WHAT_ZH: dict[str, str] = {
    "power_outage": "停电",
    "phase_loss": "部分停电",
    "undervoltage": "电压偏低",
    "overvoltage": "电压偏高",
    "water_supply": "停水",
    "water_burst": "供水管道破裂",
    "leak_suspected": "疑似漏水",
    "power": "停电",
    "water": "停水",
}
WHAT_EN: dict[str, tuple[str, str]] = {
    "power_outage": ("a", "power cut"),
    "phase_loss": ("a", "partial power cut"),
    "undervoltage": ("", "low voltage"),
    "overvoltage": ("", "high voltage"),
    "water_supply": ("a", "water outage"),
    "water_burst": ("a", "burst water main"),
    "leak_suspected": ("a", "suspected leak"),
    "power": ("a", "power cut"),
    "water": ("a", "water outage"),
}


def what_happened(category: str, language: str, article: str = "a") -> str:
    """What residents are told happened: 停电 / a power cut (article "a"), the power cut ("the"), power
    cut (""); by category, else by its advice, else a supply problem."""
    key = category if category in WHAT_ZH else (ADVICE.get(category) or "")
    if language == "zh":
        return WHAT_ZH.get(key, "供应异常")
    own, noun = WHAT_EN.get(key, ("a", "supply problem"))
    if article == "the":
        return f"the {noun}"
    if article and own:
        return f"{own} {noun}"
    return noun


SEVERITY_NAMES: dict[str, dict[str, str]] = {
    "zh": {"critical": "紧急", "major": "严重", "minor": "一般", "warning": "警告", "info": "提示"},
    "en": {},
}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _as_datetime(value: Any, tz: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), ZoneInfo(tz))
    return datetime.fromisoformat(str(value))


def format_time(value: Any, language: str, tz: str = "UTC") -> str:
    """A local ISO time (or Unix seconds, shown in `tz`) as people read it: 3月2日 10:05 / 2 Mar 10:05."""
    if value is None or value == "":
        return ""
    t = _as_datetime(value, tz)
    if language == "zh":
        return f"{t.month}月{t.day}日 {t:%H:%M}"
    return f"{t.day} {_MONTHS[t.month - 1]} {t:%H:%M}"


def format_duration(seconds: Any, language: str) -> str:
    """Seconds as a rounded duration: 2小时15分 / 2 h 15 min; days and hours from a day on."""
    if seconds is None or seconds == "":
        return ""
    minutes = round(float(seconds) / 60)
    zh = language == "zh"
    if minutes < 1:
        return "不到1分钟" if zh else "under a minute"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        if zh:
            return f"{days}天{hours}小时" if hours else f"{days}天"
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        if zh:
            return f"{hours}小时{mins}分" if mins else f"{hours}小时"
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins}分钟" if zh else f"{mins} min"


def format_names(buildings: Any, language: str, limit: int = 5) -> str:
    """Building names, joined the way the language joins a list; beyond `limit`, a count of the rest."""
    names = [str(b.get("name") or b.get("id")) if isinstance(b, Mapping) else str(b) for b in buildings]
    if not names:
        return ""
    if language == "zh":
        if len(names) > limit:
            return "、".join(names[:limit]) + f"等{len(names)}栋楼"
        return "、".join(names)
    if len(names) > limit:
        return ", ".join(names[:limit]) + f" and {len(names) - limit} more buildings"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _filters(language: str) -> dict[str, Any]:
    @pass_context
    def time(ctx: Context, value: Any) -> str:
        site = ctx.get("site")
        tz = site.get("timezone", "UTC") if isinstance(site, Mapping) else "UTC"
        return format_time(value, language, tz)

    def duration(value: Any) -> str:
        return format_duration(value, language)

    def names(value: Any, limit: int = 5) -> str:
        return format_names(value, language, limit)

    def what(category: Any, article: str = "a") -> str:
        return what_happened(str(category), language, article)

    def category(value: Any) -> str:
        return CATEGORY_NAMES[language].get(str(value), str(value).replace("_", " "))

    def severity(value: Any) -> str:
        return SEVERITY_NAMES[language].get(str(value), str(value))

    return {
        "time": time,
        "duration": duration,
        "names": names,
        "what": what,
        "category": category,
        "severity": severity,
    }


# ---------------------------------------------------------------------------------------------- samples

SAMPLE_EVIDENCE = {
    "power": ["main meter B1-main reads no voltage on any phase"],
    "water": ["pressure of B1-pressure is 0.2 bar, below 1.0 bar for 60 s"],
}


def sample_context(
    stage: Stage | str, category: str = "power_outage", *, optional: bool = True
) -> dict[str, Any]:
    """A context of the shape gateway/respond/context.incident_context builds, for checking templates:
    a made-up incident of `category` in one building; with `optional`, every optional key set."""
    stage = Stage(stage)
    if stage == Stage.DIGEST:
        items = [
            {"title": "【停电通知】1号楼", "body": "1号楼于3月2日 10:05起停电。"},
            {"title": "Power cut: Building 2", "body": "Power has been off in Building 2 since 2 Mar 10:05."},
        ]
        return {"items": items if optional else []}
    advice = ADVICE.get(category)
    resolved = stage in (Stage.ALL_CLEAR, Stage.RESOLVED)
    ctx: dict[str, Any] = {
        "site": {
            "id": "sample",
            "name": "阳光花园",
            "timezone": "Asia/Shanghai",
            "hotline": "400-800-1234" if optional else "",
        },
        "incident": {
            "id": 42,
            "category": category,
            "title": f"{category.replace('_', ' ')}: domain B1-{advice or 'power'}",
            "scope": f"domain:B1-{advice or 'power'}",
            "severity": "critical",
            "event_code": "001",
            "households": 96 if optional else 0,
            "state": "resolved" if resolved else "firing",
            "opened_at": 1772417100.0,
            "opened_local": "2026-03-02T10:05:00+08:00",
            "first_evidence_local": "2026-03-02T10:04:35+08:00",
            "resolved_local": "2026-03-02T12:20:00+08:00" if resolved else None,
            "symptoms": 2,
            "drill": False,
            "evidence": SAMPLE_EVIDENCE.get(advice or "", ["sensor B1-pressure reads the same value"])
            if optional
            else [],
        },
        "buildings": [{"id": "B1", "name": "1号楼"}] if optional else [],
        "advice": advice,
        "now_local": "2026-03-02T12:30:00+08:00" if resolved else "2026-03-02T10:35:00+08:00",
    }
    if optional:
        ctx["eta_local"] = "2026-03-02T14:00:00+08:00"
        ctx["duration_s"] = 8100.0 if resolved else None
        ctx["step"] = 2 if stage == Stage.ESCALATION else None
        if stage in (Stage.DISPATCH, Stage.ESCALATION):
            ctx["links"] = {
                "ack": "https://gw.example/ack/t0k3n",
                "on_site": "https://gw.example/on-site/t0k3n",
            }
        if stage == Stage.ALL_CLEAR:
            ctx["links"] = {"vote": "https://gw.example/r/t0k3n"}
        if stage in (Stage.DISPATCH, Stage.ESCALATION, Stage.TARGET_MISSED):
            ctx["team"] = [
                {"role": "oncall", "name": "王工", "phone": "13800000001"},
                {"role": "backup", "name": "", "phone": ""},
            ]
    return ctx


def _variants(stage: Stage) -> list[dict[str, Any]]:
    """The sample contexts a template is checked against: each advice, with and without the optional keys."""
    if stage == Stage.DIGEST:
        return [sample_context(stage), sample_context(stage, optional=False)]
    return [
        sample_context(stage, "power_outage"),
        sample_context(stage, "water_supply", optional=False),
        sample_context(stage, "water_supply"),
        sample_context(stage, "pump_fault", optional=False),
        drill_sample(stage),
        *([maintenance_sample()] if stage == Stage.RESIDENTS_NOTICE else []),
    ]


def drill_sample(stage: Stage | str) -> dict[str, Any]:
    """A drill's context (`meterwatch drill`): a sample power cut with incident.drill true."""
    ctx = sample_context(stage, "power_outage")
    ctx["incident"] = {**ctx["incident"], "drill": True, "title": "drill: power outage"}
    return ctx


def maintenance_sample() -> dict[str, Any]:
    """A planned maintenance window's advance notice, as gateway/respond/policy.py owes it: no incident."""
    return {
        "site": {"id": "sample", "name": "阳光花园", "timezone": "Asia/Shanghai", "hotline": "400-800-1234"},
        "planned": True,
        "maintenance": {
            "id": "pump-swap",
            "start": 1772416800.0,
            "end": 1772427600.0,
            "start_local": "2026-03-02T10:00:00+08:00",
            "end_local": "2026-03-02T13:00:00+08:00",
            "categories": ["water_supply"],
            "note": "更换二次供水水泵",
        },
        "buildings": [{"id": "B1", "name": "1号楼"}],
        "advice": "water",
        "now_local": "2026-03-01T10:00:00+08:00",
        "audience": "residents:B1",
    }


# ---------------------------------------------------------------------------------------------- rendering


def with_defaults(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context with every optional key present (None or empty when not set)."""
    ctx = dict(context)
    for key, default in OPTIONAL.items():
        if ctx.get(key) is None:
            ctx[key] = default.copy() if isinstance(default, dict | list) else default
    links = ctx["links"] if isinstance(ctx["links"], Mapping) else {}
    ctx["links"] = {**dict.fromkeys(LINKS), **links}
    incident = ctx.get("incident")
    if isinstance(incident, Mapping) and "drill" not in incident:  # a context owed before drills existed
        ctx["incident"] = {**incident, "drill": False}
    return ctx


def is_drill(stage: Stage, language: str, context: Mapping[str, Any]) -> bool:
    """Whether a message is a drill's: its incident is one, or (a digest) every item is a marked one. A
    digest mixing real notices with a drill's is not marked as a whole: its real notices must not read as
    a drill; the drill's items carry their own mark."""
    if stage == Stage.DIGEST:
        items = context.get("items")
        mark = DRILL_MARK[language]
        return (
            isinstance(items, list)
            and bool(items)
            and all(isinstance(i, Mapping) and str(i.get("title", "")).startswith(mark) for i in items)
        )
    incident = context.get("incident")
    return isinstance(incident, Mapping) and incident.get("drill") is True


def mark_drill(rendered: Rendered, language: str) -> Rendered:
    """A drill's message: the mark first in the title, the drill line first in the body (once)."""
    mark = DRILL_MARK[language]
    title = rendered.title
    if not title.startswith(mark):
        title = f"{mark}{title}" if language == "zh" else f"{mark} {title}"
    body = rendered.body
    if not body.startswith(mark):
        body = f"{DRILL_LINE[language]}\n{body}"
    return Rendered(title, body)


def _where(exc: BaseException) -> tuple[str | None, int | None]:
    """The template file and line a rendering error happened at: Jinja2 rewrites the traceback so that
    template frames carry the template's file name and line."""
    path, line = None, None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        name = frame.f_code.co_filename
        if name.endswith(".j2"):
            path, line = name, lineno
    return path, line


def _message(exc: BaseException) -> str:
    if isinstance(exc, UndefinedError):
        return f"unknown name: {exc}"
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc}"
    if isinstance(exc, TemplateNotFound):
        return f"no template {exc.name!r} to include"
    return f"{type(exc).__name__}: {exc}"


_BLANKS = re.compile(r"\n{3,}")


def split_title(text: str, path: str) -> Rendered:
    """Title and body of a rendered template (the first line is `title: ...`)."""
    lines = [ln.rstrip() for ln in text.strip().splitlines()]
    if not lines or not lines[0].startswith("title:"):
        raise TemplateProblem("the first line must be `title: ...` (the message's title)", path, 1)
    title = " ".join(lines[0][len("title:") :].split())
    body = _BLANKS.sub("\n\n", "\n".join(lines[1:])).strip()
    if not title:
        raise TemplateProblem("the title is empty", path, 1)
    if not body:
        raise TemplateProblem("the body is empty", path)
    return Rendered(title, body)


class Messages:
    """The templates of a site: its override folder (optional) over the shipped ones."""

    def __init__(self, override: Path | None = None) -> None:
        self.override = override
        self._envs: dict[str, ImmutableSandboxedEnvironment] = {}

    @classmethod
    def for_site(cls, site: Site) -> Messages:
        """The templates of a site file: its notify.templates_dir is relative to the file."""
        folder = site.config.notify.templates_dir
        return cls(None if folder is None else (site.path.parent / folder).resolve())

    def _env(self, language: str) -> ImmutableSandboxedEnvironment:
        env = self._envs.get(language)
        if env is None:
            folders = [SHIPPED / language]
            if self.override is not None:
                folders.insert(0, self.override / language)
            env = ImmutableSandboxedEnvironment(
                loader=FileSystemLoader([str(f) for f in folders], encoding="utf-8"),
                undefined=StrictUndefined,
                autoescape=False,
                trim_blocks=True,
                lstrip_blocks=True,
                keep_trailing_newline=False,
            )
            env.filters.update(_filters(language))
            self._envs[language] = env
        return env

    def template_path(self, stage: Stage | str, language: str) -> Path:
        """The file a stage's message comes from in a language: the override's, else the shipped one."""
        name = f"{Stage(stage).value}.j2"
        if self.override is not None and (self.override / language / name).is_file():
            return self.override / language / name
        return SHIPPED / language / name

    def render(self, stage: Stage | str, language: str, context: Mapping[str, Any]) -> Rendered:
        """The title and body of a stage's message in a language; TemplateProblem when it cannot be made."""
        try:
            stage = Stage(stage)
        except ValueError:
            raise TemplateProblem(f"unknown stage {stage!r}") from None
        if language not in LANGUAGES:
            raise TemplateProblem(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        env = self._env(language)
        name = f"{stage.value}.j2"
        try:
            template = env.get_template(name)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(exc.message or str(exc), exc.filename, exc.lineno) from None
        except TemplateNotFound:
            raise TemplateProblem(f"no template {language}/{name}") from None
        except Exception as exc:  # unreadable (not UTF-8, no permission)
            raise TemplateProblem(f"cannot read the template: {exc}", f"{language}/{name}") from None
        path = template.filename or f"{language}/{name}"
        try:
            text = template.render(with_defaults(context))
        except TemplateSyntaxError as exc:  # an included piece that does not parse
            raise TemplateProblem(exc.message or str(exc), exc.filename, exc.lineno) from None
        except Exception as exc:  # anything a template can do wrong: the daemon must keep running
            where, line = _where(exc)
            raise TemplateProblem(_message(exc), where or path, line) from None
        rendered = split_title(text, path)
        # here rather than in the templates: a site's own template cannot leave a drill unmarked
        return mark_drill(rendered, language) if is_drill(stage, language, context) else rendered

    def check(self) -> list[str]:
        """Every problem of the override folder as "path:line: message": files that are not templates of a
        known language and stage, templates that do not parse, and stages that do not render against
        the sample contexts (each advice, with and without the optional keys)."""
        if self.override is None:
            return []
        if not self.override.is_dir():
            return [f"{self.override}: templates_dir is not a folder"]
        problems: list[str] = []

        def add(problem: str) -> None:
            if problem not in problems:
                problems.append(problem)

        languages = []
        for entry in sorted(self.override.iterdir()):
            if entry.is_dir() and entry.name in LANGUAGES:
                languages.append(entry.name)
            elif entry.is_dir() or entry.suffix == ".j2":
                where = f"templates go in <lang>/<stage>.j2, lang one of {', '.join(LANGUAGES)}"
                add(f"{entry}: not a language folder; {where}")
        stages = {s.value for s in Stage}
        for language in languages:
            env = self._env(language)
            for f in sorted((self.override / language).iterdir()):
                if f.name.startswith("."):
                    continue
                if f.suffix != ".j2" or not f.is_file():
                    add(f"{f}: not a template (templates are files named <stage>.j2)")
                    continue
                if not f.name.startswith("_") and f.stem not in stages:
                    add(f"{f}:1: unknown stage {f.stem!r}; expected one of {', '.join(sorted(stages))}")
                    continue
                try:
                    env.parse(f.read_text(encoding="utf-8"), f.name, str(f))
                except TemplateSyntaxError as exc:
                    add(str(TemplateProblem(exc.message or str(exc), f, exc.lineno)))
                except (OSError, UnicodeDecodeError) as exc:
                    add(f"{f}: cannot read: {exc}")
            # every stage: an overridden piece (_advice.j2) shows in the shipped stages that include it
            for stage in Stage:
                for ctx in _variants(stage):
                    try:
                        self.render(stage, language, ctx)
                    except TemplateProblem as exc:
                        add(str(exc))
                        break
        return problems
