"""Serve a trained cascade over the whole item catalogue: FAISS retrieval, cached pre-ranking, ranking.

* :class:`Catalogue` — the item table (from a dataset or a Parquet file);
* :class:`ItemIndex` / :class:`IndexOptions` — FAISS exact, IVF or HNSW inner-product search;
* :class:`Recommender` — ``Recommender.from_run(run).recommend(requests, k)``;
* :class:`Requests` / :func:`read_requests` — validated serving requests;
* :mod:`.app` — the HTTP service (FastAPI + uvicorn); :mod:`.export` — portable stage programs.

FAISS, FastAPI and uvicorn are optional: ``pip install 'cascade-ranking[serving]'``.
"""

from __future__ import annotations

from .catalogue import Catalogue, CatalogueError
from .index import IndexOptions, ItemIndex
from .recommender import Recommendations, Recommender, default_keep
from .requests import RequestError, Requests, read_requests

__all__ = [
    "Catalogue",
    "CatalogueError",
    "IndexOptions",
    "ItemIndex",
    "Recommendations",
    "Recommender",
    "RequestError",
    "Requests",
    "default_keep",
    "read_requests",
]
