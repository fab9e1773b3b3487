"""The Fleet dashboard's VictoriaMetrics variant (deploy/grafana/dashboards/fleet-victoriametrics.json), run
for real: three sites' power and water meters written by the gateway's own LineEncoder into a real
VictoriaMetrics over its InfluxDB v2 write API, then every panel query and the site variable's query sent
to /api/v1/query(_range) and /api/v1/label/site/values with the dashboard's variables replaced as Grafana
replaces them (a multi-value $site as a regex, $__interval floored at the provisioned datasource's
timeInterval, $__rate_interval, $__range). Each must return data, for the selected sites only, and the
figures the points imply (a site with a meter at 0 V, a device that stopped, samples not good)."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Site, load_site
from gateway.core.types import Sample
from gateway.sink.lineproto import LineEncoder
from gateway.tools.dashboards import VICTORIA_UID
from simulators.world import World
from tests.fixtures.sim import write_sim_site
from tests.fixtures.victoria import Victoria, victoria  # noqa: F401
from tests.gateway.tools.test_dashboards import DASHBOARDS, panels, provisioned_datasources

DASHBOARD = DASHBOARDS / "fleet-victoriametrics.json"
SITES = ("c01", "c02", "c03")
SPAN = 40 * 60  # seconds of points written, ending now
EVERY = 20  # seconds between two samples of a device
RANGE = 3600  # the dashboard's time range (its default, now-1h)
MAX_POINTS = 1000  # Grafana's maxDataPoints for a panel about this wide
STOPPED = ("c02", "T-tuf")  # stops reporting 10 min before the end
DARK = ("c03", "B3-power")  # its supply is cut 10 min before the end; its meters report 0 V
NOT_GOOD = ("c01", "R-pressure")  # every third sample stale


# ---------------------------------------------------------------------------------------------------------
# Grafana's substitutions


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a regex metacharacter escaped inside a PromQL string."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def site_value(selected: list[str]) -> str:
    """A multi-value variable in a regex matcher: one value escaped, several as (a|b)."""
    if len(selected) == 1:
        return regex_escape(selected[0])
    return "(" + "|".join(regex_escape(s) for s in selected) + ")"


def scrape_interval() -> int:
    """The provisioned datasource's timeInterval (Grafana's floor for $__interval), in seconds."""
    (ds,) = [d for d in provisioned_datasources() if d["uid"] == VICTORIA_UID]
    m = re.fullmatch(r"(\d+)s", ds["jsonData"]["timeInterval"])
    assert m, ds
    return int(m[1])


@dataclass(frozen=True)
class Vars:
    selected: list[str]
    interval: int  # $__interval, seconds
    rate_interval: int
    range_s: int

    @classmethod
    def for_range(cls, selected: list[str], range_s: int = RANGE) -> Vars:
        floor = scrape_interval()
        interval = max(floor, math.ceil(range_s / MAX_POINTS))
        return cls(selected, interval, max(interval + floor, 4 * floor), range_s)

    def apply(self, expr: str) -> str:
        out = (
            expr.replace("$__rate_interval", f"{self.rate_interval}s")
            .replace("$__interval", f"{self.interval}s")
            .replace("$__range", f"{self.range_s}s")
            .replace("${site:regex}", site_value(self.selected))
            .replace("$site", site_value(self.selected))
        )
        assert "$" not in out, f"a variable left in {out}"
        return out


# ---------------------------------------------------------------------------------------------------------
# the store and what it holds


def get(vm: Victoria, path: str, **params: str) -> Any:
    url = f"{vm.url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def sites_of(site_dir: Path, site_id: str) -> Site:
    path = write_sim_site(site_dir)
    path.write_text(path.read_text().replace("id: simtest", f"id: {site_id}"), encoding="utf-8")
    site = load_site(path)
    assert site.config.site.id == site_id
    return site


def write_fleet(vm: Victoria, tmp_path: Path, end: float) -> dict[str, Site]:
    """Every device of three simulated compounds every EVERY s over SPAN s before `end`, as the gateway's
    encoder writes them, with the trouble of STOPPED, DARK and NOT_GOOD."""
    sites: dict[str, Site] = {}
    for k, site_id in enumerate(SITES):
        (tmp_path / site_id).mkdir()
        site = sites[site_id] = sites_of(tmp_path / site_id, site_id)
        world = World(site, clock=lambda: end, seed=k, noise=0.02)
        encoder = LineEncoder(site)
        samples: list[Sample] = []
        trouble_from = end - 600
        cut = False
        for step in range(SPAN // EVERY):
            ts = end - SPAN + step * EVERY + 0.5
            if site_id == DARK[0] and ts >= trouble_from and not cut:
                world.cut_power(DARK[1])
                cut = True
            for d in site.config.devices:
                if (site_id, d.id) == STOPPED and ts >= trouble_from:
                    continue
                bad = (site_id, d.id) == NOT_GOOD and step % 3 == 0
                samples.append(Sample(d.id, ts, world.values(d.id, ts), "stale" if bad else "good"))
        encoded = encoder.encode_body(samples)
        assert encoded is not None and encoded[1] == len(samples)
        req = urllib.request.Request(
            f"{vm.url}/api/v2/write?org=meterwatch&bucket=meterwatch&precision=us", data=encoded[0]
        )
        urllib.request.urlopen(req, timeout=30).close()
    urllib.request.urlopen(vm.url + "/internal/force_flush", timeout=10).close()
    return sites


def targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in panels(dash) if p["type"] != "row" for t in p["targets"]]


def run(vm: Victoria, target: dict[str, Any], v: Vars, end: int) -> list[dict[str, Any]]:
    """The target as Grafana sends it: a range query over the range (start and end on the step), or an
    instant one at its end."""
    expr = v.apply(target["expr"])
    if target["instant"]:
        data = get(vm, "/api/v1/query", query=expr, time=str(end))
        assert data["resultType"] == "vector", data
    else:
        step = v.interval
        stop = end // step * step
        data = get(
            vm, "/api/v1/query_range", query=expr, start=str(stop - v.range_s), end=str(stop), step=str(step)
        )
        assert data["resultType"] == "matrix", data
    result: list[dict[str, Any]] = data["result"]
    return result


def last_value(series: dict[str, Any]) -> float:
    return float(series["values"][-1][1] if "values" in series else series["value"][1])


# ---------------------------------------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dash


def test_every_query_returns_data_for_the_selected_sites_only(
    victoria: Victoria,  # noqa: F811
    tmp_path: Path,
    dashboard: dict[str, Any],
) -> None:
    end = int(time.time())
    write_fleet(victoria, tmp_path, end)

    # the site variable: label_values(selector, site) is /api/v1/label/site/values over the range
    (site_var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "site"]
    m = re.fullmatch(r"label_values\((.+), site\)", site_var["query"]["query"])
    assert m, site_var
    listed = get(
        victoria, "/api/v1/label/site/values", **{"match[]": m[1], "start": str(end - RANGE), "end": str(end)}
    )
    assert listed == list(SITES)

    by_title = {p["title"]: p for p in panels(dashboard)}
    checked = 0
    for selected in (list(SITES), ["c01", "c03"], ["c02"]):
        v = Vars.for_range(selected)
        got: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for panel, target in targets(dashboard):
            result = run(victoria, target, v, end)
            assert result, f"{panel['title']} {target['refId']} ({selected}): no data from {target['expr']}"
            if panel["type"] == "stat":
                assert [r["metric"] for r in result] == [{}], result  # one number, no site
            else:
                sites = {r["metric"].get("site") for r in result}
                assert sites == set(selected), f"{panel['title']} {target['refId']}: {sites} for {selected}"
            got[(panel["title"], target["refId"])] = result
            checked += 1

        def per_site(title: str, ref: str = "A", got: dict[tuple[str, str], Any] = got) -> dict[str, float]:
            return {r["metric"]["site"]: last_value(r) for r in got[(title, ref)]}

        # what the points imply, at the range's end
        dark = DARK[0] in selected
        (stat,) = got[("Sites with a meter at 0 V", "A")]
        assert last_value(stat) == (1.0 if dark else 0.0)
        lowest = per_site("Lowest meter voltage by site")
        worst = per_site("Sites, worst first", "A")
        for s in selected:
            assert (lowest[s] == 0.0) == (worst[s] == 0.0) == (s == DARK[0]), (lowest, worst)
            assert (worst[s] > 200.0) == (s != DARK[0])
        assert all(2.0 < p < 4.0 for p in per_site("Sites, worst first", "B").values())
        assert all(200.0 < x < 240.0 for x in per_site("Mean phase voltage by site").values()) or dark
        assert all(2.0 < p < 4.0 for p in per_site("Lowest zone pressure by site").values())
        flows = per_site("Flow by site")
        for s in selected:  # two flow meters of about 12 m3/h, one of them stopped at c02
            assert 10.0 < flows[s] < (14.0 if s == STOPPED[0] else 28.0), flows
        reporting, expected, missing = (per_site("Devices reporting", r) for r in "ABC")
        for s in selected:
            assert expected[s] == 10 and missing[s] == (1 if s == STOPPED[0] else 0)
            assert reporting[s] + missing[s] == expected[s]
        for series in got[("Samples not good", "A")]:
            # every third sample of one of the ten devices: some windows hold one bad sample of several
            shares = [float(x) for _, x in series["values"]]
            if series["metric"]["site"] == NOT_GOOD[0]:
                assert 0.0 < max(shares) <= 0.2 and min(shares) == 0.0, shares
            else:
                assert set(shares) == {0.0}, shares  # 0, not missing, where every sample is good
    assert checked == 3 * len(targets(dashboard)) and len(by_title) >= 10


def test_a_site_outside_the_range_is_not_listed(victoria: Victoria, tmp_path: Path) -> None:  # noqa: F811
    """The variable lists the sites with series in the dashboard's range (Grafana passes it), not every
    site the store ever held; and a narrower selection's regex does not match a longer site id."""
    end = int(time.time())
    site = sites_of(tmp_path, "c1")
    encoder = LineEncoder(site)
    old = [
        Sample(d.id, end - 3 * 86400.0, {"pressure": 3.0, "voltage_l1": 230.0}) for d in site.config.devices
    ]
    req = urllib.request.Request(
        f"{victoria.url}/api/v2/write?org=meterwatch&bucket=meterwatch&precision=us",
        data="\n".join(encoder.encode_many(old)).encode(),
    )
    urllib.request.urlopen(req, timeout=30).close()
    (tmp_path / "w").mkdir()
    write_fleet(victoria, tmp_path / "w", end)
    dash = json.loads(DASHBOARD.read_text())
    (site_var,) = [v for v in dash["templating"]["list"] if v["name"] == "site"]
    selector = re.fullmatch(r"label_values\((.+), site\)", site_var["query"]["query"])
    assert selector
    recent = get(
        victoria,
        "/api/v1/label/site/values",
        **{"match[]": selector[1], "start": str(end - RANGE), "end": str(end)},
    )
    assert recent == list(SITES)
    week = get(
        victoria,
        "/api/v1/label/site/values",
        **{"match[]": selector[1], "start": str(end - 7 * 86400), "end": str(end)},
    )
    assert week == ["c01", "c02", "c03", "c1"]
    # c1 selected alone: its regex is anchored by PromQL, so c01 (which contains c and 1) is not taken
    (_, target) = next((p, t) for p, t in targets(dash) if p["title"] == "Sites, worst first")
    v = Vars.for_range(["c1"], range_s=7 * 86400)
    assert {r["metric"]["site"] for r in run(victoria, target, v, end)} == {"c1"}


def test_grafana_substitution_escapes_and_groups_like_grafana() -> None:
    assert site_value(["c01"]) == "c01"
    assert site_value(["c01", "c02"]) == "(c01|c02)"
    assert site_value(["a.b", "c(d)"]) == r"(a\\.b|c\\(d\\))"
    v = Vars.for_range(["x"], range_s=86400)
    floor = scrape_interval()
    assert v.interval == max(floor, 87) and v.rate_interval == max(v.interval + floor, 4 * floor)
    assert v.apply('f{site=~"$site"}[$__interval] [$__range]') == f'f{{site=~"x"}}[{v.interval}s] [86400s]'
