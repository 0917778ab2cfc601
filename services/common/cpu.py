"""How many CPUs this process may really use: :func:`alzprog.inference.runtime.available_cpus`."""

from alzprog.inference.runtime import available_cpus  # noqa: F401 - re-exported
