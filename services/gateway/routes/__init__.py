"""The gateway's routes, one ``APIRouter`` per tag: :mod:`.health`, :mod:`.results`, :mod:`.models`."""
