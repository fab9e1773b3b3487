"""The read-only fleet view (issue 13, item 3): every site of a company from the fleet topics' retained state.

state.py keeps what the broker says (nothing of its own: a view started anywhere rebuilds it from the
retained topics); client.py subscribes; page.py serves the page and /api/fleet.
"""
