from __future__ import annotations

from fastapi import APIRouter, HTTPException

from api.deps import ServedDep, SettingsDep
from api.schemas import ItemScore, ScoreRequest, ScoreResponse

router = APIRouter(prefix="/v1", tags=["scoring"])


@router.post("/score", response_model=ScoreResponse)
def score(body: ScoreRequest, served: ServedDep, settings: SettingsDep) -> ScoreResponse:
    """Probability of a conversion for each candidate, from one model version, not logged."""
    if len(body.items) > settings.max_candidates:
        raise HTTPException(422, detail=f"at most {settings.max_candidates} candidates")
    return ScoreResponse(
        model=served.model_name,
        model_version=served.version,
        scores=[
            ItemScore(
                item_id=c.item_id, probability=served.score(body.context, c.item_id, c.features)
            )
            for c in body.items
        ],
    )
