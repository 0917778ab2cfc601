"""The routes' dependencies as ``Annotated`` aliases: a route asks for ``s: StateDep`` and gets
the running :class:`~services.gateway.state.GatewayState`; a test can swap one of them with
``app.dependency_overrides[get_state] = ...``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.admission import InFlight
from services.gateway.settings import Settings
from services.gateway.state import GatewayState


def get_state(request: Request) -> GatewayState:
    """The state the lifespan created (clients, cache, decoder)."""
    return request.app.state.svc


def get_app_settings(request: Request) -> Settings:
    """The settings this app was built with (tests pass their own to ``create_app``)."""
    return request.app.state.settings


def get_in_flight(request: Request) -> InFlight:
    """The in-flight counters the admission middleware keeps."""
    return request.app.state.in_flight


StateDep = Annotated[GatewayState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
InFlightDep = Annotated[InFlight, Depends(get_in_flight)]
