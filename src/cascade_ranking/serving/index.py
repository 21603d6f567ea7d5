"""Maximum-inner-product search over the retrieval stage's item vectors, with FAISS (Johnson et al., "Billion-scale
similarity search with GPUs", IEEE TBD 2019; https://github.com/facebookresearch/faiss).

Kinds (``IndexOptions.kind``):

* ``"exact"`` (default): ``IndexFlatIP``, brute-force inner products — the exact top ``k``;
* ``"ivf"``: ``IndexIVFFlat``: k-means into ``nlist`` cells (default ``4 sqrt(M)``), a query scans the
  ``nprobe`` cells nearest to it — approximate, for large catalogues;
* ``"hnsw"``: ``IndexHNSWFlat`` (``m`` links per node, search breadth ``ef_search``, raised to at least ``k``)
  — approximate, graph-based.

The approximate kinds search in Euclidean space after the inner-product-to-Euclidean transform of Bachrach et
al. ("Speeding up the Xbox recommender system using a Euclidean transformation for inner-product spaces",
RecSys 2014, Sec. 4): an item ``x`` becomes ``[x, sqrt(R^2 - |x|^2)]`` with ``R`` the largest item norm and a
query ``q`` becomes ``[q, 0]``, so that ``|q' - x'|^2 = |q|^2 + R^2 - 2 <q, x>``: the nearest items are exactly
the items of largest inner product, and partitions and graphs built for Euclidean distance stay accurate when
item norms differ (inner-product IVF/HNSW lose recall there). Returned scores are the inner products.

FAISS is an optional dependency (``pip install 'cascade-ranking[serving]'``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

__all__ = ["IndexOptions", "ItemIndex", "import_faiss"]

log = logging.getLogger(__name__)

IndexKind = Literal["exact", "ivf", "hnsw"]


def import_faiss() -> Any:
    """The ``faiss`` module, or ImportError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImportError("serving needs FAISS: pip install 'cascade-ranking[serving]' (or faiss-cpu)") from None
    return faiss


@dataclass(frozen=True)
class IndexOptions:
    """How to index the item vectors (see the module docstring).

    Attributes:
        kind: ``"exact"``, ``"ivf"`` or ``"hnsw"``.
        nlist: IVF cells (``None``: ``4 sqrt(M)``, at most ``M / 39`` so that k-means has 39 points per cell).
        nprobe: IVF cells scanned per query.
        m: HNSW links per node.
        ef_construction, ef_search: HNSW build and search breadth (search breadth is at least ``k``).
        seed: k-means seed (IVF).
    """

    kind: IndexKind = "exact"
    nlist: int | None = None
    nprobe: int = 16
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "ivf", "hnsw"):
            raise ValueError(f"index kind {self.kind!r}: expected exact, ivf or hnsw")
        for name in ("nprobe", "m", "ef_construction", "ef_search"):
            if getattr(self, name) <= 0:
                raise ValueError(f"index option {name} must be positive, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist <= 0:
            raise ValueError(f"index option nlist must be positive, got {self.nlist}")


class ItemIndex:
    """A FAISS inner-product index over ``[M, D]`` item vectors; rows are catalogue rows.

    Args:
        vectors: ``[M, D]`` float item vectors (copied as float32).
        options: the index kind and its parameters.

    Raises:
        ValueError: ``vectors`` is not a non-empty finite ``[M, D]`` array.
        ImportError: FAISS is not installed.
    """

    def __init__(self, vectors: np.ndarray, options: IndexOptions = IndexOptions()) -> None:
        faiss = import_faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or not x.shape[0] or not x.shape[1]:
            raise ValueError(f"item vectors must be a non-empty [M, D] array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("item vectors hold NaN or inf (check the retrieval model)")
        self.options = options
        self.size, self.dim = x.shape
        self._index = self._build(faiss, x, options)

    def _build(self, faiss: Any, x: np.ndarray, o: IndexOptions) -> Any:
        m, d = x.shape
        if o.kind == "exact":
            index = faiss.IndexFlatIP(d)
            index.add(x)
            return index
        norms = (x.astype(np.float64) ** 2).sum(1)
        self._radius2 = float(norms.max())
        x = np.hstack([x, np.sqrt(self._radius2 - norms)[:, None].astype(np.float32)])  # Bachrach et al.
        if o.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d + 1, o.m)
            index.hnsw.efConstruction = o.ef_construction
        else:
            nlist = o.nlist or max(1, min(int(4 * math.sqrt(m)), m // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d + 1), d + 1, nlist)
            index.cp.seed = o.seed
            index.train(x)
            index.nprobe = min(o.nprobe, nlist)
        index.add(x)
        log.info("FAISS %s index over %d items of dim %d", o.kind, m, d)
        return index

    def tune(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search-time parameters (IVF ``nprobe``, HNSW ``ef_search``) without rebuilding.

        Raises:
            ValueError: a non-positive value.
        """
        o = self.options
        self.options = replace(o, nprobe=nprobe or o.nprobe, ef_search=ef_search or o.ef_search)
        if self.options.kind == "ivf":
            self._index.nprobe = min(self.options.nprobe, self._index.nlist)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` items by inner product for each query.

        Args:
            queries: ``[B, D]`` float user vectors.
            k: items per query, ``1 <= k``; at most ``M`` are returned.

        Returns:
            ``(scores [B, k'] float32, rows [B, k'] int64)`` with ``k' = min(k, M)``, best first; a row of
            ``-1`` (score ``-inf``) where an approximate index found fewer than ``k'`` items.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got {q.shape}")
        k = min(int(k), self.size)
        if self.options.kind == "hnsw":
            self._index.hnsw.efSearch = max(self.options.ef_search, k)
        if self.options.kind == "exact":
            scores, rows = self._index.search(q, k)
        else:  # Euclidean search on the transformed vectors; back to inner products
            dist, rows = self._index.search(np.hstack([q, np.zeros((len(q), 1), np.float32)]), k)
            scores = ((q.astype(np.float64) ** 2).sum(1, keepdims=True) + self._radius2 - dist) / 2
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows.astype(np.int64)
