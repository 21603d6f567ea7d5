"""Benchmark: RecFlow conversion, vectorized (ours) vs a straightforward per-request Python loop.

One simulated day in RecFlow's published layout (:func:`cascade_ranking.data.synthetic.simulate`, layout
``"recflow"``) is converted twice from the same loaded files:

* **vectorized**: :mod:`cascade_ranking.data.recflow` (one list comprehension per flow over the pickle's dict,
  then numpy on ``[R, 10, 8]`` arrays, a sorted-key join for the rank index, UTC times by integer arithmetic);
* **per-request loop**: what a direct port of the released data code does, request by request: slice each
  flow into preallocated arrays, convert each upload time with ``time.gmtime``, look labels up in a dict of
  (request, video) -> rank index.

Both outputs are checked to be identical, then a table shows each phase's time. Reading the feather file,
``pickle.load`` of the two pickles and writing Parquet are the same code for both and reported as shared.

Usage::

    python benchmarks/convert_recflow.py --requests 100000 --stages 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cascade_ranking.data import recflow as rf
from cascade_ranking.data.loader import shuffle_candidates
from cascade_ranking.data.store import write_partition
from cascade_ranking.data.synthetic import simulate


def loop_transform(fd, request_dict: dict, seq_dict: dict, spec: rf.FunnelSpec, schema) -> dict[str, np.ndarray]:
    """The per-request baseline: the same store columns as :func:`recflow.to_store_arrays` (unshuffled)."""
    r, n, g = len(fd.request_id), spec.num_candidates, rf.GROUP_SIZE
    length = next(iter(seq_dict.values())).shape[0]
    # rank index lookup, as the release builds it (group rows by (request, video), first row wins)
    lookup: dict[tuple[int, int], float] = {}
    for req, vid, idx in zip(fd.request_id[fd.top_request].tolist(), fd.top_video.tolist(), fd.top_index.tolist()):
        lookup.setdefault((req, vid), idx)
    item = {f.name: np.zeros((r, n), dtype=np.int64) for f in schema.fields_with_role("item")}
    hist = {h.name: np.zeros((r, length), dtype=np.int64) for h in schema.history}
    user = {f: np.zeros(r, dtype=np.int64) for f in rf.USER_FIELDS}
    context = {f: np.zeros(r, dtype=np.int64) for f in rf.TIME_VOCAB}
    mask = np.zeros((r, n), dtype=bool)
    stage = np.zeros((r, n), dtype=np.int8)
    label = np.zeros((r, n), dtype=np.float32)
    positions = list(range(len(spec.groups) - 1, -1, -1))
    rids = fd.request_id.tolist()
    timestamps = fd.columns["request_timestamp"].tolist()
    user_rows = {f: fd.columns[f].tolist() for f in rf.USER_FIELDS}
    for i, rid in enumerate(rids):
        for f in rf.USER_FIELDS:
            user[f][i] = user_rows[f][i] + 1
        t = time.gmtime(timestamps[i] // 1000)
        context["weekday"][i], context["hour"][i], context["minute"][i] = t.tm_wday + 1, t.tm_hour + 1, t.tm_min + 1
        entry = request_dict[rid]
        for k, flow in enumerate(spec.groups):
            rows = entry.get(flow)
            if rows is None or len(rows) == 0:
                continue
            rows = rows[:g]
            sl = slice(k * g, k * g + len(rows))
            item["video_id"][i, sl] = rows[:, 0] + 1
            item["author_id"][i, sl] = rows[:, 1] + 1
            item["cate_two"][i, sl] = rows[:, 3] + 1
            item["upload_type"][i, sl] = rows[:, 4] + 1
            item["cate_one"][i, sl] = rows[:, 6] + 1
            times = [time.gmtime(x) for x in rows[:, 5].tolist()]
            item["upload_weekday"][i, sl] = [x.tm_wday + 1 for x in times]
            item["upload_hour"][i, sl] = [x.tm_hour + 1 for x in times]
            item["upload_minute"][i, sl] = [x.tm_min + 1 for x in times]
            mask[i, sl] = True
            stage[i, sl] = positions[k]
            if k == 0:
                label[i, sl] = [
                    rf.RANK_INDEX_BASE - lookup.get((rid, v), rf.MISSING_RANK_INDEX) for v in rows[:, 0].tolist()
                ]
            else:
                label[i, sl] = spec.lower_labels[k - 1]
        seq = seq_dict[rid]
        valid = seq[:, 7] > 0
        for name, col in rf.HISTORY_FIELDS.items():
            hist[name][i] = np.where(valid, seq[:, col] + 1, 0)
    arrays = {"request_id": fd.request_id.copy(), "mask": mask, "stage": stage, "label": label}
    arrays.update({f"user.{k}": v for k, v in user.items()})
    arrays.update({f"context.{k}": v for k, v in context.items()})
    arrays.update({f"item.{k}": v for k, v in item.items()})
    arrays.update({f"history.{k}": v for k, v in hist.items()})
    return arrays


def vectorized_transform(fd, request_dict: dict, seq_dict: dict, files, spec, schema) -> dict[str, np.ndarray]:
    flows, counts = rf._gather_flows(fd, request_dict, files, spec)
    history = rf._gather_history(fd, seq_dict, files)
    day, _ = rf._make_day(fd, flows, counts, history, files, spec)
    return rf.to_store_arrays(day, spec, schema)


def clock(fn, *args):
    t = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests in the simulated day")
    parser.add_argument("--stages", type=int, default=2, choices=(2, 3))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="recflow-bench-"))
    try:
        raw, out_vec, out_loop = work / "recflow", work / "vectorized", work / "loop"
        _, t_sim = clock(lambda: simulate(raw, requests=args.requests, days=1, layout="recflow", seed=args.seed))
        day = rf.list_days(raw)[0]
        files = rf.DayFiles.of(raw, day)
        spec = rf.funnel_spec(args.stages)
        id_cnt = rf.read_id_cnt(raw / rf.ID_CNT_FILE)

        fd, t_feather = clock(rf._read_requests, files.feather, spec)
        request_dict, t_req = clock(rf._load_dict, files.requests, "request flows")
        seq_dict, t_seq = clock(rf._load_dict, files.history, "history")
        length = next(iter(seq_dict.values())).shape[0]
        part = rf.day_partition(day, "test", len(fd.request_id))
        schema = rf.recflow_schema(stages=args.stages, id_cnt=id_cnt, history_length=length, partitions=[part])

        vec, t_vec = clock(vectorized_transform, fd, request_dict, seq_dict, files, spec, schema)
        loop, t_loop = clock(loop_transform, fd, request_dict, seq_dict, spec, schema)
        for name in vec:
            if not np.array_equal(vec[name], loop[name]):
                raise SystemExit(f"outputs differ in column {name!r}")
        timings_write = []
        for arrays, folder in ((vec, out_vec), (loop, out_loop)):
            shuffle_candidates(arrays, spec.num_candidates, rf.day_shuffle_rng(day))
            folder.mkdir(parents=True, exist_ok=True)
            timings_write.append(clock(write_partition, folder, schema, part, arrays)[1])
        del request_dict, seq_dict

        shutil.rmtree(out_vec)
        _, t_end = clock(lambda: rf.convert_recflow(raw, out_vec, stages=args.stages))

        shared = t_feather + t_req + t_seq
        total_vec, total_loop = shared + t_vec + timings_write[0], shared + t_loop + timings_write[1]
        print(
            f"RecFlow conversion of one simulated day: {len(fd.request_id):,} requests, {args.stages}-stage "
            f"({spec.num_candidates} candidates), history {length}; simulated in {t_sim:.1f} s"
        )
        print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs\n")
        rows = [
            ("read feather (shared)", t_feather, t_feather),
            ("pickle.load, 2 files (shared)", t_req + t_seq, t_req + t_seq),
            ("transform to store columns", t_vec, t_loop),
            ("write Parquet", timings_write[0], timings_write[1]),
            ("end to end", total_vec, total_loop),
        ]
        print(f"| {'phase':32} | {'vectorized':>11} | {'per-request loop':>16} | {'speed-up':>8} |")
        print(f"|{'-' * 34}|{'-' * 12}:|{'-' * 17}:|{'-' * 9}:|")
        for name, a, b in rows:
            print(f"| {name:32} | {a:9.2f} s | {b:14.2f} s | {b / a:7.1f}x |")
        print(f"\nconvert_recflow() end to end, measured on its own: {t_end:.2f} s")
        print(f"outputs identical: yes ({len(vec)} columns)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
