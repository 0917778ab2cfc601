"""Response bodies of the public API (the contract of issue #5), as documented in OpenAPI."""

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


class PredictResponse(BaseModel):
    stage: str = Field(description="predicted stage (one of the four OASIS stage names)")
    stage_index: int = Field(ge=0, le=3)
    probabilities: dict[str, float] = Field(description="temperature-calibrated probability per stage; sums to 1")
    confidence: float = Field(description="probability of the predicted stage")
    model: ModelVersion
    cached: bool = Field(description="true when this answer came from the result cache")
    explain: Explanation | None = Field(None, description="Grad-CAM, when explain=true")
    canonical: str | None = Field(None, description="the canonical slice the models saw, data:image/png;base64,... (progression, or explain=true)")


class Step(BaseModel):
    stage: str
    stage_index: int
    image: str = Field(description="synthetic slice, marked SYNTHETIC, data:image/png;base64,...")
    synthetic: bool = True
    model: ModelVersion


class ProgressionResponse(PredictResponse):
    from_stage: str = Field(description="stage the chain started from (the prediction unless from_stage was given)")
    steps: list[Step]
    generator_models: list[ModelVersion]


class BackendCheck(BaseModel):
    ready: bool
    detail: Any = None


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, Any]
