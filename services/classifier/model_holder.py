"""The classifier champion, ready to run: an ONNX Runtime session (PyTorch only for Grad-CAM).

``ClassifierRuntime`` is built completely (session created, one warm-up inference) before the
:class:`~services.common.model_slot.ModelSlot` swaps it in, so requests only ever see a ready
model. Preprocessing is the shared one (``alzprog.preprocessing.classifier_input``).
"""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from alzprog.artifacts import ONNX_FILE
from alzprog.constants import STAGES
from alzprog.inference.classifier import calibrated_probabilities, explain_stage
from alzprog.inference.runtime import ThreadPolicy, choose_precision, make_session, prepare_session, run_session
from alzprog.ood import feature_graph, load_reference

from services.common.model_slot import ModelRef

log = logging.getLogger("classifier.model")


class ClassifierRuntime:
    """One loaded classifier version: ``predict`` (ONNX Runtime) and ``explain`` (Grad-CAM)."""

    def __init__(self, ref: ModelRef, providers: list[str], threads: ThreadPolicy, precision: str = "auto") -> None:
        cfg = ref.config
        if cfg.get("kind") != "stage_classifier":
            raise ValueError(f"{ref.name} v{ref.version} is not a stage classifier (kind={cfg.get('kind')!r})")
        names = list(cfg.get("class_names", STAGES))
        if names != list(STAGES):
            raise ValueError(f"{ref.name} v{ref.version} classes {names} differ from the project's stages")
        self.ref = ref
        self.size = int(cfg["image_size"])
        self.mean = tuple(float(v) for v in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        self.temperature = float(cfg.get("temperature", 1.0))
        if not self.temperature > 0:
            raise ValueError(f"invalid temperature {self.temperature}")
        onnx_path = ref.local_dir / ONNX_FILE
        self.backend = "onnxruntime" if onnx_path.is_file() else "torch"
        self.session = None
        self._torch_model = None
        self._torch_lock = threading.Lock()
        # The training set's feature reference, when the model has one (older models: no score).
        self.ood = load_reference(ref.local_dir)
        self._feature_output = False
        self._graph_dir: tempfile.TemporaryDirectory | None = None
        self.precision = "fp32"
        self.precision_reason = "no ONNX graph: PyTorch fp32"
        self.int8_check: dict[str, Any] | None = None
        if self.backend == "onnxruntime":
            int8_path = self._choose_precision(onnx_path, precision, providers)
            if int8_path is not None:
                onnx_path = int8_path
                self._feature_output = self.ood is not None and _graph_outputs(onnx_path) > 1
            elif self.ood is not None:
                onnx_path = self._feature_session_path(onnx_path)
            self.session = make_session(onnx_path, providers, threads)
            self.input_name = self.session.get_inputs()[0].name
            self.providers = self.session.get_providers()
        else:
            self.providers = ["torch"]
        t0 = time.perf_counter()
        probe = np.zeros((self.size, self.size), np.uint8)
        self.logits(probe)  # warm-up: first run allocates
        if self.session is not None:
            prepare_session(self.session, {self.input_name: self._input(probe)})
        self.warmup_s = time.perf_counter() - t0

    def _choose_precision(self, onnx_path: Path, setting: str, providers: list[str]) -> Path | None:
        """The int8 graph to serve under ``setting``, or None for fp32 (``precision`` and
        ``precision_reason`` say which and why). Raises ``PrecisionUnavailable`` for a forced int8
        without a passing check: the slot then refuses this version."""
        from alzprog.hashing import sha256_file

        variant, why_not = None, ""
        if setting != "fp32":
            from alzprog.registry import resolve_int8

            try:
                variant = resolve_int8(self.ref.name, self.ref.version, sha256_file(onnx_path),
                                       offline=self.ref.source == "cache")
            except Exception as exc:  # noqa: BLE001 - registry down or a bad download: no int8 this time
                why_not = f"its int8 graph could not be fetched ({type(exc).__name__}: {str(exc)[:120]})"
            if variant is not None:
                self.int8_check = (variant.record.get("check") or {}) | {
                    "calibration_slices": (variant.record.get("calibration") or {}).get("slices"),
                    "format": (variant.record.get("quantization") or {}).get("format"),
                    "run_id": variant.record.get("run_id"),
                }
        choice = choose_precision(setting, None if variant is None else variant.passed, providers, why_not)
        self.precision, self.precision_reason = choice.precision, choice.reason
        return variant.path if choice.precision == "int8" and variant is not None else None

    def _feature_session_path(self, onnx_path: Path) -> Path:
        """The graph to serve: the model's own, with the pooled features as a second output when
        that tensor is found (one forward gives logits and the OOD features; else PyTorch scores)."""
        graph = feature_graph(onnx_path, self.ood.dim)
        if graph is None:
            log.warning("classifier ONNX graph: pooled features not found; OOD scored with PyTorch", extra={"version": self.ref.version})
            return onnx_path
        # Outside the digest-checked model folder, which must hold only the registered files.
        self._graph_dir = tempfile.TemporaryDirectory(prefix="alzprog-clf-")
        path = Path(self._graph_dir.name) / ONNX_FILE
        path.write_bytes(graph)
        self._feature_output = True
        return path

    # ------------------------------------------------------------------ inference
    def _input(self, image: np.ndarray) -> np.ndarray:
        from alzprog.preprocessing import classifier_input

        return classifier_input(image, self.size, self.mean, self.std).numpy()[None].astype(np.float32)

    def _torch(self):  # noqa: ANN202 - torch.nn.Module
        """The PyTorch module of this version, loaded (digest-checked) on first use."""
        with self._torch_lock:
            if self._torch_model is None:
                from alzprog.artifacts import load_artifact

                self._torch_model = load_artifact(self.ref.local_dir).model.eval()
            return self._torch_model

    def forward(self, images: list[np.ndarray], overlapped: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits (N, 4) of canonical uint8 images in one pass, and their pooled features
        (N, D) when the model has an OOD reference (else ``None``)."""
        x = np.concatenate([self._input(im) for im in images], axis=0)
        if self.session is not None:
            outs = run_session(self.session, {self.input_name: x}, overlapped)
            logits = np.asarray(outs[0], dtype=np.float64)
            if self.ood is None:
                return logits, None
            if self._feature_output:
                return logits, np.asarray(outs[1], dtype=np.float64)
            return logits, self._torch_features(x)
        import torch

        from alzprog.models.stage_classifier import forward_features, head

        model = self._torch()
        with torch.inference_mode():
            feats = forward_features(model, torch.from_numpy(x))
            logits = model.classifier(feats) if hasattr(model, "classifier") else head(model)(feats)
        return logits.double().numpy(), (feats.double().numpy() if self.ood is not None else None)

    def _torch_features(self, x: np.ndarray) -> np.ndarray:
        import torch

        from alzprog.models.stage_classifier import forward_features

        with torch.inference_mode():
            return forward_features(self._torch(), torch.from_numpy(x)).double().numpy()

    def logits(self, image: np.ndarray, overlapped: bool = False) -> np.ndarray:
        """Raw logits (4,) for one canonical uint8 image (``overlapped``: see ``AdaptiveSession.run``)."""
        return self.forward([image], overlapped)[0][0]

    def predict(self, image: np.ndarray, overlapped: bool = False, tta: bool = False) -> dict[str, Any]:
        """Calibrated probabilities (softmax of logits / temperature), stage and confidence, the
        OOD score (``ood``, null without a reference) and, with ``tta``, the spread over the
        test-time views (``alzprog.tta``; the point answer stays the unaugmented slice's)."""
        if not tta:
            logits, feats = self.forward([image], overlapped)
            return self._result(calibrated_probabilities(logits[0], self.temperature), None if feats is None else feats[0])
        from alzprog import tta as tta_views

        logits, feats = self.forward(tta_views.views(image), overlapped)
        probs = calibrated_probabilities(logits, self.temperature)
        result = self._result(probs[0], None if feats is None else feats[0])
        result["tta"] = tta_views.summarise(probs)
        return result

    def predict_batch(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """``predict`` for several images in one forward pass (dynamic batching)."""
        if self.session is None or len(images) == 1:
            return [self.predict(im) for im in images]
        logits, feats = self.forward(images)
        return [self._result(p, None if feats is None else feats[i]) for i, p in enumerate(calibrated_probabilities(logits, self.temperature))]

    def _result(self, probs: np.ndarray, features: np.ndarray | None = None) -> dict[str, Any]:
        idx = int(np.argmax(probs))
        return {
            "stage": STAGES[idx],
            "stage_index": idx,
            "probabilities": {name: float(p) for name, p in zip(STAGES, probs)},
            "confidence": float(probs[idx]),
            "temperature": self.temperature,
            "ood": self.ood.score(features) if self.ood is not None and features is not None else None,
            "tta": None,
        }

    def explain(self, image: np.ndarray, mask: np.ndarray | None, target: int) -> dict[str, Any]:
        """Grad-CAM of class ``target`` as an overlay PNG data URL, plus its in-brain fraction."""
        import torch

        model = self._torch()
        x = torch.from_numpy(self._input(image))
        # Grad-CAM needs gradients; one explanation at a time per model keeps memory bounded.
        with self._torch_lock:
            explained = explain_stage(model, x, image, mask, target)
        return {
            "overlay": "data:image/png;base64," + base64.b64encode(explained.overlay_png).decode("ascii"),
            # None for an all-zero heat map: it attributes nothing (JSON has no NaN).
            "saliency_in_brain_fraction": explained.in_brain_fraction,
            "target_stage": STAGES[target],
        }


def _graph_outputs(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.output)


def make_loader(providers: list[str], threads: ThreadPolicy, precision: str = "auto"):  # noqa: ANN201
    """The ``ModelSlot`` loader: ``ModelRef`` -> warmed-up ``ClassifierRuntime`` at ``precision``."""

    def load(ref: ModelRef) -> ClassifierRuntime:
        runtime = ClassifierRuntime(ref, providers, threads, precision)
        log.info(
            "classifier ready",
            extra={"version": ref.version, "backend": runtime.backend, "providers": runtime.providers,
                   "precision": runtime.precision, "precision_reason": runtime.precision_reason,
                   "warmup_s": round(runtime.warmup_s, 3)},
        )
        return runtime

    return load
