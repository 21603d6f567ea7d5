"""Batches prepared ahead in a background thread: the same batches in the same order, errors and early exits."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cascade_ranking.data.loader import iterate_partitions
from cascade_ranking.data.prefetch import pin_batches, prefetch
from cascade_ranking.data.store import open_dataset
from cascade_ranking.training.config import TrainConfig
from cascade_ranking.training.loop import train
from cascade_ranking.training.runfiles import LOSS_CURVE_KEY
from cascade_ranking.types import RequestBatch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cascade-ranking-prefetch"]


def _stream(data, rng: np.random.Generator):
    schema = open_dataset(data)
    return iterate_partitions(data, schema, schema.partitions, batch_size=7, shuffle=True, rng=rng)


def _same(a: RequestBatch, b: RequestBatch) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(
            [a.mask, a.label, a.stage, a.request_id, a.history_mask, *a.item.values(), *a.history.values()],
            [b.mask, b.label, b.stage, b.request_id, b.history_mask, *b.item.values(), *b.history.values()],
        )
    )


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetched_batches_equal_the_loader_and_leave_the_generator_state_alike(tiny_dataset, depth):
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    plain = list(_stream(tiny_dataset, rng_a))
    ahead = list(prefetch(_stream(tiny_dataset, rng_b), depth))
    assert len(plain) == len(ahead) > 10
    assert all(_same(a, b) for a, b in zip(plain, ahead))
    assert rng_a.bit_generator.state == rng_b.bit_generator.state  # the next partition's shuffle is unchanged
    assert not _prefetch_threads()


def test_prepare_runs_on_every_item_in_order():
    assert list(prefetch(range(10), 2, prepare=lambda x: x * x)) == [x * x for x in range(10)]
    assert list(prefetch(range(4), 0, prepare=lambda x: -x)) == [0, -1, -2, -3]
    assert list(prefetch(iter([]), 2)) == []


def test_an_error_in_the_source_reaches_the_caller_at_its_place():
    def source():
        yield from range(3)
        raise OSError("partition 7 is truncated")

    got = []
    with pytest.raises(OSError, match="partition 7 is truncated"):
        for x in prefetch(source(), 2):
            got.append(x)
    assert got == [0, 1, 2] and not _prefetch_threads()


def test_leaving_the_loop_early_stops_the_thread_without_reading_everything():
    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetch(source(), 2)
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()  # what ``break`` does to the generator
    assert not _prefetch_threads()
    assert len(produced) <= 2 + 2 + 1  # consumed + queued + the one being put


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_depth_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="prefetch depth"):
        prefetch(range(3), bad)


def test_training_with_prefetch_equals_training_without(tmp_path, tiny_dataset):
    """The prefetch thread draws the loader's shuffles in the same order: bitwise the same run on CPU."""
    runs = [
        train(
            TrainConfig(data=tiny_dataset, device="cpu", passes=2, prefetch=depth, threads=1),
            data=tiny_dataset,
            run_dir=tmp_path / f"d{depth}",
        ).metrics
        for depth in (0, 2)
    ]
    assert runs[0][LOSS_CURVE_KEY] == runs[1][LOSS_CURVE_KEY]
    assert runs[0]["final_loss"] == runs[1]["final_loss"] and runs[0]["test"] == runs[1]["test"]


def test_prefetch_config_is_validated():
    assert TrainConfig().prefetch is None and TrainConfig(prefetch=0).prefetch == 0
    with pytest.raises(ValueError, match="prefetch"):
        TrainConfig(prefetch=-1)


@CUDA
def test_pinned_batches_are_page_locked_and_equal(tiny_dataset):
    batch = next(iter(_stream(tiny_dataset, np.random.default_rng(0))))
    pinned = pin_batches(batch)
    assert pinned.mask.is_pinned() and all(t.is_pinned() for t in pinned.item.values())
    assert _same(batch, pinned)
    on_gpu = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert _same(batch, on_gpu.to("cpu"))


@CUDA
def test_cuda_training_with_prefetch_matches_without(tmp_path, tiny_dataset):
    runs = [
        train(
            TrainConfig(data=tiny_dataset, device="cuda", prefetch=depth),
            data=tiny_dataset,
            run_dir=tmp_path / f"{depth}",
        ).metrics
        for depth in (0, 2)
    ]
    assert runs[0]["steps"] == runs[1]["steps"]
    assert abs(runs[0]["final_loss"] - runs[1]["final_loss"]) < 1e-4
