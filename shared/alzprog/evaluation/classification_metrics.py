"""Moved to :mod:`alzprog.metrics.classification` (training and evaluation both build on it).

This old import path is the same module object, so existing imports keep working.
"""

import sys

from alzprog.metrics import classification as _moved

sys.modules[__name__] = _moved
