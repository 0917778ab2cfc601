"""The input quality gate (alzprog.quality) on real files: the phantom's slices and the real
OASIS samples must pass; real photographs and scans shipped with scikit-image, blank and noise
images and a radiograph-like image must be refused. The rates are the figures docs/api.md quotes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from alzprog import quality as Q
from alzprog.decode import read_slice
from alzprog.preprocessing import canonical_image

# scikit-image's sample pictures: photographs, a document scan, a page of text, microscopy,
# a fundus photograph, astronomy, textures. (Its phantom.png is the Shepp-Logan head phantom,
# a head slice by design, so it is not in this set.)
NOT_BRAINS = (
    "coffee.png", "camera.png", "astronaut.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "coins.png",
    "moon.png", "brick.png", "grass.png", "gravel.png", "page.png", "text.png", "hubble_deep_field.jpg", "retina.jpg",
    "cell.png", "ihc.png", "horse.png", "logo.png", "color.png", "clock_motion.png", "microaneurysms.png",
)


def _verdict(gray: np.ndarray) -> str:
    try:
        Q.assess(canonical_image(gray))
    except Q.NotABrainSlice as exc:
        return exc.code
    return "pass"


def _chest_like(seed: int = 0) -> np.ndarray:
    """A radiograph-like picture: a bright body on grey, two dark lungs, a bright spine."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:300, :300]
    c = np.full((300, 300), 60.0)
    body = ((yy - 160) / 150) ** 2 + ((xx - 150) / 140) ** 2 < 1
    c[body] = 200
    for cx in (95, 205):
        c[((yy - 150) / 95) ** 2 + ((xx - cx) / 45) ** 2 < 1] = 70
    c[:, 140:160][body[:, 140:160]] = 230
    return np.clip(c + rng.normal(0, 8, c.shape), 0, 255).astype(np.uint8)


def test_every_phantom_slice_passes(tiny_phantom: Path):
    """False alarms on the phantom: every slice of every subject (the held-out ones included),
    in ``Data/`` and at all four stages in ``longitudinal/``."""
    paths = sorted((tiny_phantom / "Data").rglob("*.jpg")) + sorted((tiny_phantom / "longitudinal").rglob("*.jpg"))
    assert len(paths) >= 48 + 192
    refused = {p.name: v for p in paths if (v := _verdict(read_slice(p))) != "pass"}
    assert refused == {}, f"{len(refused)}/{len(paths)} phantom slices refused: {refused}"


def test_every_real_oasis_sample_passes(oasis_sample_files):
    refused = {p.name: v for p in oasis_sample_files if (v := _verdict(read_slice(p))) != "pass"}
    assert refused == {}, refused


def test_photographs_scans_blank_noise_and_radiographs_are_refused():
    skimage = pytest.importorskip("skimage")
    data = Path(os.path.dirname(skimage.__file__)) / "data"
    rng = np.random.default_rng(0)
    images = {name: read_slice(data / name) for name in NOT_BRAINS if (data / name).is_file()}
    assert len(images) >= 15, "scikit-image ships its sample pictures"
    images.update({
        "blank grey": np.full((200, 200), 128, np.uint8),
        "black": np.zeros((200, 200), np.uint8),
        "uniform noise": rng.integers(0, 256, (200, 200)).astype(np.uint8),
        "gaussian noise": np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8),
        "chest radiograph-like": _chest_like(),
    })
    verdicts = {name: _verdict(img) for name, img in images.items()}
    passed = [name for name, v in verdicts.items() if v == "pass"]
    assert passed == [], verdicts
    assert verdicts["blank grey"] == verdicts["black"] == "blank_image"
    assert verdicts["uniform noise"] == verdicts["gaussian noise"] == "noise_image"
    assert verdicts["page.png"] == "no_dark_background"


def test_the_figures_are_scale_free_and_json_ready(oasis_sample_files):
    f = Q.assess(canonical_image(read_slice(oasis_sample_files[0])))
    d = f.as_dict()
    assert set(d) == {"std", "neighbour_correlation", "dark_border", "head_area", "head_solidity", "brain_in_head"}
    assert all(isinstance(v, float) for v in d.values())
    assert 0 <= d["dark_border"] <= 1 and 0 <= d["head_area"] <= 1
