"""The demo's part of the loop: it plays the on-call engineer and the duty manager with the real commands.

It reads what the local receiver got (gateway/cli/demo_receiver.py) and shows each message in the pane.
A dispatch to the on-call team is acknowledged ACK_AFTER seconds later by running the staff CLI,
`meterwatch ack ID --url ...` with the demo's token in MW_TOKEN, against the running daemon's API, exactly
as a person would. Once a dispatched incident is over (the residents' all-clear when residents were told,
else the staff's "resolved" notice) the demo writes its report with `meterwatch report ID SITE --state-dir
... -o DIR`. `done` is set when every dispatched incident has its report; the demo stops on it once its
scenario has played every step.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.demo_pane import MessagePane
from gateway.cli.demo_receiver import DemoReceiver, Notice
from gateway.cli.demo_site import DemoSite

ACK_AFTER = 5.0  # s between the dispatch arriving and the engineer acknowledging it: time to read it
COMMAND_TIMEOUT = 120.0  # s: a command that takes longer is stopped and said so (a report: ~10 s)


@dataclass
class CommandResult:
    code: int
    out: list[str]
    err: list[str]


async def run_command(args: list[str], env: dict[str, str]) -> CommandResult:
    """`python -m gateway.cli ARGS` (the `meterwatch` command of this interpreter), its output in lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return CommandResult(-1, [], [f"no answer within {COMMAND_TIMEOUT:g}s; stopped"])
    except asyncio.CancelledError:  # the demo is stopping: the command goes with it
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    lines = [ln for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
    errs = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    return CommandResult(proc.returncode or 0, lines, errs)


@dataclass
class Case:
    """What the demo has seen of one dispatched incident."""

    incident: int
    residents_told: bool = False
    ack: asyncio.Task[None] | None = None
    over: bool = False
    reported: bool = False  # its report was written, or the attempt failed and said why
    report: list[Path] = field(default_factory=list)


@dataclass
class DemoLoop:
    receiver: DemoReceiver
    pane: MessagePane
    site: DemoSite
    state_dir: Path
    output: Path  # where the reports go (kept after the demo)
    cases: dict[int, Case] = field(default_factory=dict)
    residents_told: set[int] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def reports(self) -> list[Path]:
        return [p for c in self.cases.values() for p in c.report]

    def env(self) -> dict[str, str]:
        return dict(os.environ, MW_TOKEN=self.site.token)

    def say(self, text: str) -> None:
        self.pane.demo(text, time.time())

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getting = asyncio.create_task(self.receiver.notices.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                self.on_notice(getting.result())
        finally:
            stopping.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_notice(self, n: Notice) -> None:
        self.pane.notice(n)
        for incident, stage, _audience in n.parts():
            if stage == "residents_notice":
                self.residents_told.add(incident)
            if stage == "dispatch" and incident not in self.cases:
                dispatched = self.cases[incident] = Case(incident)
                self.done.clear()  # one more to see through
                dispatched.ack = self._spawn(self.acknowledge(incident), f"demo-ack-{incident}")
            case = self.cases.get(incident)
            if case is None or case.over:
                continue
            told = incident in self.residents_told
            if (stage == "all_clear" and told) or (stage == "resolved" and not told):
                case.over = True
                self._spawn(self.write_report(case), f"demo-report-{incident}")

    async def acknowledge(self, incident: int) -> None:
        await asyncio.sleep(ACK_AFTER)
        shown = f"meterwatch ack {incident} --url {self.site.api}"
        self.say(
            f"acknowledging incident {incident} as the on-call engineer ({self.site.responder}): {shown}"
        )
        r = await run_command(["ack", str(incident), "--url", self.site.api], self.env())
        # the command's headline and who acknowledged when; the rest of its answer is the console's
        said = r.out[:1] + [ln.strip() for ln in r.out[1:] if ln.strip().startswith("acknowledged ")]
        for line in said + r.err:
            self.say(f"  meterwatch ack: {' '.join(line.split())}")
        if r.code != 0:
            self.say(f"  meterwatch ack {incident} failed (exit {r.code})")

    async def write_report(self, case: Case) -> None:
        if case.ack is not None:
            await asyncio.gather(case.ack, return_exceptions=True)  # the report shows the acknowledgement
        out = self.output
        args = [
            "report", str(case.incident), str(self.site.path), "--state-dir", str(self.state_dir),
            "-o", str(out), "--format", "md,html,json", "--language", "en",
        ]  # fmt: skip
        self.say(f"incident {case.incident} is over: meterwatch report {case.incident} SITE -o {out}")
        r = await run_command(args, self.env())
        if r.code != 0:
            for line in r.err:
                self.say(f"  {line}")
            self.say(f"  meterwatch report {case.incident} failed (exit {r.code})")
        else:
            case.report = [Path(line.strip()).resolve() for line in r.out]
            html = [p for p in case.report if p.suffix == ".html"]
            self.say(f"  report of incident {case.incident}: {(html or case.report)[0]}")
        case.reported = True
        if all(c.reported for c in self.cases.values()):
            self.done.set()
