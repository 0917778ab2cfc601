"""Classifier settings, read once from the environment (prefix ``CLASSIFIER_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME

from services.common.model_slot import limit_mlflow_client


class Settings(BaseSettings):
    """Every knob of the classifier service; ``CLASSIFIER_PORT=9001`` etc. override."""

    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    model_name: str = CLASSIFIER_MODEL_NAME
    alias: str = CHAMPION_ALIAS
    poll_seconds: float = Field(30.0, gt=0, description="how often the alias is checked for a new champion")
    retry_seconds: float = Field(2.0, gt=0, description="retry period while no model is loaded")
    max_concurrency: int = Field(0, ge=0, description="parallel inferences; 0 = the CPUs available")
    max_queue: int = Field(16, ge=0, description="requests allowed to wait; more are refused with 503")
    queue_timeout_s: float = Field(10.0, gt=0)
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per inference; 0 = adaptive: all CPUs for a lone request, CPUs / concurrency when requests overlap")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="'auto' serves the model's int8 graph where its recorded admission check passed (alzprog serving "
        "quantize; CPU provider only), else fp32; 'fp32' never int8; 'int8' refuses a version without a passing check "
        "(not ready, /readyz says why) rather than serve fp32 unasked",
    )
    providers: str = Field("auto", description="'auto' (CUDA when present, else CPU) or a comma list of ORT providers")
    batch_max_size: int = Field(1, ge=1, le=256, description="dynamic batching: 1 = off; >1 gathers concurrent requests")
    batch_max_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long a batch waits for company")
    explain_enabled: bool = True
    max_body_bytes: int = Field(2 * 512 * 512, gt=0, description="internal body limit (canonical image + mask)")
    log_level: str = "INFO"
    mlflow_request_timeout_s: int = Field(5, gt=0, description="MLflow HTTP timeout while polling")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, parsed once; a bad value fails the service at start."""
    s = Settings()
    limit_mlflow_client(s.mlflow_request_timeout_s)
    return s
