"""The HTTP service: ``POST /recommend``, ``GET /health``, ``GET /metadata`` (FastAPI on uvicorn).

The recommender is loaded once, before the first request. ``/recommend`` takes one request as JSON::

    {"user": {"user_id": 42, "age": 3, ...}, "context": {"weekday": 2, "hour": 19},
     "history": {"item_id": [50, 181], "genre": [8, 1]}, "exclude": [100], "k": 10, "exclude_history": true}

(``user`` and ``context`` name every user / context field of the model's schema, ``history`` is optional,
most recent first; ``GET /metadata`` lists the fields and their vocabularies) and answers::

    {"request_id": 0, "items": [{"item_id": 258, "scores": {"retrieval": 2.1, "prerank": 5.7}}, ...],
     "latency_ms": {"retrieval": 0.4, "prerank": 1.9}}

Errors are answered, never fatal: malformed JSON -> 400; a body that does not validate (missing or unknown
field, wrong type, an id outside its vocabulary such as an unknown user, ``k <= 0``, ``k`` larger than the
catalogue or the last stage's keep size) -> 422; each with ``{"detail": "<one line naming the field>"}``.
An unexpected failure inside the model -> 500 with the same shape, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from .recommender import Recommender
from .requests import Requests

__all__ = ["RecommendBody", "create_app", "serve"]

log = logging.getLogger(__name__)


class RecommendBody(BaseModel):
    """The JSON body of ``POST /recommend`` (see the module docstring).

    Attributes:
        user, context: field name -> id, every user and context field of the schema.
        history: history field name -> ids, most recent first (at most the schema's history length).
        exclude: item key ids never to recommend.
        k: items to return.
        exclude_history: also exclude the history's items.
        request_id: echoed in the answer.
    """

    model_config = ConfigDict(extra="forbid")

    user: dict[str, StrictInt]
    context: dict[str, StrictInt] = Field(default_factory=dict)
    history: dict[str, list[StrictInt]] = Field(default_factory=dict)
    exclude: list[StrictInt] = Field(default_factory=list)
    k: StrictInt = 10
    exclude_history: StrictBool = True
    request_id: StrictInt = 0

    def columns(self) -> dict[str, list]:
        """The body as request columns of one request (:meth:`.Requests.from_columns`)."""
        out: dict[str, list] = {f"user.{n}": [v] for n, v in self.user.items()}
        out.update({f"context.{n}": [v] for n, v in self.context.items()})
        out.update({f"history.{n}": [v] for n, v in self.history.items()})
        out["exclude"] = [self.exclude]
        out["request_id"] = [self.request_id]
        return out


def _problems(errors: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e['msg']}" for e in errors
    )


def create_app(recommender: Recommender) -> Any:
    """A FastAPI application serving ``recommender`` (see the module docstring).

    Raises:
        ImportError: FastAPI is not installed (``pip install 'cascade-ranking[serving]'``).
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
    except ImportError:
        raise ImportError("the HTTP service needs FastAPI: pip install 'cascade-ranking[serving]'") from None

    app = FastAPI(title="cascade-ranking", description="A trained cascade over the whole item catalogue.")
    schema, key = recommender.schema, recommender.catalogue.key

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"detail": f"malformed JSON: {_problems(errors)}"}, status_code=400)
        return JSONResponse({"detail": _problems(errors)}, status_code=422)

    @app.exception_handler(ValueError)
    async def _bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while answering %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict:
        return recommender.metadata()

    @app.post("/recommend")
    def recommend(body: RecommendBody) -> dict:
        requests = Requests.from_columns(schema, body.columns(), where="request body", strict=True)
        out = recommender.recommend(requests, body.k, exclude_history=body.exclude_history)
        valid = out.valid[0]
        items = [
            {key: int(out.item[0, r]), "scores": {n: float(s[0, r]) for n, s in out.scores.items()}}
            for r in range(len(valid))
            if valid[r]
        ]
        return {"request_id": body.request_id, "items": items, "latency_ms": out.latency_ms}

    return app


def serve(recommender: Recommender, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the HTTP service with uvicorn until interrupted (one process; the model is loaded once).

    Raises:
        ImportError: uvicorn or FastAPI is not installed.
    """
    try:
        import uvicorn
    except ImportError:
        raise ImportError("the HTTP service needs uvicorn: pip install 'cascade-ranking[serving]'") from None
    uvicorn.run(create_app(recommender), host=host, port=port, log_level=log_level)
