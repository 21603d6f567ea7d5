"""Floating-point work of one training step, counted from the shapes (an estimate, for the roofline).

Counted as in the models of ``cascade_ranking.models`` (sizes of the LCRON release: embedding 8, hidden 128,
DIN attention 80): every matrix product ``2 m k n`` FLOPs forward and twice that backward (input and weight
gradients); DIN's pairwise attention ``B N L A`` cells at 3 operations forward (add, multiply, add) and 4
backward (compare, multiply, two sums); the sorting losses ``B N^2`` cells at about 35 operations per stage
(forward: multiply-add, softmax, row mask, the two place sums; backward about twice that) plus 7 for the label
matrix; Adam about 12 operations per parameter. Embedding lookups, concatenations and masks move memory but
add no FLOPs and are left out.
"""

from __future__ import annotations

SORTING_LOSSES = {"lcron", "arf", "arf_v2"}


def _mm(rows: int, *dims: int) -> int:
    """FLOPs of an MLP ``dims[0] -> dims[1] -> ...`` applied to ``rows`` rows (forward)."""
    return sum(2 * rows * a * b for a, b in zip(dims, dims[1:]))


def step_flops(schema, models: list[str], method: str, batch: int, parameters: int, *, emb: int = 8,
               hidden: int = 128, attention: int = 80) -> dict:  # fmt: skip
    """FLOP estimate of one training step, by kind: ``matmul``, ``attention`` (DIN's pairwise cells),
    ``loss`` (sorting losses' ``N^2`` cells), ``optimizer``, and ``total``."""
    b, n, length = batch, schema.num_candidates, schema.history_length
    uc = (len(schema.fields_with_role("user")) + len(schema.fields_with_role("context"))) * emb
    d = len(schema.history) * emb
    item = len(schema.fields_with_role("item")) * emb
    bn = b * n
    fwd_mm, attention_ops = 0, 0
    for m in models:
        fwd_mm += 2 * b * length * d  # pooled or attended history (one pass over [B, L, D])
        if m == "dssm":
            fwd_mm += _mm(b, uc + d, hidden, hidden // 2, hidden // 4) + _mm(bn, item, hidden, hidden // 2, hidden // 4)
            fwd_mm += 2 * bn * (hidden // 4)
        elif m == "mlp":
            fwd_mm += _mm(b, uc + d, hidden) + _mm(bn, item, hidden) + _mm(bn, hidden, hidden // 2, hidden // 4, 1)
        elif m == "din":
            fwd_mm += 2 * b * length * d * attention + 2 * bn * d * attention  # first attention layer, split
            fwd_mm += 2 * bn * length * d  # interest = weights @ history
            fwd_mm += _mm(b, uc, hidden) + _mm(bn, d + item, hidden) + _mm(bn, hidden, hidden, hidden // 4, 1)
            attention_ops += bn * length * attention * (3 + 4)
    stages = len(models)
    loss_ops = b * n * n * (35 * stages + 7) if method in SORTING_LOSSES else 0
    out = {
        "matmul": 3 * fwd_mm,
        "attention": attention_ops,
        "loss": loss_ops,
        "optimizer": 12 * parameters,
    }
    out["total"] = sum(out.values())
    return out
