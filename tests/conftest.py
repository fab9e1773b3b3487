"""Service fixtures (mosquitto, VictoriaMetrics, Prometheus, simulators) live in tests/fixtures/ and are
loaded by the conftest.py of each folder whose tests start them, so unit tests start nothing. Helpers
shared by every folder are in tests/helpers.py.
"""
