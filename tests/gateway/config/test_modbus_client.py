"""A line's `client` (builtin | pymodbus) and `pipeline`: defaults, refusals, what reaches the driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app.modbus import line_spec
from gateway.config import ConfigError, load_site
from tests.gateway.config.test_config import MINIMAL, write

TCP = "{id: l1, transport: tcp, host: 127.0.0.1, port: 5020}"


def with_line(tmp_path: Path, line: str) -> Path:
    assert TCP in MINIMAL
    return write(tmp_path, MINIMAL.replace(TCP, line))


def refused(tmp_path: Path, line: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_site(with_line(tmp_path, line))
    (issue,) = info.value.issues
    return str(issue)


def test_tcp_lines_use_the_builtin_client_one_request_at_a_time_by_default(tmp_path: Path) -> None:
    line = load_site(with_line(tmp_path, TCP)).config.lines[0]
    assert (line.client, line.pipeline) == ("builtin", 1)
    spec = line_spec(line)
    assert (spec.client, spec.pipeline, spec.builtin_client) == ("builtin", 1, True)


def test_pymodbus_and_pipelining_reach_the_driver(tmp_path: Path) -> None:
    pym = load_site(with_line(tmp_path, TCP.replace("}", ", client: pymodbus}"))).config.lines[0]
    assert line_spec(pym).client == "pymodbus" and not line_spec(pym).builtin_client
    deep = load_site(with_line(tmp_path, TCP.replace("}", ", pipeline: 4}"))).config.lines[0]
    assert line_spec(deep).pipeline == 4


def test_an_unknown_client_names_the_line_and_the_choices(tmp_path: Path) -> None:
    text = refused(tmp_path, TCP.replace("}", ", client: fast}"))
    assert ":6: lines[0].client: " in text
    assert "'builtin' or 'pymodbus'" in text and "fast" in text


def test_the_builtin_client_is_refused_on_rtu_lines(tmp_path: Path) -> None:
    text = refused(tmp_path, "{id: l1, transport: rtu, device: /dev/ttyUSB0, client: builtin}")
    assert ":6: lines[0]: " in text and "client: builtin reads Modbus TCP only" in text
    # said explicitly or left out, pymodbus is what an RTU line uses
    for line in ("{id: l1, transport: rtu, device: /dev/ttyUSB0}",
                 "{id: l1, transport: rtu_over_tcp, host: h, port: 1, client: pymodbus}"):  # fmt: skip
        spec = line_spec(load_site(with_line(tmp_path, line)).config.lines[0])
        assert not spec.builtin_client


@pytest.mark.parametrize(
    "line",
    [
        TCP.replace("}", ", client: pymodbus, pipeline: 2}"),
        "{id: l1, transport: rtu_over_tcp, host: h, port: 1, pipeline: 2}",
    ],
)
def test_pipelining_needs_the_builtin_tcp_client(tmp_path: Path, line: str) -> None:
    assert "pipeline applies to tcp lines read by the builtin client only" in refused(tmp_path, line)


def test_pipeline_bounds(tmp_path: Path) -> None:
    assert "lines[0].pipeline" in refused(tmp_path, TCP.replace("}", ", pipeline: 0}"))
    assert "lines[0].pipeline" in refused(tmp_path, TCP.replace("}", ", pipeline: 17}"))
