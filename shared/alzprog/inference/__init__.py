"""The one inference layer: what training's evaluation, the CLI and the services run.

- :mod:`alzprog.inference.classifier`: calibrated stage probabilities (softmax of logits / T,
  written once) and the Grad-CAM explanation of a stage.
- :mod:`alzprog.inference.chain`: the one progression loop (each transition generator takes
  the previous step's pixels and the input's brain mask).
- :mod:`alzprog.inference.runtime`: how a model is run fast on this machine (ONNX Runtime
  sessions, thread policies, the overlap hint, allocator settings), behind a few calls.

Importing this package loads neither torch nor onnxruntime: each is imported where it is used.
"""
