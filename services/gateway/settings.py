"""Gateway settings, read once from the environment (prefix ``GATEWAY_``; ``REDIS_URL`` too)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the gateway; e.g. ``GATEWAY_PORT=9000``, ``REDIS_URL=redis://...``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    classifier_url: str = "http://127.0.0.1:8001"
    generator_url: str = "http://127.0.0.1:8002"

    # Cache. An empty REDIS_URL disables it (the gateway then says so in /readyz).
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("GATEWAY_REDIS_URL", "REDIS_URL")
    )
    cache_prefix: str = Field("alzprog", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    cache_ttl_s: int = Field(3600, gt=0)
    redis_timeout_s: float = Field(0.25, gt=0, description="socket and connect timeout: bounds the latency Redis can add")
    redis_backoff_s: float = Field(5.0, gt=0, description="after a Redis failure, skip it for this long")
    max_cache_value_bytes: int = Field(4 * 1024 * 1024, gt=0)
    flight_wait_s: float = Field(
        3.0, ge=0, description="across replicas: how long a twin request waits for another replica's result before computing itself (0 = off)"
    )

    # Backend calls.
    versions_ttl_s: float = Field(1.0, ge=0, description="how long the backends' model versions are reused")
    classify_deadline_s: float = Field(15.0, gt=0, description="total deadline of a classifier call, retries included")
    progress_deadline_s: float = Field(60.0, gt=0, description="total deadline of a generator call, retries included")
    info_deadline_s: float = Field(1.0, gt=0)
    speculate_from_stage: int = Field(
        0, ge=-1, le=2,
        description="/progression without from_stage on an otherwise idle gateway: start the chain from this stage "
        "while the classifier works (0 = Non Demented: 266 of the 347 OASIS-1 subjects); a wrong guess is cached and the right "
        "chain follows. -1 = off",
    )
    retries: int = Field(2, ge=0, le=5, description="extra attempts after a connection failure")
    backoff_base_s: float = Field(0.05, ge=0)
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open a backend's circuit")
    breaker_reset_s: float = Field(5.0, gt=0, description="how long an open circuit fails fast before a probe")

    # Inputs and local work.
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="request body limit (413 above)")
    decode_concurrency: int = Field(0, ge=0, description="parallel decodes; 0 = the CPUs available")
    decode_queue: int = Field(32, ge=0)

    # Admission before the body is read (services/gateway/admission.py): excess gets 503 at once.
    max_in_flight: int = Field(
        0, ge=0, description="/predict + /progression requests in progress at once; 0 = CPUs + 16 (the classifier's default admission)"
    )
    max_in_flight_progression: int = Field(
        0, ge=0, description="of which /progression; 0 = CPUs + 8 (the generator's default admission)"
    )

    # Access control: off by default (local demo). Comma list of keys, optionally 'name:key'.
    api_keys: str = ""
    rate_limit_per_minute: float = Field(120.0, gt=0, description="per API key")
    rate_limit_burst: int = Field(20, ge=1)

    log_level: str = "INFO"

    @field_validator("classifier_url", "generator_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("backend URLs must start with http:// or https://")
        return v.rstrip("/")

    def in_flight_caps(self, cpus: int) -> tuple[int, int]:
        """``(max in flight, max /progression in flight)`` with the 0 = derived defaults resolved."""
        total = self.max_in_flight or cpus + 16
        progression = self.max_in_flight_progression or cpus + 8
        return total, min(progression, total)

    def parsed_api_keys(self) -> dict[str, str]:
        """``{name: key}``; names (never keys) appear in logs and metrics."""
        keys: dict[str, str] = {}
        for i, entry in enumerate(e.strip() for e in self.api_keys.split(",")):
            if not entry:
                continue
            name, sep, key = entry.partition(":")
            if not sep:
                name, key = f"key{i + 1}", entry
            if len(key) < 16:
                raise ValueError("API keys must be at least 16 characters")
            keys[name] = key
        return keys


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, parsed once; a bad value fails the gateway at start."""
    s = Settings()
    s.parsed_api_keys()  # validate now, not at the first request
    return s
