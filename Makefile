# The two commands a new user needs: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
SITE ?= deploy/examples/compound.yaml

.PHONY: bootstrap demo test lint bench soak lock clean

bootstrap:
	@./scripts/bootstrap

demo: bootstrap
	$(PY) -m gateway.cli.demo $(SITE)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# One table, each figure beside a baseline measured in the same run (polling vs a raw asyncio loop, bare
# pymodbus and ThingsBoard IoT Gateway on a C libmodbus meter server; MQTT vs bare paho; sink vs raw
# influxdb-client; rules engine; outage -> first notice vs Prometheus + Alertmanager; RSS; soak drift), in
# under 15 minutes on 2 cores; writes bench/results/latest.json and a dated copy. bench-smoke: tiny sizes.
bench: bootstrap
	$(PY) bench/run_all.py

.PHONY: bench-smoke
bench-smoke: bootstrap
	$(PY) bench/run_all.py --smoke --out $${TMPDIR:-/tmp}/meterwatch-bench-smoke

# The benches that have no peer to stand beside (the planner's estimates, the demo's start-up time).
.PHONY: bench-extra
bench-extra: bootstrap
	$(PY) bench/planner.py
	$(PY) bench/demo_start.py

# Opt-in, not part of `bench`: the respond side's figures. Power cut -> first staff notice over NOTIFY_RUNS
# cuts, PROM_RUNS of them also through Prometheus + Alertmanager (about a minute each: PROM_RUNS=20 takes
# ~25 min), then the outbox's throughput with 100 buildings out at once (seconds).
NOTIFY_RUNS ?= 20
PROM_RUNS ?= 5
.PHONY: bench-notify
bench-notify: bootstrap
	$(PY) bench/notify_latency.py --runs $(NOTIFY_RUNS) --prom-runs $(PROM_RUNS)
	$(PY) bench/outbox_throughput.py

# Issue 13's acceptance: 20 real gateways (simulated compounds) -> one mosquitto + one VictoriaMetrics, 5
# outages, the broker stopped 2 minutes mid-way (nothing lost: every event once at a counting subscriber), a
# gateway SIGKILLed shown offline within 1.5 x keepalive; a line per check and a JSON line (~5 min on 2 cores).
.PHONY: fleet-sim
fleet-sim: bootstrap
	$(PY) -m tests.fleet_sim.run --gateways 20 --outages 5 --broker-stop 120 --keepalive 10

# Opt-in, not part of `bench`: runs for minutes (MINUTES=60 make soak for a longer look at memory growth).
MINUTES ?= 6
soak: bootstrap
	$(PY) bench/soak.py --minutes $(MINUTES)

# Re-resolve the dependencies of pyproject.toml in a scratch virtualenv and pin them in constraints.txt.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip >/dev/null
	.lock-venv/bin/python -m pip install -q -e '.[dev,demo]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep '=='; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
