"""Shared fixtures: the MovieLens-100K test copy (RecBole atomic files) and small synthetic batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: Where tests find MovieLens-100K: $CASCADE_RANKING_MOVIELENS_SRC, else ../shared/data/ml-100k beside the repo.
ML100K_SRC = Path(
    os.environ.get("CASCADE_RANKING_MOVIELENS_SRC", Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k")
)


@pytest.fixture(scope="session")
def ml100k_src() -> Path:
    """Path to a local MovieLens-100K copy; skips the test with the reason when absent."""
    if not ML100K_SRC.is_dir():
        pytest.skip(
            f"MovieLens-100K test copy not found at {ML100K_SRC} "
            "(set CASCADE_RANKING_MOVIELENS_SRC to a folder with ml-100k.inter/.user/.item or u.data/u.user/u.item)"
        )
    return ML100K_SRC


@pytest.fixture(scope="session")
def ml100k_dataset(ml100k_src, tmp_path_factory) -> Path:
    """The two-stage MovieLens-100K cascade dataset, built once per test session."""
    from cascade_ranking.datasets.movielens import prepare_movielens

    out = tmp_path_factory.mktemp("ml100k") / "movielens-100k-2stage"
    prepare_movielens(out, src=ml100k_src, stages=2, seed=0)
    return out


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def make_tiny_dataset(
    directory: Path,
    *,
    num_partitions: int = 3,
    requests_per_partition: int = 50,
    num_candidates: int = 12,
    history_length: int = 5,
    keep: tuple[int, ...] = (8, 5),
    gt_num: int = 3,
    seed: int = 0,
    padded: bool = True,
):
    """A small random dataset in the store format (last partition = test, the one before = valid).

    Candidates are laid out grouped by funnel position, best group first (as RecFlow ships them), labels
    decrease with the group; with ``padded`` some requests have masked trailing slots.
    """
    import numpy as np

    from cascade_ranking.data.schema import (
        CategoricalField,
        DatasetSchema,
        HistoryField,
        Partition,
        TrainDefaults,
    )
    from cascade_ranking.data.store import write_partition, write_schema

    rng = np.random.default_rng(seed)
    groups = len(keep) + 2
    roles = ["train"] * (num_partitions - 2) + ["valid", "test"]
    schema = DatasetSchema(
        name="tiny",
        features=[
            CategoricalField(name="user_id", role="user", vocab_size=20),
            CategoricalField(name="hour", role="context", vocab_size=25),
            CategoricalField(name="item_id", role="item", vocab_size=40),
            CategoricalField(name="genre", role="item", vocab_size=6),
        ],
        history=[
            HistoryField(name="item_id", item_field="item_id"),
            HistoryField(name="genre", item_field="genre"),
        ],
        history_length=history_length,
        num_candidates=num_candidates,
        funnel_positions=[f"group_{g}" for g in range(groups)],
        keep=list(keep),
        gt_num=gt_num,
        partitions=[
            Partition(name=f"part-{i:02d}", role=roles[i], num_requests=requests_per_partition)
            for i in range(num_partitions)
        ],
        train_defaults=TrainDefaults(batch_size=16, passes=1),
    )
    write_schema(directory, schema)
    n, b, L = num_candidates, requests_per_partition, history_length
    position = np.repeat(np.arange(groups)[::-1], int(np.ceil(n / groups)))[:n]
    for i, part in enumerate(schema.partitions):
        item_id = rng.integers(1, 40, size=(b, n))
        mask = np.ones((b, n), dtype=bool)
        if padded:
            n_valid = rng.integers(gt_num + 1, n + 1, size=b)
            mask = np.arange(n)[None, :] < n_valid[:, None]
        label = np.where(mask, position[None, :] + rng.random((b, n)) * 0.5, 0).astype(np.float32)
        hist = rng.integers(0, 40, size=(b, L))
        arrays = {
            "request_id": np.arange(b) + i * b,
            "user.user_id": rng.integers(1, 20, size=b),
            "context.hour": rng.integers(1, 25, size=b),
            "history.item_id": hist,
            "history.genre": np.where(hist > 0, hist % 5 + 1, 0),
            "item.item_id": np.where(mask, item_id, 0),
            "item.genre": np.where(mask, item_id % 5 + 1, 0),
            "mask": mask,
            "stage": np.where(mask, position[None, :], 0),
            "label": label,
        }
        write_partition(directory, schema, part, arrays)
    return schema


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    out = tmp_path / "tiny"
    make_tiny_dataset(out)
    return out


@pytest.fixture
def nan_at_step_3(monkeypatch):
    """Make the loss NaN on the third call (a corrupt batch), finite otherwise."""
    from cascade_ranking import losses

    real_build = losses.build

    def build(name, **kw):
        loss_fn = real_build(name, **kw)
        calls = {"n": 0}
        original = loss_fn.forward

        def forward(*args, **kwargs):
            calls["n"] += 1
            out = original(*args, **kwargs)
            if calls["n"] == 3:
                out.loss = out.loss * torch.tensor(float("nan"))
            return out

        loss_fn.forward = forward
        return loss_fn

    monkeypatch.setattr("cascade_ranking.training.loop.losses.build", build)


def random_batch(
    schema,
    batch_size: int = 5,
    seed: int = 0,
    *,
    min_valid: int = 1,
    min_history: int = 1,
    label: bool = True,
):
    """A random :class:`~cascade_ranking.types.RequestBatch` for ``schema``: ids in ``[1, vocab)``, padded slots 0.

    Request 0 has no history and request 1 a single valid candidate; the others hold ``min_history``.. L history
    items and ``min_valid``.. N valid candidates. Labels are uniform in [0, 1) at valid slots (zeros with
    ``label=False``); funnel positions are 0.
    """
    from cascade_ranking.types import RequestBatch

    g = torch.Generator().manual_seed(seed)
    length, n = schema.history_length, schema.num_candidates

    def ids(field: str, shape) -> torch.Tensor:
        return torch.randint(1, schema.feature(field).vocab_size, shape, generator=g)

    hist_len = torch.randint(min_history, length + 1, (batch_size,), generator=g) if length else torch.zeros(batch_size)
    hist_len[0] = 0
    history_mask = torch.arange(length)[None] < hist_len[:, None]
    n_valid = torch.randint(min_valid, n + 1, (batch_size,), generator=g)
    n_valid[1] = 1
    mask = torch.arange(n)[None] < n_valid[:, None]
    return RequestBatch(
        user={f.name: ids(f.name, (batch_size,)) for f in schema.fields_with_role("user")},
        context={f.name: ids(f.name, (batch_size,)) for f in schema.fields_with_role("context")},
        history={h.name: ids(h.item_field, (batch_size, length)) * history_mask for h in schema.history},
        history_mask=history_mask,
        item={f.name: ids(f.name, (batch_size, n)) * mask for f in schema.fields_with_role("item")},
        mask=mask,
        stage=torch.zeros(batch_size, n, dtype=torch.long),
        label=torch.rand(batch_size, n, generator=g) * mask if label else torch.zeros(batch_size, n),
        request_id=torch.arange(batch_size),
    )
