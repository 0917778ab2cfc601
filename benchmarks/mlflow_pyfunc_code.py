"""MLflow "model from code" entry of the ``mlflow models serve`` baseline (benchmark only).

MLflow copies this file into the logged model and executes it to get the pyfunc, so nothing
is pickled. It is never imported by the services.
"""

import mlflow

from benchmarks.original_pipeline import StageClassifierPyfunc

mlflow.models.set_model(StageClassifierPyfunc())
