"""Metrics that training (model selection, calibration) and evaluation (reports) both compute.

- :mod:`alzprog.metrics.classification`: per-class and macro scores, subject-level voting,
  bootstrap intervals, temperature scaling, ECE.
- :mod:`alzprog.metrics.image`: SSIM, PSNR, MSE (whole frame and in the brain), FID helpers.
- :mod:`alzprog.metrics.change`: change fidelity of generated progression against the truth.
- :mod:`alzprog.metrics.plots`: the figures of these metrics (confusion matrices).
"""
