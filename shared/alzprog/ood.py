"""Out-of-distribution reference of a stage classifier: is a brain slice unlike its training data?

A slice can pass the quality gate (:mod:`alzprog.quality`: it is a brain MRI slice) and still be
unlike anything the served model was trained on: a real scan into a phantom-trained model, a
coronal or sagittal slice, a level far above or below the trained range, another contrast. The
model then answers with the same confident-looking probabilities, so the service must say so.

The reference lives with the model, as one code-free JSON file (``ood_reference.json``, listed
in ``digests.json``), written at the end of training by :func:`attach_reference`:

- the pooled backbone features (the head's input, ``forward_features``) of the training slices
  are standardised per dimension and summarised by a low-rank PCA (probabilistic PCA: the top
  ``k`` directions with their variances, and one residual variance for the rest);
- the distance of a slice is the Mahalanobis distance under that model, divided by the square
  root of the feature dimension (about 1 for a typical training slice);
- the threshold is a high quantile of the distances of the *validation* slices (held-out
  subjects the PCA never saw), so the false-alarm rate on in-distribution slices is known by
  construction and measured again on the held-out test subjects (docs/api.md).

:func:`load_reference` reads it back (``None`` for models trained before it existed: they
serve without a score) and :meth:`OodReference.score` scores features from either backend.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REFERENCE_FILE = "ood_reference.json"
FORMAT = "alzprog.ood/ppca-v1"
N_COMPONENTS = 8
THRESHOLD_QUANTILE = 0.99
_STD_FLOOR = 1e-6
STD_FLOOR_SHARE = 0.05


@dataclass(frozen=True)
class OodReference:
    """A fitted reference: standardisation, PCA directions and variances, and the threshold."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    components: np.ndarray  # (k, D) orthonormal rows, in standardised units
    variances: np.ndarray  # (k,)
    residual_variance: float
    threshold: float
    quantile: float
    n_train: int
    n_val: int
    val_distances: tuple[float, ...]

    @property
    def dim(self) -> int:
        """The feature dimension the reference expects."""
        return int(self.mean.shape[0])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Normalised Mahalanobis distance (N,) of features (N, D) or (D,) under the reference."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if f.shape[1] != self.dim:
            raise ValueError(f"features have {f.shape[1]} dimensions, the reference {self.dim}")
        z = (f - self.mean) / self.std
        proj = z @ self.components.T
        resid = (z * z).sum(axis=1) - (proj * proj).sum(axis=1)
        d2 = (proj * proj / self.variances).sum(axis=1) + np.clip(resid, 0, None) / self.residual_variance
        return np.sqrt(d2 / self.dim)

    def score(self, features: np.ndarray) -> dict[str, Any]:
        """The JSON the classifier service returns for one slice's features (D,)."""
        d = float(self.distance(features)[0])
        return {"score": d, "threshold": self.threshold, "out_of_distribution": bool(d > self.threshold)}

    def to_json(self) -> dict[str, Any]:
        """The file's content (plain lists, six significant digits)."""

        def r(a: np.ndarray) -> list[float]:
            return [float(f"{v:.6g}") for v in np.asarray(a).ravel()]

        return {
            "format": FORMAT,
            "features": "pooled backbone features (forward_features, the head's input) of classifier_input",
            "dim": self.dim,
            "n_components": int(self.components.shape[0]),
            "mean": r(self.mean),
            "std": r(self.std),
            "components": [r(c) for c in self.components],
            "variances": r(self.variances),
            "residual_variance": float(self.residual_variance),
            "threshold": float(self.threshold),
            "threshold_quantile": float(self.quantile),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "val_distances": [float(f"{v:.6g}") for v in self.val_distances],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OodReference:
        """Rebuild from :meth:`to_json`'s content; ``ValueError`` on a malformed file."""
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown OOD reference format {data.get('format')!r}")
        mean = np.asarray(data["mean"], dtype=np.float64)
        std = np.asarray(data["std"], dtype=np.float64)
        comps = np.asarray(data["components"], dtype=np.float64).reshape(-1, mean.shape[0])
        var = np.asarray(data["variances"], dtype=np.float64)
        if std.shape != mean.shape or var.shape[0] != comps.shape[0] or not (var > 0).all():
            raise ValueError("inconsistent OOD reference shapes")
        res = float(data["residual_variance"])
        thr = float(data["threshold"])
        if not (res > 0 and np.isfinite(thr)):
            raise ValueError("invalid OOD reference variance or threshold")
        return cls(mean, np.maximum(std, _STD_FLOOR), comps, var, res, thr, float(data.get("threshold_quantile", THRESHOLD_QUANTILE)),
                   int(data.get("n_train", 0)), int(data.get("n_val", 0)), tuple(float(v) for v in data.get("val_distances", ())))


def fit_reference(train_features: np.ndarray, val_features: np.ndarray, n_components: int = N_COMPONENTS,
                  quantile: float = THRESHOLD_QUANTILE) -> OodReference:
    """Fit the PPCA reference on training features (N, D); threshold from validation features (M, D)."""
    x = np.asarray(train_features, dtype=np.float64)
    v = np.asarray(val_features, dtype=np.float64)
    if x.ndim != 2 or v.ndim != 2 or x.shape[1] != v.shape[1]:
        raise ValueError("train and validation features must be (N, D) with the same D")
    if len(x) < 3 or len(v) < 1:
        raise ValueError("the OOD reference needs at least 3 training and 1 validation slices")
    mean = x.mean(axis=0)
    raw = x.std(axis=0)
    # A feature (almost) constant on the training slices would turn any change into an
    # enormous distance: its scale is floored at a share of the typical feature's.
    std = np.maximum(raw, max(_STD_FLOOR, STD_FLOOR_SHARE * float(np.median(raw))))
    z = (x - mean) / std
    k = int(max(1, min(n_components, len(x) - 2, z.shape[1] - 1)))
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    ev = s**2 / max(len(x) - 1, 1)
    comps = vt[:k]
    rest = ev[k:].sum() / max(z.shape[1] - k, 1)
    # The residual variance is floored so directions the training set never varied in are not
    # infinitely improbable (few slices: the PCA spans the training set exactly).
    total = ev.sum() / z.shape[1]
    residual = float(max(rest, 1e-3 * total, 1e-9))
    variances = np.maximum(ev[:k], residual)
    ref = OodReference(mean, std, comps, variances, residual, 0.0, quantile, len(x), len(v), ())
    vd = ref.distance(v)
    thr = float(np.quantile(vd, quantile))
    return OodReference(mean, std, comps, variances, residual, thr, quantile, len(x), len(v), tuple(float(d) for d in vd))


def load_reference(model_dir: str | Path) -> OodReference | None:
    """The reference stored with a model, or ``None`` when the model has none (or it is unreadable)."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        return OodReference.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("OOD reference of %s ignored: %s", model_dir, exc)
        return None


def attach_reference(model_dir: str | Path, model: Any, train_df: Any, val_ds: Any, device: Any,
                     batch_size: int = 64) -> dict[str, str]:
    """Training hook: fit the reference on ``train_df``'s slices, threshold it on ``val_ds``'s,
    write it into the saved artifact ``model_dir`` and refresh ``digests.json``; returns the digests.

    ``val_ds`` is the validation ``StageSliceDataset``; the training slices are read through the
    same canonical cache, size and normalisation, unaugmented. The features come from the
    training's own feature cache (``alzprog.training.classifier.cached_features``): when the
    backbone did not change after phase 1 they are read back, not recomputed. ``model`` is moved
    to ``device`` for them and back to the CPU.
    """
    from alzprog.data.dataset import StageSliceDataset
    from alzprog.training.classifier import cached_features

    train_ds = StageSliceDataset(train_df, val_ds.cache, val_ds.size, False, val_ds.mean, val_ds.std, pixels=True)
    model.to(device)
    try:
        tf = cached_features(model, train_ds, device, batch_size, False, "OOD reference (train)", False)
        vf = cached_features(model, val_ds, device, batch_size, False, "OOD reference (val)", False)
    finally:
        model.to("cpu")
    ref = fit_reference(tf, vf)
    log.info("OOD reference: %d training, %d validation slices, threshold %.3f", ref.n_train, ref.n_val, ref.threshold)
    return write_reference(model_dir, ref)


def write_reference(model_dir: str | Path, ref: OodReference) -> dict[str, str]:
    """Write ``ref`` into a saved model directory and add it to ``digests.json``; returns the digests."""
    from alzprog.artifacts import DIGESTS_FILE, sha256_file

    d = Path(model_dir)
    (d / REFERENCE_FILE).write_text(json.dumps(ref.to_json()))
    dig_path = d / DIGESTS_FILE
    data = json.loads(dig_path.read_text())
    files = data.get("files", data)
    files[REFERENCE_FILE] = sha256_file(d / REFERENCE_FILE)
    dig_path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2))
    return dict(files)


def feature_graph(onnx_path: str | Path, dim: int) -> bytes | None:
    """The classifier's ONNX graph with the head's input (the pooled features) as a second output.

    Walks back from the logits through the head's element-wise nodes to the tensor that
    flattens or concatenates the pooled features; returns the serialised model, or ``None``
    when no such tensor is found (the caller then scores with PyTorch)."""
    import onnx

    m = onnx.load(str(onnx_path))
    producers = {o: n for n in m.graph.node for o in n.output}
    name = m.graph.output[0].name
    passthrough = {"Gemm", "MatMul", "Add", "BatchNormalization", "Mul", "Sub", "Div", "Identity", "Dropout"}
    for _ in range(16):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type in ("Flatten", "Concat", "Reshape", "Squeeze") and node.output[0] != m.graph.output[0].name:
            feat = node.output[0]
            m.graph.output.append(onnx.helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, ["N", dim]))
            return m.SerializeToString()
        if node.op_type not in passthrough:
            return None
        # the data input of the head's nodes is the first non-initializer input
        inits = {i.name for i in m.graph.initializer}
        data_inputs = [i for i in node.input if i and i not in inits]
        if not data_inputs:
            return None
        name = data_inputs[0]
    return None


# ---------------------------------------------------------------------- probe sets (measurement)
def template_probes(per_set: int = 8) -> dict[str, list[np.ndarray]]:
    """Brain slices unlike the phantom's training slices, cut from the MNI152 template the phantom
    is drawn from (so only the plane or level differs): ``coronal``, ``sagittal``, and axial
    slices ``below`` the trained levels (``alzprog.data.phantom.SLICE_MIN``; the trained range
    reaches the vertex, so no brain lies above it).

    Laid out as :func:`alzprog.volume.decode_volume` lays out an axial plane; one intensity
    window for the whole template (:func:`alzprog.decode.window_to_uint8`)."""
    from nilearn import datasets

    from alzprog.data.phantom import SLICE_MIN
    from alzprog.decode import window_to_uint8

    img = datasets.load_mni152_template(resolution=1)
    import nibabel as nib

    vol = np.asarray(nib.as_closest_canonical(img).get_fdata(), dtype=np.float32)  # (R, A, S)
    u8 = window_to_uint8(vol)
    r, a, s = u8.shape

    def pick(lo: float, hi: float, n: int, size: int) -> list[int]:
        return sorted(set(np.linspace(lo * size, hi * size, n).round().astype(int).tolist()))

    return {
        # coronal (R, S) planes: superior at the top, the patient's right at the left
        "coronal": [np.ascontiguousarray(u8[:, j, ::-1].T) for j in pick(0.35, 0.65, per_set, a)],
        # sagittal (A, S) planes off the midline: superior at the top, face to the right
        "sagittal": [np.ascontiguousarray(u8[i, :, ::-1].T) for i in pick(0.25, 0.40, per_set // 2, r) + pick(0.60, 0.75, per_set - per_set // 2, r)],
        "below": [np.ascontiguousarray(u8[:, :, z][::-1, :]) for z in pick(45 / s, (SLICE_MIN - 35) / s, per_set, s)],
    }


def inverted_contrast(image: np.ndarray) -> np.ndarray:
    """A T2-like version of a T1 slice: grey levels inverted inside the head, background kept black."""
    from alzprog.preprocessing import head_mask

    g = np.asarray(image, dtype=np.uint8)
    head = head_mask(g)
    out = np.zeros_like(g)
    out[head] = 255 - g[head]
    return out
