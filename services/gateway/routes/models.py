"""``/v1/model-card``: what the served models are, from the MLflow registry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from services.common.errors import ERROR_RESPONSES
from services.gateway.deps import StateDep
from services.gateway.schemas import ModelCard

router = APIRouter(tags=["models"])


@router.get("/v1/model-card", response_model=ModelCard, response_model_exclude_unset=True, responses={503: ERROR_RESPONSES[503]})
async def model_card_route(s: StateDep, response: Response) -> dict[str, Any]:
    """What the served models are: per model its champion version and date, what it was
    trained on and its recorded figures, read from the MLflow registry (kept for a minute)."""
    card = await s.model_cards.card()
    response.headers["Cache-Control"] = "no-store"
    return card
