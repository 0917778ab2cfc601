"""ONNX Runtime sessions and thread policies of the model services: :mod:`alzprog.inference.runtime`.

Kept so ``services.common.ort`` imports keep working; the code lives once in the library.
"""

from alzprog.inference.runtime import (  # noqa: F401 - re-exported
    AdaptiveSession,
    ThreadPolicy,
    TorchThreads,
    available_cpus,
    choose_providers,
    intra_op_threads,
    make_session,
    model_work,
    overlapping,
    prepare_session,
    prepare_torch_serving,
    run_session,
    thread_policy,
)
