"""Incidents: the SQLite store (store.py), the manager that feeds the engine and persists what it decides
(manager.py), the live detector component (detector.py), the HTTP router (api.py), the `meterwatch incidents`
listing (listing.py) and the `incidents:` site section (settings.py)."""
