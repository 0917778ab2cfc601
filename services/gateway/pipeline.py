"""What the gateway does for an upload once it is read, over a :class:`GatewayState`; no routes.

For each model call: the result cache (keyed by the canonical pixels' SHA-256 and the served
model versions), else a twin computing it already (single-flight here, a Redis lock across
replicas), else the backend over HTTP, whose answer is cached under the version that answered.
:func:`classify` and :func:`progress` are those two calls; :func:`classify_and_progress` runs
them for ``/progression`` (one after the other, side by side when the start is known, or with a
guessed start on an idle gateway); :func:`stage_volume` classifies a volume's slices and votes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from alzprog.constants import STAGES, TRANSITIONS, progression_model_name, stage_index

from services.common.timing import HEADER as TIMING_HEADER
from services.common.timing import ServerTiming
from services.common.wire import OVERLAP_HEADER, encode_canonical
from services.gateway.state import GatewayState
from services.gateway.uploads import SliceUpload, VolumeSlices, compute_brain_mask, decode_to_canonical, png_data_url

log = logging.getLogger("gateway")
# A cached value without these fields is treated as corrupt (a miss), never served.
PREDICT_FIELDS = ("stage", "stage_index", "probabilities", "confidence", "model", "ood", "tta")
PROGRESSION_FIELDS = ("steps", "generator_models", "input_morphometry")
# Part of the progression cache key: bumped when the shape of a cached chain changes, so an
# entry written by an older gateway (without the change maps) is never served as complete.
PROGRESSION_SHAPE = "maps1"
# Slices of one volume sent to the classifier at once.
VOLUME_CLASSIFY_CONCURRENCY = 2


class CanonicalSource(Protocol):
    """An upload the models can be asked about: :class:`~services.gateway.uploads.Upload` or
    :class:`~services.gateway.uploads.SliceUpload`."""

    sha256: str | None

    async def resolve(self, need_png: bool = False) -> str: ...
    async def pixels(self) -> np.ndarray: ...
    async def mask(self) -> np.ndarray: ...
    async def png(self) -> str: ...


def warm_up() -> None:
    """Every CPU step an upload can take, once: loads the decoders and Pillow plugins before the first request."""
    from alzprog.decode import encode_png

    yy, xx = np.mgrid[:96, :96]
    head = (((yy - 48) / 40.0) ** 2 + ((xx - 48) / 36.0) ** 2 < 1).astype(np.uint8) * 120
    pixels = decode_to_canonical(encode_png(head), None)
    compute_brain_mask(pixels.image)
    png_data_url(pixels.image)


async def cached_or_computed(s: GatewayState, lookup: str | None, required: tuple[str, ...],
                             call: Callable[[], Awaitable[dict[str, Any]]]) -> tuple[dict[str, Any], bool]:
    """``(result, cached)``: the result under ``lookup`` (cached, or computed meanwhile by a twin
    request on another replica), else ``call()``'s, computed here under the cross-replica lock."""
    token = None
    if lookup is not None:
        hit = await s.cache.get(lookup, required=required)
        if hit is not None:
            return hit, True
        shared, token = await s.cache.lead_or_follow(lookup, required, s.settings.flight_wait_s)
        if shared is not None:
            return shared, True
    try:
        return await call(), False
    finally:
        if token is not None:
            await s.cache.release(lookup, token)


async def classify(s: GatewayState, up: CanonicalSource, explain: bool, timing: ServerTiming,
                   overlapped: bool = False, tta: bool = False) -> tuple[dict[str, Any], bool]:
    """``(answer, cached)``: the classifier's answer for ``up``, from the cache, a concurrent
    twin, or the backend.

    ``overlapped``: a generator chain runs beside it; the classifier is told, so it uses its
    one-thread session and keeps its lone-run timings for requests that really are alone."""
    sha = up.sha256 or await up.resolve()
    versions = await s.classifier_versions.versions()
    options = "+".join(o for o, on in (("explain", explain), ("tta", tta)) if on)
    known = next(iter(versions.values()), None)  # the classifier serves one model
    lookup = s.cache.key("predict", sha, f"c{known}", options) if known else None

    async def call() -> dict[str, Any]:
        # No mask: the classifier needs one only for Grad-CAM and computes the same itself.
        body, headers = encode_canonical(await up.pixels())
        if overlapped:
            headers[OVERLAP_HEADER] = "1"
        resp = await s.classifier.call(
            "POST", "/v1/classify", deadline_s=s.settings.classify_deadline_s, content=body, headers=headers,
            params={"explain": str(explain).lower(), "tta": str(tta).lower()},
        )
        timing.extend("classifier", resp.headers.get(TIMING_HEADER))
        result = resp.json()
        result = {
            "stage": result["stage"],
            "stage_index": int(result["stage_index"]),
            "probabilities": result["probabilities"],
            "confidence": float(result["confidence"]),
            "model": {"name": result["model"]["name"], "version": str(result["model"]["version"])},
            "explain": result.get("explain"),
            "ood": result.get("ood"),
            "tta": result.get("tta"),
        }
        # Store under the version that actually answered (it may have just changed).
        await s.cache.set(s.cache.key("predict", up.sha256, f"c{result['model']['version']}", options), result)
        return result

    flight_key = lookup or f"predict:{sha}:{options}:unversioned"
    result, cached = await s.flights.run(flight_key, lambda: cached_or_computed(s, lookup, PREDICT_FIELDS, call))
    return dict(result), cached


def with_quality(result: dict[str, Any]) -> dict[str, Any]:
    """The classifier's OOD score and the Grad-CAM's in-brain share as the answer's
    ``quality`` (warnings, score, threshold); the raw score leaves the top level."""
    from alzprog.quality import report

    result["quality"] = report(result.pop("ood", None), result.get("explain"))
    return result


async def progress(s: GatewayState, up: CanonicalSource, start: int, timing: ServerTiming,
                   overlapped: bool = False) -> tuple[dict[str, Any], bool]:
    """``(chain, cached)``: the generator chain from stage ``start``: cache, concurrent twin, or
    the backend (``overlapped``: the classifier runs beside it; the generator is told, as in
    :func:`classify`)."""
    sha = up.sha256 or await up.resolve()
    needed = [progression_model_name(slug) for slug, src, _ in TRANSITIONS if src >= start]
    versions = await s.generator_versions.versions()
    known = [versions.get(n) for n in needed]
    tag = "g" + "-".join(str(v) for v in known) if all(known) else None
    lookup = s.cache.key("progression", sha, tag, f"from{start}:{PROGRESSION_SHAPE}") if tag else None

    async def call() -> dict[str, Any]:
        with timing.phase("mask"):  # usually started earlier: only the wait shows
            mask = await up.mask()
        body, headers = encode_canonical(await up.pixels(), mask)
        if overlapped:
            headers[OVERLAP_HEADER] = "1"
        resp = await s.generator.call(
            "POST", "/v1/progress", deadline_s=s.settings.progress_deadline_s, content=body, headers=headers, params={"from_stage": str(start)}
        )
        timing.extend("generator", resp.headers.get(TIMING_HEADER))
        data = resp.json()
        result = {
            "steps": [
                {
                    "stage": st["stage"],
                    "stage_index": int(st["stage_index"]),
                    "image": st["image"],
                    "synthetic": True,
                    "model": {"name": st["model"]["name"], "version": str(st["model"]["version"])},
                    "change_map": st["change_map"],
                    "change": st["change"],
                    "morphometry": st["morphometry"],
                    "deformation_map": st.get("deformation_map"),
                    "deformation": st.get("deformation"),
                }
                for st in data["steps"]
            ],
            "generator_models": [{"name": m["name"], "version": str(m["version"])} for m in data["models"]],
            "input_morphometry": data["input_morphometry"],
        }
        actual = "g" + "-".join(m["version"] for m in result["generator_models"])
        await s.cache.set(s.cache.key("progression", up.sha256, actual, f"from{start}:{PROGRESSION_SHAPE}"), result)
        return result

    flight_key = lookup or f"progression:{sha}:from{start}:unversioned"
    result, cached = await s.flights.run(flight_key, lambda: cached_or_computed(s, lookup, PROGRESSION_FIELDS, call))
    return dict(result), cached


def _retrieve(task: "asyncio.Future[Any]") -> None:
    """Done-callback of a speculative chain nobody awaits: its result is cached, its error logged."""
    if not task.cancelled() and task.exception() is not None:
        log.info("speculative chain failed", extra={"error": type(task.exception()).__name__})


async def classify_and_progress(s: GatewayState, up: CanonicalSource, start: int | None, explain: bool, tta: bool,
                                timing: ServerTiming, alone: bool) -> tuple[dict[str, Any], int, bool]:
    """``(answer, start, cached)`` of ``/progression``: the classifier's answer with the chain
    from ``start`` (None: from the predicted stage) merged in, with its ``quality``.

    ``alone``: no other request is in flight on this gateway, so with ``start`` None it may
    guess the start (``settings.speculate_from_stage``) and run that chain while the
    classifier works (both models then share the cores, one thread each). Under load a wrong
    guess would take cores from others, so only an idle gateway guesses."""
    guess = s.settings.speculate_from_stage
    if start is None and guess >= 0 and alone:
        speculative = asyncio.ensure_future(progress(s, up, guess, timing, overlapped=True))
        try:
            with timing.phase("classify"):
                result, clf_cached = await classify(s, up, explain, timing, overlapped=True, tta=tta)
        except BaseException:
            speculative.add_done_callback(_retrieve)  # it finishes and is cached; nobody waits
            raise
        start = result["stage_index"]
        if start == guess:
            with timing.phase("progress"):
                chain, gen_cached = await speculative
        else:
            speculative.add_done_callback(_retrieve)
            log.info("speculation missed", extra={"guess": guess, "stage_index": start})
            with timing.phase("progress"):
                chain, gen_cached = await progress(s, up, start, timing)
    elif start is None:
        with timing.phase("classify"):
            result, clf_cached = await classify(s, up, explain, timing, tta=tta)
        start = result["stage_index"]
        with timing.phase("progress"):
            chain, gen_cached = await progress(s, up, start, timing)
    else:
        # The start is known: ask both services at once.
        (result, clf_cached), (chain, gen_cached) = await asyncio.gather(
            classify(s, up, explain, timing, overlapped=True, tta=tta),
            progress(s, up, start, timing, overlapped=True))
    result.update(chain)
    with_quality(result)
    return result, start, clf_cached and gen_cached


async def stage_volume(s: GatewayState, picked: VolumeSlices, start: int | None, explain: bool, chain: bool,
                       timing: ServerTiming) -> dict[str, Any]:
    """The ``/volume`` answer for the slices picked from a volume: each classified (a few at a
    time: the classifier's queue is shared with every other request), the stage by soft vote,
    the representative slice explained (``explain``) and progressed (``chain``, from ``start``
    or the voted stage); the OOD verdict is the median slice's."""
    from alzprog.quality import report
    from alzprog.volume import MAX_SLICES, TRAINED_AREA_RANGE, representative, soft_vote

    uploads = [SliceUpload(s.decoder, px) for px in picked.pixels]
    gate = asyncio.Semaphore(VOLUME_CLASSIFY_CONCURRENCY)

    async def one(up: SliceUpload) -> tuple[dict[str, Any], bool]:
        async with gate:
            return await classify(s, up, False, timing)

    with timing.phase("classify"):
        answers = await asyncio.gather(*(one(up) for up in uploads))
    probs = [a["probabilities"] for a, _ in answers]
    mean, spread = soft_vote(probs)
    voted = max(mean, key=mean.get)
    rep = representative(probs, voted)
    rep_up = uploads[rep]
    result: dict[str, Any] = {
        "stage": voted,
        "stage_index": stage_index(voted),
        "probabilities": mean,
        "probability_spread": spread,
        "confidence": mean[voted],
        "model": answers[rep][0]["model"],
        "slices": [
            {"index": z, "stage": max(p, key=p.get), "probabilities": p, "brain_area_fraction": f,
             "ood_score": (a.get("ood") or {}).get("score")}
            for z, p, f, (a, _) in zip(picked.indices, probs, picked.brain_area_fraction, answers)
        ],
        "representative_slice": picked.indices[rep],
        "volume": {
            "shape": list(picked.shape), "source_orientation": picked.orientation, "scanned_slices": picked.scanned,
            "widest_slice": picked.widest, "max_slices": MAX_SLICES, "trained_area_range": list(TRAINED_AREA_RANGE),
        },
        "explain": None,
        "from_stage": None,
        "steps": None,
        "generator_models": None,
        "input_morphometry": None,
    }
    cached = all(c for _, c in answers)
    if explain:
        with timing.phase("explain"):
            explained, c = await classify(s, rep_up, True, timing)
        result["explain"] = explained.get("explain")
        cached = cached and c
    if chain:
        begin = result["stage_index"] if start is None else start
        with timing.phase("progress"):
            steps, c = await progress(s, rep_up, begin, timing)
        result.update(steps)
        result["from_stage"] = STAGES[begin]
        cached = cached and c
    # The volume's OOD verdict is its median slice's: one odd slice at the edge of the kept
    # range does not flag a whole scan, a scan unlike the training data flags on most slices.
    oods = [a["ood"] for a, _ in answers if a.get("ood")]
    ood = None
    if oods:
        median = float(np.median([o["score"] for o in oods]))
        ood = {"score": median, "threshold": oods[0]["threshold"], "out_of_distribution": median > oods[0]["threshold"]}
    result["quality"] = report(ood, result.get("explain"))
    result["canonical"] = await rep_up.png()
    result["cached"] = cached
    log.info("volume", extra={"slices": len(uploads), "stage_index": result["stage_index"], "cached": cached})
    return result
