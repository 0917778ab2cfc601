"""Baselines every classifier report carries beside the model, on the same test subjects.

- **morphometric**: brain area, CSF and ventricle fractions and cortical-rim measures computed
  from each image by :mod:`alzprog.morphometry` (the library's own brain mask), a
  class-balanced logistic regression fitted on the training slices, subject soft voting on the
  test slices. What a classical image-analysis pipeline gets without deep learning.
- **ground-truth morphometry oracle** (phantom only): the same regression on the phantom's
  true areas from ``longitudinal.csv`` (ventricle / brain, hippocampus / brain, cortex /
  brain, brain area). It sees measurements no image model is given, so it says how much
  stage signal the anatomy itself carries.

Both return per-slice probabilities in the test rows' order, so the report scores them with
exactly the code that scores the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from alzprog.constants import STAGES

log = logging.getLogger(__name__)

ORACLE_FEATURES = ("ventricle_to_brain", "hippocampus_to_brain", "cortex_to_brain", "brain_area_px")


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class-balanced, standardised logistic regression; (n_test, 4) probabilities over all stages."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced",
                                                               random_state=seed))
    model.fit(x_train, y_train)
    probs = np.zeros((len(x_test), len(STAGES)))
    probs[:, model.classes_] = model.predict_proba(x_test)
    return probs


def morphometric_features(images: np.ndarray, masks: np.ndarray, progress: bool = False) -> np.ndarray:
    """(N, F) :data:`alzprog.morphometry.FEATURE_NAMES` of canonical images and their brain masks."""
    from alzprog.morphometry import measure

    return np.stack([measure(im, m).features() for im, m in tqdm(zip(images, masks), total=len(images),
                                                                  desc="morphometry", leave=False,
                                                                  disable=not progress)])


def morphometric_baseline(train: pd.DataFrame, test: pd.DataFrame, progress: bool = True, seed: int = 0) -> np.ndarray:
    """Per-slice probabilities of the morphometric baseline for ``test`` (rows in order)."""
    from alzprog.data.dataset import CanonicalCache
    from alzprog.preprocessing import CANONICAL_SIZE

    def feats(frame: pd.DataFrame) -> np.ndarray:
        paths = list(frame["path"].astype(str))
        cache = CanonicalCache.build(paths, size=CANONICAL_SIZE, progress=progress)
        rows = cache.index_of(paths)
        return morphometric_features(np.asarray(cache.images)[rows], np.asarray(cache.masks)[rows], progress)

    return _fit_predict(feats(train), train["stage_index"].to_numpy(int), feats(test), seed)


def oracle_features(frame: pd.DataFrame) -> np.ndarray | None:
    """The phantom's true areas for each row of ``frame`` (by subject, slice and stage), or None off the phantom."""
    from alzprog.data.phantom import find_phantom_root, read_longitudinal

    root = find_phantom_root(frame["path"].astype(str).head(5))
    if root is None:
        return None
    truth = pd.DataFrame(read_longitudinal(root))
    truth["ventricle_to_brain"] = truth["ventricle_area_px"] / truth["brain_area_px"]
    truth["hippocampus_to_brain"] = truth["hippocampus_area_px"] / truth["brain_area_px"]
    truth["cortex_to_brain"] = truth["cortex_area_px"] / truth["brain_area_px"]
    keyed = truth.set_index(["subject", "slice", "stage_index"])[list(ORACLE_FEATURES)]
    keys = pd.MultiIndex.from_arrays([frame["subject"].astype(str), frame["slice"].astype(int),
                                      frame["stage_index"].astype(int)])
    found = keyed.reindex(keys)
    if found.isna().any().any():
        log.warning("%d row(s) have no ground truth in %s; no oracle", int(found.isna().any(axis=1).sum()), root)
        return None
    return found.to_numpy(np.float64)


def oracle_baseline(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> np.ndarray | None:
    """Per-slice probabilities of the ground-truth-morphometry oracle for ``test``, or None off the phantom."""
    x_train, x_test = oracle_features(train), oracle_features(test)
    if x_train is None or x_test is None:
        return None
    return _fit_predict(x_train, train["stage_index"].to_numpy(int), x_test, seed)


def source_note(frame: pd.DataFrame) -> str:
    """Where the test images come from (the phantom's root, or the manifest's folder)."""
    from alzprog.data.phantom import find_phantom_root

    root = find_phantom_root(frame["path"].astype(str).head(5))
    return f"phantom at {root}" if root else f"images under {Path(str(frame['path'].iloc[0])).parent.parent}"
