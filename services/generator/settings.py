"""Generator settings, read once from the environment (prefix ``GENERATOR_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from alzprog.constants import CHAMPION_ALIAS

from services.common.model_slot import limit_mlflow_client


class Settings(BaseSettings):
    """Every knob of the generator service; ``GENERATOR_PORT=9002`` etc. override."""

    model_config = SettingsConfigDict(env_prefix="GENERATOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8002, ge=1, le=65535)
    alias: str = CHAMPION_ALIAS
    poll_seconds: float = Field(30.0, gt=0, description="how often the aliases are checked for new champions")
    retry_seconds: float = Field(2.0, gt=0, description="retry period while a model is missing")
    backend: Literal["auto", "onnxruntime", "torch"] = Field(
        "auto", description="'auto' times both at warm-up and keeps the faster one per model"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="'auto' also times eager PyTorch under bfloat16 autocast where the CPU runs bf16 natively and "
        "the model's bf16 output is within tolerance of fp32 (alzprog.precision); 'fp32' never; 'bf16' uses it "
        "whenever it is native and within tolerance",
    )
    max_concurrency: int = Field(0, ge=0, description="parallel chains; 0 = the CPUs available")
    max_queue: int = Field(8, ge=0, description="requests allowed to wait; more are refused with 503")
    queue_timeout_s: float = Field(20.0, gt=0)
    intra_op_threads: int = Field(0, ge=0, description="threads per forward pass; 0 = adaptive: all CPUs for a lone request, CPUs / concurrency when requests overlap (ONNX Runtime; torch uses all CPUs)")
    providers: str = Field("auto", description="'auto' (CUDA when present, else CPU) or a comma list of ORT providers")
    max_body_bytes: int = Field(2 * 512 * 512, gt=0, description="internal body limit (canonical image + mask)")
    log_level: str = "INFO"
    mlflow_request_timeout_s: int = Field(5, gt=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, parsed once; a bad value fails the service at start."""
    s = Settings()
    limit_mlflow_client(s.mlflow_request_timeout_s)
    return s
