"""``/predict``, ``/progression`` and ``/volume``: an upload in, the stage (and the synthetic
road ahead) out. The work is :mod:`services.gateway.pipeline`'s; here the form and query are
read, the upload is resolved (:mod:`services.gateway.uploads`) and the answer gets its headers.

Every answer is ``Cache-Control: no-store`` with a ``Server-Timing`` header naming where the
time went, the backends' phases included. The answers pass their ``response_model``
unchanged: keys the backends left out stay out (``response_model_exclude_unset``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile

from alzprog.constants import STAGES, stage_index

from services.common.errors import ERROR_RESPONSES, ServiceError
from services.common.timing import ServerTiming
from services.gateway import pipeline
from services.gateway.deps import InFlightDep, StateDep
from services.gateway.schemas import PredictResponse, ProgressionResponse, VolumeResponse
from services.gateway.state import GatewayState
from services.gateway.uploads import Upload

log = logging.getLogger("gateway")
RESULT_ERRORS = {k: ERROR_RESPONSES[k] for k in (400, 413, 415, 422, 429, 503)}
TTA_HELP = ("add the spread of each stage probability over test-time augmentation views "
            "(mirror, small rotations, intensity gamma): costs one batch of 8 views on the classifier")
UploadField = Annotated[UploadFile, File(description="one MRI slice: PNG, JPEG, DICOM or NIfTI (.nii/.nii.gz)")]

router = APIRouter(tags=["results"])


def start_stage(
    from_stage: Annotated[str | None, Form(max_length=32, description="start stage of the chain (name, slug nd/vmd/md/mod, or 0-3); default: the predicted stage (for a volume: the voted one)")] = None,
    from_stage_q: Annotated[str | None, Query(alias="from_stage", max_length=32, description="same as the form field")] = None,
) -> int | None:
    """The stage a chain starts from, as the form field or the query names it; None: the predicted one."""
    requested = from_stage if from_stage is not None else from_stage_q
    if requested is None or not requested.strip():
        return None
    try:
        return stage_index(requested)
    except ValueError:
        raise ServiceError(422, "bad_stage", f"from_stage must be one of {', '.join(STAGES)}, a slug (nd, vmd, md, mod) or 0-3") from None


def flag(*values: bool | None) -> bool:
    """A switch given as a form field or a query parameter: on when either says so."""
    return any(bool(v) for v in values if v is not None)


@dataclass(frozen=True)
class ResultOptions:
    """What ``/predict`` and ``/progression`` both take beside the upload."""

    explain: bool
    tta: bool
    nifti_slice: int | None


def result_options(
    explain: Annotated[bool | None, Form(description="include the Grad-CAM overlay")] = None,
    nifti_slice: Annotated[int | None, Form(ge=0, le=4096, description="axial slice of a NIfTI volume (default: central)")] = None,
    tta: Annotated[bool | None, Form(description=TTA_HELP)] = None,
    explain_q: Annotated[bool | None, Query(alias="explain", description="same as the form field")] = None,
    tta_q: Annotated[bool | None, Query(alias="tta", description="same as the form field")] = None,
) -> ResultOptions:
    """The switches, each as a form field or a query parameter."""
    return ResultOptions(explain=flag(explain, explain_q), tta=flag(tta, tta_q), nifti_slice=nifti_slice)


OptionsDep = Annotated[ResultOptions, Depends(result_options)]
StartDep = Annotated[int | None, Depends(start_stage)]


async def _resolved_upload(s: GatewayState, file: UploadFile, nifti_slice: int | None, timing: ServerTiming,
                           *, need_png: bool) -> Upload:
    """The upload, hashed and resolved (its record, else decoded and canonicalised), timed as ``upload``."""
    with timing.phase("upload"):
        up = await s.decoder.upload(await file.read(), nifti_slice)
        await up.resolve(need_png=need_png)
    return up


def _answered(response: Response, timing: ServerTiming, t0: float) -> None:
    timing.add("total", time.perf_counter() - t0)
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(timing.as_headers())


@router.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True, responses=RESULT_ERRORS)
async def predict(
    s: StateDep,
    response: Response,
    file: UploadField,
    opts: OptionsDep,
) -> dict[str, Any]:
    """Stage of one MRI slice: calibrated probabilities for the four stages, the model version
    and ``quality`` (out-of-distribution and Grad-CAM warnings)."""
    timing = ServerTiming()
    t0 = time.perf_counter()
    up = await _resolved_upload(s, file, opts.nifti_slice, timing, need_png=opts.explain)
    with timing.phase("classify"):
        result, cached = await pipeline.classify(s, up, opts.explain, timing, tta=opts.tta)
    pipeline.with_quality(result)
    result["cached"] = cached
    if opts.explain:
        result["canonical"] = await up.png()
    log.info("predicted", extra={"stage_index": result["stage_index"], "cached": cached, "model_version": result["model"]["version"]})
    _answered(response, timing, t0)
    return result


@router.post("/progression", response_model=ProgressionResponse, response_model_exclude_unset=True, responses=RESULT_ERRORS)
async def progression(
    s: StateDep,
    in_flight: InFlightDep,
    response: Response,
    file: UploadField,
    opts: OptionsDep,
    start: StartDep,
) -> dict[str, Any]:
    """Stage plus the synthetic road ahead: one SYNTHETIC slice per stage up to Moderate Dementia."""
    timing = ServerTiming()
    t0 = time.perf_counter()
    # The upload is resolved even while a backend's circuit is open: its answer may be cached.
    up = await _resolved_upload(s, file, opts.nifti_slice, timing, need_png=True)
    if up.decoded:
        # A new upload (no record): its chain is most likely not cached either, so the
        # generator will need the brain mask; compute it while the classifier works.
        up.start_mask()
    result, start, cached = await pipeline.classify_and_progress(
        s, up, start, opts.explain, opts.tta, timing, alone=in_flight.total == 1)
    result["from_stage"] = STAGES[start]
    result["canonical"] = await up.png()
    result["cached"] = cached
    log.info(
        "progression",
        extra={"from_stage_index": start, "steps": len(result["steps"]), "cached": result["cached"], "model_version": result["model"]["version"]},
    )
    _answered(response, timing, t0)
    return result


@router.post("/volume", response_model=VolumeResponse, response_model_exclude_unset=True, responses=RESULT_ERRORS)
async def volume(
    s: StateDep,
    response: Response,
    file: Annotated[UploadFile, File(description="one NIfTI-1 volume (.nii or .nii.gz), or a zip of one DICOM series (single-frame, uncompressed)")],
    start: StartDep,
    explain: Annotated[bool | None, Form(description="Grad-CAM of the representative slice")] = None,
    progression: Annotated[bool | None, Form(description="synthesize the progression from the representative slice (default true)")] = None,
    explain_q: Annotated[bool | None, Query(alias="explain")] = None,
    progression_q: Annotated[bool | None, Query(alias="progression")] = None,
) -> dict[str, Any]:
    """Stage a subject from a whole volume: reoriented to axial, the brain-bearing slices in the
    trained level range (at most ``volume.max_slices``), soft voting of their probabilities with
    the spread, and the progression of the representative slice it names."""
    timing = ServerTiming()
    t0 = time.perf_counter()
    want_chain = progression if progression is not None else (progression_q if progression_q is not None else True)
    with timing.phase("upload"):
        picked = await s.decoder.volume(await file.read())
    result = await pipeline.stage_volume(s, picked, start, flag(explain, explain_q), want_chain, timing)
    _answered(response, timing, t0)
    return result
