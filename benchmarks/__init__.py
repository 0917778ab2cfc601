"""The benchmarks: not installed with the library; run from the repository root.

``make bench`` = ``python -m benchmarks.run``: the performance comparisons (harness, one module
per comparison, results written to benchmarks/results/). Standalone measurement scripts live
here too (``python -m benchmarks.<name>`` or ``python benchmarks/<name>.py``).
"""
