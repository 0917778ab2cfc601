"""The baselines users already have: the original-style eager pipeline and an MLflow pyfunc.

``OriginalPipeline`` is the original single-process design made as fast as it can be without
changing its nature: eager PyTorch EfficientNet-B4, then the three original DCGAN generators
(eager) one after the other, one request at a time. It is *kinder* than the original Flask
app, which re-read the generator weights from disk on every request and classified twice:
here the models stay in memory and the image is classified once, so any gain we show is a
gain over the best version of the old design, not over its accidents.

``StageClassifierPyfunc`` wraps our classifier artifact (eager PyTorch, base64 PNG input) as
an MLflow ``python_function`` model, the way a user would serve it with
``mlflow models serve``. It is logged as *model from code* (``mlflow_pyfunc_code.py``), so
MLflow pickles nothing; the weights are read from the digest-checked safetensors artifact. It
exists only as a benchmark baseline: our services never load models through MLflow flavours.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc_code.py")
PYFUNC_SUFFIX = "-mlflow-pyfunc"


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 grayscale or RGB image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


class OriginalPipeline:
    """Eager B4 classification then three eager DCGAN steps, in one process, one request at a time."""

    def __init__(self, *, tiny: bool = False) -> None:
        from benchmarks import forward

        cfg = forward.classifier_config(tiny)
        self.classifier = forward.build_classifier(tiny).eval()
        # The original generators: the published DCGAN design (tiny or not, it is small).
        self.generators = [forward.build_progression_generator("dcgan") for _ in range(3)]
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.size = int(cfg["image_size"])

    def __call__(self, upload: bytes) -> dict[str, Any]:
        """Decode + canonicalise the upload, classify it, then synthesise the three later stages."""
        from alzprog.constants import STAGES
        from alzprog.preprocessing import (classifier_input, generator_input, generator_output_to_uint8,
                                           load_canonical, mark_synthetic)

        canon = load_canonical(upload)
        with torch.inference_mode():
            x = classifier_input(canon.image, self.size, self.mean, self.std)[None]
            probs = torch.softmax(self.classifier(x), dim=1)[0]
            current = generator_input(canon.image)[None]
            steps = []
            for i, gen in enumerate(self.generators):
                current = gen(current)
                pixels = generator_output_to_uint8(current)
                png = png_bytes(mark_synthetic(pixels))
                steps.append({"stage": STAGES[i + 1], "image": "data:image/png;base64," + base64.b64encode(png).decode()})
        idx = int(probs.argmax())
        return {"stage": STAGES[idx], "probabilities": probs.tolist(), "steps": steps}


# ---------------------------------------------------------------------------------------- MLflow pyfunc

try:
    import mlflow.pyfunc as _pyfunc

    _PythonModel = _pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a project dependency
    _PythonModel = object  # type: ignore[assignment,misc]


class StageClassifierPyfunc(_PythonModel):  # type: ignore[misc,valid-type]
    """``mlflow models serve`` baseline: base64 PNG in, four stage probabilities out (eager PyTorch)."""

    def load_context(self, context: Any) -> None:
        from alzprog.artifacts import load_artifact

        loaded = load_artifact(context.artifacts["model_dir"])  # digest-checked safetensors, no pickle
        self.model = loaded.model.eval()
        self.config = loaded.config
        self.size = int(self.config.get("image_size", 256))

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd
        from PIL import Image

        from alzprog.constants import STAGES
        from alzprog.preprocessing import classifier_input

        images = []
        for b64 in model_input["image"]:
            gray = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"))
            images.append(classifier_input(gray, self.size, tuple(self.config["mean"]), tuple(self.config["std"])))
        with torch.inference_mode():
            logits = self.model(torch.stack(images))
            probs = torch.softmax(logits / float(self.config.get("temperature", 1.0)), dim=1).numpy()
        return pd.DataFrame(probs, columns=list(STAGES))


def register_pyfunc(model_dir: str | Path, source_name: str, source_version: str) -> tuple[str, str]:
    """Log our classifier artifact as a models-from-code pyfunc and register it; return ``(name, version)``.

    The pyfunc is registered under ``<source_name>-mlflow-pyfunc`` and tagged with the version
    it wraps, so the baseline and our service serve the same weights.
    """
    import mlflow

    from alzprog import registry

    registry.tracking_uri()
    exp = registry.ensure_experiment("alzprog-bench")
    name = source_name + PYFUNC_SUFFIX
    with mlflow.start_run(experiment_id=exp, run_name="bench-mlflow-pyfunc-baseline"):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(model_dir)},
            # Explicit requirements: inference of them would load the model in a subprocess.
            pip_requirements=["mlflow", "torch", "torchvision", "safetensors", "pandas", "pillow"],
            registered_model_name=name,
            tags={"wraps": f"{source_name}/{source_version}"},
        )
    version = str(info.registered_model_version)
    return name, version
