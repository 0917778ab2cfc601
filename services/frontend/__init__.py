"""Frontend: the static page and its same-origin proxy to the gateway (see server.py)."""
