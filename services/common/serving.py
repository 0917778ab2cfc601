"""How a model service spreads its work over the machine, from the knobs both services share."""

from __future__ import annotations

from dataclasses import dataclass

from alzprog.inference.runtime import ThreadPolicy, available_cpus, choose_providers, thread_policy


@dataclass(frozen=True)
class ServingPlan:
    """Requests computed at once, the ONNX Runtime providers and the threads of one run."""

    concurrency: int
    providers: list[str]
    threads: ThreadPolicy


def serving_plan(max_concurrency: int, providers: str, intra_op_threads: int) -> ServingPlan:
    """The plan of the settings ``max_concurrency`` (0: the CPUs available), ``providers`` and
    ``intra_op_threads`` (0: adaptive to how many runs overlap)."""
    concurrency = max_concurrency or available_cpus()
    return ServingPlan(concurrency, choose_providers(providers), thread_policy(intra_op_threads, concurrency))
