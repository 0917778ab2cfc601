"""Response bodies of the public API (its contract), as documented in OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelVersion(BaseModel):
    name: str
    version: str


class Explanation(BaseModel):
    overlay: str = Field(description="Grad-CAM heat map over the canonical slice, data:image/png;base64,...")
    saliency_in_brain_fraction: float | None = Field(description="share of the Grad-CAM mass inside the brain mask (null when the map is empty)")
    target_stage: str


class QualityWarning(BaseModel):
    code: str = Field(description="out_of_distribution | saliency_outside_brain")
    message: str = Field(description="what it means, for a person")


class QualityReport(BaseModel):
    """Notices about a slice that passed the input gate (a 200: the answer is given, with a caveat)."""

    warnings: list[QualityWarning] = Field(description="empty when nothing is odd")
    ood_score: float | None = Field(description=(
        "distance of the slice's pooled backbone features from the served model's training slices "
        "(normalised Mahalanobis under a PCA stored with the model; about 1 for a training slice); "
        "null when the model has no reference"))
    ood_threshold: float | None = Field(description="scores above this are out of distribution: the 99th percentile of the validation slices' scores")
    out_of_distribution: bool | None = Field(description="ood_score > ood_threshold (null without a reference)")


class TtaSpread(BaseModel):
    """Test-time augmentation: the probabilities over fixed views of the slice (mirror, small
    rotations, intensity gamma); the point answer stays the unaugmented slice's."""

    views: int
    mean: dict[str, float] = Field(description="mean probability per stage over the views")
    std: dict[str, float] = Field(description="standard deviation per stage over the views")
    p10: dict[str, float] = Field(description="10th percentile per stage")
    p90: dict[str, float] = Field(description="90th percentile per stage")
    agreement: float = Field(description="share of views whose most probable stage is the unaugmented slice's")


class PredictResponse(BaseModel):
    stage: str = Field(description="predicted stage (one of the four OASIS stage names)")
    stage_index: int = Field(ge=0, le=3)
    probabilities: dict[str, float] = Field(description="temperature-calibrated probability per stage; sums to 1")
    confidence: float = Field(description="probability of the predicted stage")
    model: ModelVersion
    cached: bool = Field(description="true when this answer came from the result cache")
    explain: Explanation | None = Field(None, description="Grad-CAM, when explain=true")
    canonical: str | None = Field(None, description="the canonical slice the models saw, data:image/png;base64,... (progression, or explain=true)")
    quality: QualityReport
    tta: TtaSpread | None = Field(None, description="spread over test-time augmentation views, when tta=true")


class ChangeFigures(BaseModel):
    """The numbers behind a change map, inside the input's brain mask (grey levels of 255)."""

    brain_pixels: int = Field(description="pixels of the input's brain mask (where change is read)")
    scale_grey_levels: float = Field(description="fixed colour scale: a change of this many grey levels or more is full colour")
    changed_threshold_grey_levels: float = Field(description="smallest smoothed change that is coloured and counted")
    smooth_sigma_px: float = Field(description="Gaussian sigma (pixels) the difference is smoothed by before it is thresholded")
    mean_change: float | None = Field(description="mean signed change (step minus input); negative = darker")
    mean_abs_change: float | None
    changed_fraction: float | None = Field(description="share of brain pixels changed by at least the threshold")
    tissue_loss_fraction: float | None = Field(description="share darker and still tissue (orange)")
    csf_gain_fraction: float | None = Field(description="share darker and now at CSF intensity (blue)")
    tissue_gain_fraction: float | None = Field(description="share brighter (green)")


class DeformationFigures(BaseModel):
    """Jacobian determinant of a deformation generator's sampling map, inside the brain."""

    scale_log_jacobian: float = Field(description="|log det J| drawn at full colour")
    changed_log_jacobian: float = Field(description="smallest |log det J| coloured and counted")
    mean_log_jacobian: float | None
    expansion_fraction: float | None = Field(description="share of brain pixels shown expanded (det J < 1)")
    contraction_fraction: float | None = Field(description="share shown contracted (det J > 1)")
    folding_fraction: float | None = Field(description="share with det J <= 0 (the field folds)")


class Morphometrics(BaseModel):
    """2-D measurements from the library's own segmentation (alzprog.morphometry), in pixels of
    the 256 x 256 canonical frame."""

    brain_area_px: int = Field(description="area of the brain mask")
    csf_area_px: int = Field(description="dark (CSF) pixels inside the eroded brain mask")
    ventricle_area_px: int = Field(description="CSF deep inside the brain")
    tissue_area_px: int = Field(description="brain minus CSF: the area atrophy shrinks")
    ventricle_to_brain: float
    csf_to_brain: float
    rim_csf_area_px: int | None = None
    rim_csf_to_rim: float | None = None
    rim_intensity: float | None = None
    rim_contrast: float | None = None
    deep_intensity: float | None = None
    brain_compactness: float | None = None
    frame_area_px: int | None = None
    pct_change: dict[str, float | None] | None = Field(
        None, description="% change of the areas and ratios from the input slice (steps only)")


class Step(BaseModel):
    stage: str
    stage_index: int
    image: str = Field(description="synthetic slice, marked SYNTHETIC, data:image/png;base64,...")
    synthetic: bool = True
    model: ModelVersion
    change_map: str = Field(description=(
        "the input in grey with the change to this step inside the brain: orange tissue loss, blue CSF gain, "
        "green tissue gain, full colour at scale_grey_levels; SYNTHETIC banner and legend burnt in; data:image/png;base64,..."))
    change: ChangeFigures
    morphometry: Morphometrics = Field(description="this step's measurements and their % change from the input")
    deformation_map: str | None = Field(None, description=(
        "where the generator predicts a deformation: its expansion (red) and contraction (cyan) over this step's input; "
        "null otherwise"))
    deformation: DeformationFigures | None = None


class ProgressionResponse(PredictResponse):
    from_stage: str = Field(description="stage the chain started from (the prediction unless from_stage was given)")
    steps: list[Step]
    generator_models: list[ModelVersion]
    input_morphometry: Morphometrics = Field(description="the measurements of the uploaded (canonical) slice")


class BackendCheck(BaseModel):
    ready: bool
    detail: Any = None


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, Any]


class VolumeSlice(BaseModel):
    index: int = Field(description="axial index in the volume reoriented to RAS+ (0 = most inferior)")
    stage: str = Field(description="this slice's most probable stage")
    probabilities: dict[str, float]
    brain_area_fraction: float = Field(description="brain area of this slice over the widest brain slice's")
    ood_score: float | None = Field(None, description="this slice's out-of-distribution score (see QualityReport)")


class VolumeInfo(BaseModel):
    shape: list[int] = Field(description="(slices, height, width) of the reoriented axial volume")
    source_orientation: str = Field(description="axis codes of the file before reorienting (e.g. LAS)")
    scanned_slices: int = Field(description="planes searched for brain")
    widest_slice: int = Field(description="index of the widest brain slice (the level landmark)")
    max_slices: int = Field(description="most slices ever classified per volume")
    trained_area_range: list[float] = Field(description="brain area / widest brain area of the trained levels: the slices kept")


class VolumeResponse(BaseModel):
    stage: str = Field(description="the subject's stage: soft vote (mean of the slice probabilities)")
    stage_index: int = Field(ge=0, le=3)
    probabilities: dict[str, float] = Field(description="mean calibrated probability per stage over the slices used")
    probability_spread: dict[str, float] = Field(description="standard deviation of each stage's probability over the slices")
    confidence: float
    model: ModelVersion
    slices: list[VolumeSlice] = Field(description="the slices used, inferior to superior")
    representative_slice: int = Field(description="index of the slice most confident in the voted stage: the one explained and progressed")
    volume: VolumeInfo
    canonical: str = Field(description="the representative slice as the models saw it, data:image/png;base64,...")
    explain: Explanation | None = Field(None, description="Grad-CAM of the representative slice, when explain=true")
    from_stage: str | None = Field(None, description="stage the chain started from (progression=true)")
    steps: list[Step] | None = Field(None, description="the synthetic road ahead from the representative slice (progression=true)")
    generator_models: list[ModelVersion] | None = None
    input_morphometry: Morphometrics | None = None
    quality: QualityReport = Field(description="OOD verdict of the median slice score, and the representative slice's Grad-CAM warning")
    cached: bool = Field(description="true when every part of this answer came from the result cache")


class ModelCardEntry(BaseModel):
    name: str
    alias: str
    available: bool
    detail: str | None = None
    version: str | None = None
    registered_at: str | None = Field(None, description="when this version was registered (ISO 8601, UTC)")
    run_id: str | None = None
    data_kind: str | None = Field(None, description="synthetic phantom, real (OASIS) or unknown, from what the run recorded")
    figures: dict[str, float | list[float] | str] | None = Field(None, description=(
        "held-out figures that evaluation recorded on this version: classifier test_subject_macro_f1 with "
        "test_subject_macro_f1_ci [low, high] (bootstrap over subjects), test_subjects, trained_on_subjects; "
        "generators test_change_correlation, test_csf_growth_ratio, test_pairs; evaluated_at (ISO 8601)"))
    tags: dict[str, str] | None = Field(None, description="the version's registry tags (training preset, validation macro-F1, ...)")
    params: dict[str, str] | None = Field(None, description="the training run's parameters")
    metrics: dict[str, float] | None = Field(None, description="the training run's metrics")


class ModelCard(BaseModel):
    registry: str
    alias: str
    models: list[ModelCardEntry]
    intended_use: str
