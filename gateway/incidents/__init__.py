"""Incidents: the SQLite store, the manager that feeds the engine and persists what it decides, the HTTP
router and the CLI listing."""
