from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api.openapi import refusals
from service.api.schemas import ModelList, body
from service.runtime import Runtime


@get("/models", summary="The models a job can run on, with their prices and limits",
     tags=["models"], responses=refusals())
async def list_models(rt: NamedDependency[Runtime]) -> ModelList:
    return body(ModelList, {"items": rt.models.public_views()})
