"""Serve a trained cascade over the whole item catalogue: FAISS retrieval, cached pre-ranking, ranking.

* :class:`Catalogue` — the item table (from a dataset or a Parquet file);
* :class:`ItemIndex` / :class:`IndexOptions` — FAISS exact, IVF or HNSW inner-product search;
* :class:`Recommender` — ``Recommender.from_run(run).recommend(requests, k)``;
* :class:`Requests` / :func:`read_requests` — validated serving requests;
* :func:`load_recommender` — a run folder or an export; :func:`export_recommender` — ``torch.export`` programs;
* :mod:`.evaluation` — full-catalogue Recall@k / NDCG@k; :mod:`.app` — the HTTP service (FastAPI + uvicorn).

FAISS, FastAPI and uvicorn are optional: ``pip install 'cascade-ranking[serving]'``.
"""

from __future__ import annotations

from .catalogue import Catalogue, CatalogueError
from .export import export_recommender, load_recommender
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
    "export_recommender",
    "load_recommender",
    "read_requests",
]
