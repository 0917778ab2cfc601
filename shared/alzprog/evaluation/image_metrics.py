"""Moved to :mod:`alzprog.metrics.image` (training and evaluation both build on it).

This old import path is the same module object, so existing imports keep working.
"""

import sys

from alzprog.metrics import image as _moved

sys.modules[__name__] = _moved
