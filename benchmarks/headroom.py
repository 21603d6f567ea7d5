"""Headroom of the MovieLens-100K full-stage cascade dataset: joint recall of fixed scorers on the test weeks.

Usage::

    python benchmarks/headroom.py [--src PATH] [--stages 2] [--seed 0] [--data DIR] [--no-train]

Builds the dataset (from ``--src``, else the cached GroupLens download; or reads a built one with
``--data``) and prints the joint recall on the test partitions of one fixed scorer used at every stage:
``|top keep[-1] of N by score ∩ impressions| / gt_num`` with score ties broken at random. Scorers, all
fitted on the training partitions only:

* random: uniform scores;
* popularity: an item's number of impressions (top funnel group) in the training partitions;
* co-occurrence: ``sum_{h in history} C[h, i]``, ``C = X^T X`` with ``X`` the user x item impressions of the
  training partitions;
* logistic regression on (log 1 + popularity, log 1 + co-occurrence), impressions vs. negatives;
* item prior: an item's smoothed impression rate among its training candidates (non-personalised);
* two-tower (trained): a small embedding model (every user, context, history and item feature) trained
  with pointwise BCE (impressions vs. negatives), Adam lr 0.01, the dataset's batch size and passes.

A useful benchmark keeps random and popularity far from 1 (<= 0.75) and leaves a trained model clearly
above both. The printed table is Markdown.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cascade_ranking.data.schema import DatasetSchema
from cascade_ranking.data.store import read_partition

logger = logging.getLogger("headroom")


def load(directory: Path, schema: DatasetSchema, role: str) -> dict[str, np.ndarray]:
    """Concatenate every partition of ``role`` into one dict of arrays."""
    parts = [read_partition(directory, schema, p) for p in schema.partitions_with_role(role)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def joint_recall(scores: np.ndarray, mask: np.ndarray, positive: np.ndarray, keep: int, rng) -> float:
    """Mean over requests of |top ``keep`` by score (ties at random) ∩ positives| / |positives|."""
    scores = np.where(mask, scores, -np.inf)
    order = np.lexsort((rng.random(scores.shape), scores), axis=1)[:, ::-1][:, :keep]
    hits = np.take_along_axis(positive, order, axis=1).sum(axis=1)
    return float(np.mean(hits / positive.sum(axis=1)))


class Scorers:
    """The reference scorers, fitted on the training arrays."""

    def __init__(self, schema: DatasetSchema, train: dict[str, np.ndarray]) -> None:
        self.top = len(schema.funnel_positions) - 1
        self.num_items = schema.feature("item_id").vocab_size
        num_users = schema.feature("user_id").vocab_size
        imp = (train["stage"] == self.top) & train["mask"]
        items = train["item.item_id"][imp]
        users = np.repeat(train["user.user_id"], imp.sum(axis=1))
        self.popularity = np.bincount(items, minlength=self.num_items).astype(np.float64)
        x = sp.csr_matrix((np.ones(len(items), np.float32), (users, items)), shape=(num_users, self.num_items))
        self.cooc = (x.T @ x).toarray()
        cand = train["item.item_id"][train["mask"]]
        appear = np.bincount(cand, minlength=self.num_items)
        # smoothed towards gt_num / N, the share of impressions among the candidates
        self.item_prior = (self.popularity + 1.0) / (appear + schema.num_candidates / schema.gt_num)
        self.lr_weights = self._fit_lr(train, imp)

    def cooccurrence(self, a: dict[str, np.ndarray]) -> np.ndarray:
        hist = a["history.item_id"]
        rows = np.repeat(np.arange(len(hist)), hist.shape[1])
        flat = hist.reshape(-1)
        ok = flat > 0
        h = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], flat[ok])), shape=(len(hist), self.num_items))
        return np.take_along_axis(np.asarray(h @ self.cooc), a["item.item_id"], axis=1)

    def _lr_features(self, a: dict[str, np.ndarray]) -> np.ndarray:
        f = [np.log1p(self.popularity[a["item.item_id"]]), np.log1p(self.cooccurrence(a))]
        return np.stack(f + [np.ones_like(f[0])], axis=-1)

    def _fit_lr(self, a: dict[str, np.ndarray], y: np.ndarray, iters: int = 25) -> np.ndarray:
        """Logistic regression by Newton's method (3 weights, standardised inside)."""
        x = self._lr_features(a)[a["mask"]]
        t = y[a["mask"]].astype(np.float64)
        w = np.zeros(x.shape[1])
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-(x @ w)))
            grad = x.T @ (p - t)
            hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(x.shape[1])
            w -= np.linalg.solve(hess, grad)
        return w

    def logistic(self, a: dict[str, np.ndarray]) -> np.ndarray:
        return self._lr_features(a) @ self.lr_weights


def train_two_tower(schema: DatasetSchema, train: dict, test: dict, *, seed: int) -> np.ndarray:
    """Train a small two-tower model with pointwise BCE and return its ``[B, N]`` test scores."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim, hidden, out = 8, 64, 32

    def cols(a, idx):
        t = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in a.items() if "." in k}
        groups = {"user": {}, "context": {}, "history": {}, "item": {}}
        for k, v in t.items():
            role, name = k.split(".", 1)
            groups[role][name] = v
        return groups

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, dim) for f in schema.features})
            n_user = (
                len(schema.fields_with_role("user")) + len(schema.fields_with_role("context")) + len(schema.history)
            )
            n_item = len(schema.fields_with_role("item"))
            self.user = nn.Sequential(nn.Linear(n_user * dim, hidden), nn.ReLU(), nn.Linear(hidden, out))
            self.item = nn.Sequential(nn.Linear(n_item * dim, hidden), nn.ReLU(), nn.Linear(hidden, out))
            self.bias = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, 1) for f in schema.fields_with_role("item")})

        def forward(self, g):
            parts = [self.emb[k](v) for k, v in {**g["user"], **g["context"]}.items()]
            valid = (g["history"]["item_id"] > 0).float().unsqueeze(-1)
            for h in schema.history:
                e = self.emb[h.item_field](g["history"][h.name])
                parts.append((e * valid).sum(1) / valid.sum(1).clamp(min=1.0))
            u = self.user(torch.cat(parts, dim=-1))
            i = self.item(torch.cat([self.emb[k](v) for k, v in g["item"].items()], dim=-1))
            bias = sum(self.bias[k](v).squeeze(-1) for k, v in g["item"].items())
            return (u.unsqueeze(1) * i).sum(-1) + bias

    top = len(schema.funnel_positions) - 1
    model = TwoTower()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    target = torch.from_numpy(((train["stage"] == top) & train["mask"]).astype(np.float32))
    mask = torch.from_numpy(train["mask"])
    n = len(train["request_id"])
    bs = schema.train_defaults.batch_size
    for _ in range(schema.train_defaults.passes):
        perm = rng.permutation(n)
        for lo in range(0, n, bs):
            idx = perm[lo : lo + bs]
            logits = model(cols(train, idx))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target[idx], reduction="none")
            loss = loss[mask[idx]].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return model(cols(test, np.arange(len(test["request_id"])))).numpy()


def headroom(directory: Path, *, seed: int = 0, train_model: bool = True) -> list[tuple[str, float]]:
    """Joint recall on the test partitions of every reference scorer: ``[(name, joint recall), ...]``."""
    schema = DatasetSchema.load(directory)
    train = load(directory, schema, "train")
    test = load(directory, schema, "test")
    top = len(schema.funnel_positions) - 1
    keep = schema.keep[-1]
    positive = (test["stage"] == top) & test["mask"]
    fitted = Scorers(schema, train)
    rng = np.random.default_rng(seed)
    rows = [
        ("random", rng.random(test["mask"].shape)),
        ("popularity", fitted.popularity[test["item.item_id"]]),
        ("co-occurrence with the history", fitted.cooccurrence(test)),
        ("logistic regression (popularity, co-occurrence)", fitted.logistic(test)),
        ("item prior (impression rate among candidates)", fitted.item_prior[test["item.item_id"]]),
    ]
    if train_model:
        rows.append(("two-tower, BCE (trained)", train_two_tower(schema, train, test, seed=seed)))
    return [(name, joint_recall(s, test["mask"], positive, keep, rng)) for name, s in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, help="local MovieLens-100K copy (default: the cached download)")
    parser.add_argument("--data", type=Path, help="an already built dataset folder (skips building)")
    parser.add_argument("--stages", type=int, default=2, choices=(2, 3))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="skip the trained two-tower row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.data
        if directory is None:
            from cascade_ranking.datasets.movielens import prepare_movielens

            directory = Path(tmp) / "dataset"
            t0 = time.perf_counter()
            prepare_movielens(directory, src=args.src, stages=args.stages, seed=args.seed, progress=True)
            logger.info("built the dataset in %.1f s", time.perf_counter() - t0)
        schema = DatasetSchema.load(directory)
        n_test = sum(p.num_requests for p in schema.partitions_with_role("test"))
        results = headroom(directory, seed=args.seed, train_model=not args.no_train)
    print(f"{schema.name}: joint recall on the test weeks ({n_test} requests), top {schema.keep[-1]} of "
          f"{schema.num_candidates}, gt_num {schema.gt_num}\n")  # fmt: skip
    print("| scorer | joint recall |\n|---|---|")
    for name, value in results:
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
