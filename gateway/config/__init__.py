"""The site file: one YAML per site, validated by pydantic, errors named by file:line and field path.

One module per section (site, modbus, devices, mqtt, store, http, incidents, rules, detection), one strict
base (base.py), the cross-field checks in validators.py, loading in loader.py. The names most code needs
are re-exported here.
"""

from gateway.config.default_rules import DEFAULT_RULES, effective_rules
from gateway.config.detection import Detection, GatewaySection, MainsSensor
from gateway.config.devices import Device, Role
from gateway.config.errors import ConfigError, ConfigIssue, format_loc
from gateway.config.http import HttpConfig
from gateway.config.incidents import IncidentsConfig
from gateway.config.loader import Site, json_schema, load_site
from gateway.config.modbus import Line
from gateway.config.mqtt import MqttConfig, MqttSubscription, MqttTls
from gateway.config.rules import RuleSpec
from gateway.config.schema import SiteConfig
from gateway.config.site import Building, SiteInfo, SupplyDomain
from gateway.config.store import InfluxConfig, SpoolConfig

__all__ = [
    "DEFAULT_RULES",
    "Building",
    "ConfigError",
    "ConfigIssue",
    "Detection",
    "Device",
    "GatewaySection",
    "HttpConfig",
    "IncidentsConfig",
    "InfluxConfig",
    "Line",
    "MainsSensor",
    "MqttConfig",
    "MqttSubscription",
    "MqttTls",
    "Role",
    "RuleSpec",
    "Site",
    "SiteConfig",
    "SiteInfo",
    "SpoolConfig",
    "SupplyDomain",
    "effective_rules",
    "format_loc",
    "json_schema",
    "load_site",
]
