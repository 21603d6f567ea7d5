"""Write examples/table/logs.csv: a tiny synthetic cascade log, one row per (request, candidate).

Seven days (2024-01-01 ... 2024-01-07, UTC) of 40 requests each; each request logs 16-28 candidates with the
deepest stage they reached (retrieved < preranked < ranked < shown), the user's click / like on shown items
and the user's last 6 clicked items (a list written as "[3, 17, 5]"). Items of the user's favourite category
are more relevant, so the funnel and the clicks carry a learnable signal. Run:
``python examples/table/make_logs.py`` (seeded: the same file every time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

STAGES = np.array(["retrieved", "preranked", "ranked", "shown"])


def make_logs(seed: int = 0, days: int = 7, requests_per_day: int = 40) -> pa.Table:
    rng = np.random.default_rng(seed)
    num_users, num_items, num_cats = 60, 300, 8
    fav = rng.integers(0, num_cats, num_users)
    age = rng.integers(16, 70, num_users)
    item_cat = rng.integers(0, num_cats, num_items)
    price = np.round(rng.lognormal(3, 1, num_items), 2)
    history: dict[int, list[int]] = {u: [] for u in range(num_users)}
    cols: dict[str, list] = {k: [] for k in ("request_id", "ts", "user_id", "age", "device", "item_id", "category",
                                             "price", "stage", "click", "like", "history_items")}  # fmt: skip
    start = 1_704_067_200  # 2024-01-01 00:00 UTC
    for r in range(days * requests_per_day):
        ts = start + (r // requests_per_day) * 86_400 + int(rng.integers(0, 86_400))
        u = int(rng.integers(num_users))
        n = int(rng.integers(16, 29))
        items = rng.choice(num_items, n, replace=False)
        relevance = (item_cat[items] == fav[u]) * 1.5 + rng.normal(0, 1, n)
        order = np.argsort(-(relevance + rng.normal(0, 0.7, n)))  # a noisy funnel
        stage = np.zeros(n, int)
        stage[order[:18]] = 1
        stage[order[:10]] = 2
        stage[order[:5]] = 3
        click = (stage == 3) & (relevance + rng.normal(0, 0.5, n) > 1.0)
        like = click & (rng.random(n) < 0.3)
        hist = "[" + ", ".join(str(i) for i in history[u][:6]) + "]"
        for k in range(n):
            for key, value in (("request_id", r), ("ts", ts), ("user_id", f"u{u}"), ("age", int(age[u])),
                               ("device", ["ios", "android", "web"][u % 3]), ("item_id", int(items[k])),
                               ("category", f"c{item_cat[items[k]]}"), ("price", float(price[items[k]])),
                               ("stage", STAGES[stage[k]]), ("click", int(click[k])), ("like", int(like[k])),
                               ("history_items", hist)):  # fmt: skip
                cols[key].append(value)
        history[u] = [int(i) for i in items[click]] + history[u]
    return pa.table(cols)


if __name__ == "__main__":
    out = Path(__file__).with_name("logs.csv")
    pacsv.write_csv(make_logs(), out)
    print(f"wrote {out}")
