"""Int8 stage classifier: ONNX Runtime static quantization, and the check that allows it to serve.

On a CPU with integer dot-product instructions (AVX-512 VNNI, AMX), ONNX Runtime runs an int8
convolution network faster than fp32 (docs/performance.md has the figures). Int8 rounds every
weight and activation to 256 levels over a range measured on calibration inputs, so the
probabilities move; whether they move too much depends on the trained weights and on the
calibration. So, as for the generators' bf16 (:mod:`alzprog.precision`), no int8 graph serves
before it passes a check:

- :func:`quantize_classifier` quantizes the graph the service serves (:func:`serving_graph`: the
  model's ONNX, with the pooled features as a second output when the model has an OOD reference),
  with per-channel int8 weights and activation ranges calibrated (MinMax) on training slices of
  the model's own split. The inputs are made by the one preprocessing path
  (:class:`SliceCalibrationReader`: canonical slices through ``alzprog.preprocessing``).
- :func:`int8_check` runs fp32 and int8 on every slice of the split's held-out test subjects and
  compares what the service returns: subject macro-F1 (soft voting) and the calibrated
  probabilities, against :data:`INT8_TOLERANCE`.
- :func:`quantize_and_record` does both for a registered version and records the int8 graph and
  the check on the version (``alzprog.registry.record_int8``), where the classifier service reads
  it (``CLASSIFIER_PRECISION``).
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"
CHECK_FILE = "int8_check.json"
FORMATS = ("qdq", "qoperator")
# QOperator (QLinearConv) measured faster than QDQ at batch 1, the service's default, for the
# served classifier on the AVX-512 VNNI CPU (benchmarks/int8_classifier.py; docs/performance.md).
DEFAULT_FORMAT = "qoperator"
DEFAULT_CALIBRATION_SLICES = 128

# Admission bounds of an int8 graph against its fp32 graph on the held-out test subjects:
# - macro_f1_diff: |subject macro-F1 int8 - fp32| (either way: int8 is meant to be the same model).
# - max_abs_prob / mean_abs_prob: |p_int8 - p_fp32| of the calibrated probabilities over every test
#   slice and stage (what the service returns). The bounds sit well under the calibration error the
#   temperature leaves on validation (the demo champion's ECE is several points), so int8 does not
#   change what a served probability means; a model whose int8 logits drift (a broken calibration
#   range) exceeds them (tests/test_int8.py).
# - ood_flag_changes: share of test slices whose out-of-distribution flag int8 changes (the flag is
#   part of the served answer; only for a model with an OOD reference).
INT8_TOLERANCE: dict[str, float] = {"macro_f1_diff": 0.005, "max_abs_prob": 0.05, "mean_abs_prob": 0.01,
                                    "ood_flag_changes": 0.02}
# Quantized: the backbone's convolutions, their ReLU6 clips (folded into the convolution's output
# range) and residual additions. The pooling (means and standard deviations) and the head stay fp32:
# a standard deviation of int8 activations read through the head's normalisation amplifies the
# rounding, and these few reductions are not where the time goes.
QUANTIZED_OPS = ("Conv", "Clip", "Relu", "Add")
# Stages with fewer held-out subjects than this are left out of macro-F1, as in the evaluation
# report (alzprog.evaluation.classifier.MIN_TEST_SUBJECTS).
MIN_TEST_SUBJECTS = 2


class QuantizationError(RuntimeError):
    """The int8 graph cannot be built or checked for this model and split."""


# --------------------------------------------------------------------------- inputs
def model_inputs(images: Sequence[np.ndarray], config: dict[str, Any]) -> np.ndarray:
    """The classifier's float32 input batch (N, 3, S, S) for canonical uint8 slices: the shared
    ``alzprog.inference.classifier.model_input`` (``preprocessing.classifier_input``) per slice."""
    from alzprog.inference.classifier import model_input

    return np.stack([model_input(im, config).numpy() for im in images]).astype(np.float32, copy=False)


def canonical_slices(paths: Sequence[str], progress: bool = False) -> list[np.ndarray]:
    """Canonical uint8 slices of image files, through the canonical cache (the one preprocessing
    path, ``alzprog.preprocessing.canonicalize``)."""
    from alzprog.data.dataset import CanonicalCache
    from alzprog.preprocessing import CANONICAL_SIZE

    cache = CanonicalCache.build(list(paths), size=CANONICAL_SIZE, progress=progress)
    return [cache.get(p)[0] for p in paths]


def calibration_rows(train: Any, n: int, seed: int = 0) -> Any:
    """``n`` training rows spread over subjects and stages: subjects in turn (round-robin over a
    seeded order), each contributing its slices in a seeded order, so a small set still covers
    every subject's anatomy and contrast. Deterministic for a seed."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = train.reset_index(drop=True)
    subjects = sorted(frame["subject"].astype(str).unique())
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    queues = {s: list(rng.permutation(np.flatnonzero(frame["subject"].astype(str).to_numpy() == s))) for s in order}
    picked: list[int] = []
    while len(picked) < min(n, len(frame)):
        for s in order:
            if queues[s] and len(picked) < n:
                picked.append(int(queues[s].pop()))
    return frame.iloc[picked].reset_index(drop=True) if picked else pd.DataFrame(columns=frame.columns)


class SliceCalibrationReader:
    """An ONNX Runtime ``CalibrationDataReader`` over canonical slices: batches of
    :func:`model_inputs`, under the graph's input name. ``rewind`` starts again. (ORT's reader
    class recognises any object with ``get_next``, so onnxruntime is not imported here.)"""

    def __init__(self, images: Sequence[np.ndarray], config: dict[str, Any], input_name: str = "input",
                 batch_size: int = 16) -> None:
        if not images:
            raise QuantizationError("no calibration slices")
        self.images = list(images)
        self.config = config
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch_size):
            yield {self.input_name: model_inputs(self.images[i:i + self.batch_size], self.config)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


# --------------------------------------------------------------------------- graphs
def serving_graph(model_dir: str | Path) -> bytes:
    """The fp32 graph the classifier service runs for a model folder: ``model.onnx`` with the
    pooled features as a second output when the model has an OOD reference and that tensor is
    found (``alzprog.ood.feature_graph``), else ``model.onnx`` as it is."""
    from alzprog.artifacts import ONNX_FILE
    from alzprog.ood import feature_graph, load_reference

    onnx_path = Path(model_dir) / ONNX_FILE
    if not onnx_path.is_file():
        raise QuantizationError(f"{model_dir} has no {ONNX_FILE}: nothing to quantize")
    ref = load_reference(model_dir)
    graph = feature_graph(onnx_path, ref.dim) if ref is not None else None
    return graph if graph is not None else onnx_path.read_bytes()


def quantize_graph(graph: bytes, out_path: str | Path, reader: SliceCalibrationReader, fmt: str = DEFAULT_FORMAT,
                   per_channel: bool = True, keep_fp32: Sequence[str] = ()) -> Path:
    """Static int8 quantization of an fp32 ONNX graph with ONNX Runtime (``quantize_static``).

    ``fmt``: ``qdq`` (QuantizeLinear/DequantizeLinear pairs that ORT fuses into int8 kernels) or
    ``qoperator`` (QLinearConv and friends). Weights int8 (per output channel with
    ``per_channel``), activations uint8, ranges from MinMax calibration over ``reader``. The graph
    is first put through ORT's quantization pre-processing (shape inference and fusions).
    ``keep_fp32``: name prefixes of backbone nodes to leave in fp32 as well (e.g. ``/features.2/``,
    a whole stage; benchmarks/int8_diagnose.py quantizes one stage at a time).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise ValueError(f"quantization format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    with tempfile.TemporaryDirectory(prefix="alzprog-int8-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        src.write_bytes(graph)
        pre = Path(tmp) / "fp32-pre.onnx"
        try:
            # The exported "same" padding computes its pads from the input shape, which symbolic
            # shape inference cannot complete; ONNX shape inference and ORT's fusions still run.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; quantize the graph as it is
            log.warning("quantization pre-processing failed (%s); quantizing the graph without it", exc)
            pre = src
        model = onnx.load(str(pre))
        keep = {n for n in backbone_nodes(model) if not any(n.startswith(p) for p in keep_fp32)}
        reader.rewind()
        # The quantizer logs every unquantized integer tensor and adjusted scale on the root logger.
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_static(
                str(pre), str(out_path), reader,
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=[n.name for n in model.graph.node if n.name not in keep],
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            root.setLevel(level)
    return out_path


def backbone_nodes(model: Any) -> set[str]:
    """Names of the nodes that are a convolution or lead to one: the backbone. What follows the
    last convolution (pooling, head) is not in it."""
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    leads: dict[str, bool] = {}
    # ONNX graphs list nodes in topological order: walking it backwards sees consumers first.
    for n in reversed(model.graph.node):
        leads[n.name] = n.op_type == "Conv" or any(leads.get(c, False) for o in n.output for c in consumers.get(o, []))
    return {name for name, yes in leads.items() if yes}


def cpu_session(path_or_bytes: str | Path | bytes, threads: int = 0):  # noqa: ANN201 - ort.InferenceSession
    """A CPU ONNX Runtime session of a graph file (or bytes), all optimisations, ``threads``
    intra-op threads (0: ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- the check
@dataclass(frozen=True)
class Int8Check:
    """int8 against fp32 on the held-out test subjects, and whether int8 may serve."""

    passed: bool
    reasons: list[str]
    macro_f1_fp32: float
    macro_f1_int8: float
    macro_f1_diff: float
    macro_f1_stages: list[str]
    max_abs_prob: float
    mean_abs_prob: float
    slice_agreement: float
    subject_agreement: float
    n_test_slices: int
    n_test_subjects: int
    ood: dict[str, float] | None
    tolerance: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_graph(session: Any, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, K) and, when the graph has a second output, the pooled features (N, D)."""
    name = session.get_inputs()[0].name
    logits, feats = [], []
    for x in batches:
        outs = session.run(None, {name: x})
        logits.append(np.asarray(outs[0], np.float64))
        if len(outs) > 1:
            feats.append(np.asarray(outs[1], np.float64))
    return np.concatenate(logits), (np.concatenate(feats) if feats else None)


def _subject_macro_f1(probs: np.ndarray, labels: np.ndarray, subjects: np.ndarray, stages: list[int]) -> tuple[float, np.ndarray]:
    from alzprog.metrics import classification as cm

    _, sprobs, slabels = cm.subject_soft_vote(probs, labels, subjects)
    pred = sprobs.argmax(1)
    return cm.macro_f1(slabels, pred, stages), pred


def compare_outputs(fp32: tuple[np.ndarray, np.ndarray | None], int8: tuple[np.ndarray, np.ndarray | None],
                    labels: Sequence[int], subjects: Sequence[str], temperature: float,
                    tolerance: dict[str, float] = INT8_TOLERANCE, ood_reference: Any = None) -> Int8Check:
    """The check from both graphs' outputs (logits, features) on the same test slices.

    Subject macro-F1 by soft voting over the stages with at least :data:`MIN_TEST_SUBJECTS` test
    subjects (all present stages when none has that many); probabilities are the calibrated
    softmax (``logits / temperature``) the service returns. With an OOD reference and features
    from both, the distance change is reported and the share of slices whose out-of-distribution
    flag int8 changes is bounded too (``ood_flag_changes``).
    """
    from alzprog.constants import STAGES
    from alzprog.inference.classifier import calibrated_probabilities

    labels_a = np.asarray(labels, dtype=np.int64)
    subjects_a = np.asarray([str(s) for s in subjects])
    if len(labels_a) == 0:
        raise QuantizationError("no test slices to check int8 on")
    p32 = calibrated_probabilities(fp32[0], temperature)
    p8 = calibrated_probabilities(int8[0], temperature)
    diff = np.abs(p8 - p32)
    subject_stage = {s: int(np.bincount(labels_a[subjects_a == s]).argmax()) for s in set(subjects_a.tolist())}
    per_stage = np.bincount(list(subject_stage.values()), minlength=len(STAGES))
    stages = [c for c in range(len(STAGES)) if per_stage[c] >= MIN_TEST_SUBJECTS] or [c for c in range(len(STAGES)) if per_stage[c]]
    f1_32, pred32 = _subject_macro_f1(p32, labels_a, subjects_a, stages)
    f1_8, pred8 = _subject_macro_f1(p8, labels_a, subjects_a, stages)
    ood = None
    if ood_reference is not None and fp32[1] is not None and int8[1] is not None:
        d32, d8 = ood_reference.distance(fp32[1]), ood_reference.distance(int8[1])
        ood = {"max_abs_distance": round(float(np.abs(d8 - d32).max()), 5),
               "mean_abs_distance": round(float(np.abs(d8 - d32).mean()), 5),
               "threshold": float(ood_reference.threshold),
               "flag_agreement": round(float(np.mean((d32 > ood_reference.threshold) == (d8 > ood_reference.threshold))), 5)}
    figures = {"macro_f1_diff": abs(f1_8 - f1_32), "max_abs_prob": float(diff.max()), "mean_abs_prob": float(diff.mean())}
    if ood is not None:
        figures["ood_flag_changes"] = 1.0 - ood["flag_agreement"]
    reasons = [f"{k} {figures[k]:.4g} > {tolerance[k]:.4g}" for k in figures
               if k in tolerance and not figures[k] <= tolerance[k]]
    return Int8Check(
        passed=not reasons,
        reasons=reasons,
        macro_f1_fp32=round(float(f1_32), 6),
        macro_f1_int8=round(float(f1_8), 6),
        macro_f1_diff=round(float(f1_8 - f1_32), 6),
        macro_f1_stages=[STAGES[c] for c in stages],
        max_abs_prob=round(figures["max_abs_prob"], 6),
        mean_abs_prob=round(figures["mean_abs_prob"], 6),
        slice_agreement=round(float(np.mean(p8.argmax(1) == p32.argmax(1))), 6),
        subject_agreement=round(float(np.mean(pred8 == pred32)), 6),
        n_test_slices=int(len(labels_a)),
        n_test_subjects=int(len(subject_stage)),
        ood=ood,
        tolerance=dict(tolerance),
    )


def int8_check(fp32_graph: bytes | str | Path, int8_graph: str | Path, config: dict[str, Any], test: Any,
               images: Sequence[np.ndarray], tolerance: dict[str, float] = INT8_TOLERANCE,
               ood_reference: Any = None, batch_size: int = 16) -> Int8Check:
    """Run both graphs on the canonical test ``images`` (rows of the ``test`` frame: ``stage_index``,
    ``subject``) and compare (:func:`compare_outputs`)."""
    batches = [model_inputs(images[i:i + batch_size], config) for i in range(0, len(images), batch_size)]
    fp32 = run_graph(cpu_session(fp32_graph), batches)
    int8 = run_graph(cpu_session(int8_graph), batches)
    return compare_outputs(fp32, int8, test["stage_index"].to_numpy(), test["subject"].astype(str).to_numpy(),
                           float(config.get("temperature", 1.0)), tolerance, ood_reference)


# --------------------------------------------------------------------------- one version, end to end
@dataclass
class QuantizeResult:
    """What :func:`quantize_classifier` built: the int8 graph, the check and its provenance."""

    int8_path: Path
    check: Int8Check
    record: dict[str, Any]


def _model_split(config: dict[str, Any], split_dir: Path) -> None:
    """Refuse a split other than the model's own (its sha256 is in the model's config), and test
    subjects the model saw."""
    from alzprog.data.split import split_hash

    expected = (config.get("training") or {}).get("split_sha256")
    got = split_hash(split_dir)
    if expected and got != expected:
        raise QuantizationError(f"split {split_dir} (sha256 {got[:12]}...) is not the model's own split "
                                f"(sha256 {expected[:12]}...): calibrate and check on the split it was trained on")
    if not expected:
        log.warning("model config records no split sha256; cannot confirm %s is its own split", split_dir)


def quantize_classifier(model_dir: str | Path, split_dir: str | Path, out_dir: str | Path, *,
                        calibration_slices: int = DEFAULT_CALIBRATION_SLICES, fmt: str = DEFAULT_FORMAT,
                        per_channel: bool = True, tolerance: dict[str, float] = INT8_TOLERANCE, seed: int = 0,
                        calibration_images: Sequence[np.ndarray] | None = None,
                        progress: bool = False) -> QuantizeResult:
    """Quantize a stage classifier folder and check it on the held-out test subjects of its split.

    Calibration: ``calibration_slices`` training slices of ``split_dir`` (:func:`calibration_rows`),
    unless ``calibration_images`` (canonical uint8 slices) are given. Writes ``model_int8.onnx``
    and ``int8_check.json`` (the check with its provenance) into ``out_dir``.
    """
    import onnxruntime as ort

    from alzprog.artifacts import CONFIG_FILE, ONNX_FILE, sha256_file, verify_digests
    from alzprog.data.split import load_split, split_hash
    from alzprog.evaluation.classifier import check_unseen_subjects
    from alzprog.ood import load_reference

    model_dir, split_dir, out = Path(model_dir), Path(split_dir), Path(out_dir)
    digests = verify_digests(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    if config.get("kind") != "stage_classifier":
        raise QuantizationError(f"{model_dir} is not a stage classifier (kind={config.get('kind')!r})")
    _model_split(config, split_dir)
    frames = load_split(split_dir, ("train", "test"))
    test = frames["test"].reset_index(drop=True)
    if test.empty:
        raise QuantizationError(f"{split_dir}/test.csv has no rows")
    check_unseen_subjects(config, sorted(test["subject"].astype(str).unique()))
    graph = serving_graph(model_dir)
    if calibration_images is None:
        rows = calibration_rows(frames["train"], calibration_slices, seed)
        calibration_images = canonical_slices(list(rows["path"].astype(str)), progress)
    reader = SliceCalibrationReader(calibration_images, config)
    out.mkdir(parents=True, exist_ok=True)
    int8_path = quantize_graph(graph, out / INT8_FILE, reader, fmt, per_channel)
    test_images = canonical_slices(list(test["path"].astype(str)), progress)
    check = int8_check(graph, int8_path, config, test, test_images, tolerance, load_reference(model_dir))
    record = {
        "check": check.as_dict(),
        "calibration": {"slices": len(reader), "method": "minmax", "source": "train side of the model's split",
                        "seed": seed},
        "quantization": {"format": fmt, "per_channel": per_channel, "weights": "int8", "activations": "uint8",
                         "onnxruntime": ort.__version__},
        "split_sha256": split_hash(split_dir),
        "fp32_onnx_sha256": digests.get(ONNX_FILE) or sha256_file(model_dir / ONNX_FILE),
        "int8_sha256": sha256_file(int8_path),
        "int8_file": INT8_FILE,
        "outputs": len(cpu_session(int8_path).get_outputs()),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    (out / CHECK_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("int8 check %s: subject macro-F1 %.4f int8 vs %.4f fp32, max |dp| %.4f, mean |dp| %.5f (%d calibration slices)",
             "passed" if check.passed else "FAILED (" + "; ".join(check.reasons) + ")", check.macro_f1_int8,
             check.macro_f1_fp32, check.max_abs_prob, check.mean_abs_prob, len(reader))
    return QuantizeResult(int8_path, check, record)


def quantize_and_record(uri: str, split_dir: str | Path | None = None, out_dir: str | Path | None = None,
                        **kwargs: Any) -> QuantizeResult:
    """:func:`quantize_classifier` for a registered version (``models:/name/N`` or ``models:/name@alias``)
    and record the int8 graph and its check on that version (``alzprog.registry.record_int8``),
    passed or not (a failed check is recorded too, so the service says why it serves fp32).

    ``split_dir`` defaults to the split logged with the model's training run (``split/``), which
    must name image files present on this machine. ``out_dir`` keeps a copy of what was recorded.
    """
    from alzprog import registry

    resolved = registry.resolve_model(uri)
    with tempfile.TemporaryDirectory(prefix="alzprog-int8-") as tmp:
        if split_dir is None:
            split_dir = registry.download_run_split(resolved.run_id, Path(tmp) / "split")
        out = Path(out_dir) if out_dir is not None else Path(tmp) / "int8"
        result = quantize_classifier(resolved.local_dir, split_dir, out, **kwargs)
        record = {**result.record, "model": {"name": resolved.name, "version": resolved.version}}
        (out / CHECK_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        record["run_id"] = registry.record_int8(resolved.name, resolved.version, out, record)
        return QuantizeResult(result.int8_path, result.check, record)
