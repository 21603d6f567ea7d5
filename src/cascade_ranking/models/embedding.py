"""Feature encoder (one embedding table per categorical field, history sharing item tables) and MLP blocks.

Layout (``E`` = embedding dim, every table has ``padding_idx=0`` so id 0 embeds to a zero vector that
never receives a gradient):

* user/context: ``[B, (U + C) * E]`` — the user fields, then the context fields, in schema order;
* history: ``[B, L, H * E]`` — the history fields in schema order, each looked up in the table of the
  item field it names (``HistoryField.item_field``), as in DIN (Zhou et al., KDD 2018, Sec. 4.3) and the
  LCRON release, where the behaviour sequence and the candidates share their item embeddings;
* candidates: ``[..., I * E]`` — the item fields in schema order (any leading shape, e.g. ``[B, N]`` or
  a corpus ``[M]``).

Tables are initialised like ``torch.nn.Embedding`` (standard normal), as in the LCRON release.

Embedding sizes: one ``E`` for every field (``emb_dim=8``, the LCRON protocol), or ``emb_dim="log2"``, RankTower's
rule (Yan & Li 2023, Sec. 5.1.4): field ``f`` gets ``max(floor(log2 V_f), 16)`` dimensions
(:func:`log2_embedding_dim`, ``V_f`` its vocabulary size). Under that rule every field with fewer than
``2**17`` ids gets 16, so on MovieLens-100K and KuaiRand-Pure it is a uniform ``E = 16``; models that need
one width for every field (COLD's SE groups, DIN's attention) raise when the sizes differ.

Speed (same values and gradients as ``torch.nn.Embedding``): :meth:`FeatureEncoder.encode` looks up every
id a model needs with one lookup per table (a history field and the candidate field sharing its table are
looked up together), so each table gets one dense gradient per step instead of one per use; on CPU the
gradient is built by ``index_add_`` (:func:`embedding_lookup`), several times faster than PyTorch's
sort-based ``embedding_dense_backward`` for the small batches of a training step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..data.schema import DatasetSchema
from ..types import RequestBatch

__all__ = ["Encoded", "FeatureEncoder", "embedding_lookup", "feed_forward", "log2_embedding_dim", "mlp_forward"]


def log2_embedding_dim(vocab_size: int, minimum: int = 16) -> int:
    """RankTower's embedding size of a field (Sec. 5.1.4): ``max(floor(log2(vocab_size)), minimum)``.

    Raises:
        ValueError: ``vocab_size < 1``.
    """
    if int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size!r}")
    return max(int(vocab_size).bit_length() - 1, int(minimum))


class _EmbeddingLookup(torch.autograd.Function):
    """``weight[ids]`` with the dense gradient of ``torch.nn.functional.embedding`` (``padding_idx`` row 0)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.num_rows = weight.shape[0]
        ctx.padding_idx = padding_idx
        return weight.index_select(0, ids)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        if grad.device.type != "cpu":  # keep PyTorch's deterministic kernel on accelerators
            pad = -1 if ctx.padding_idx is None else ctx.padding_idx
            return torch.ops.aten.embedding_dense_backward(grad, ids, ctx.num_rows, pad, False), None, None
        d_weight = grad.new_zeros(ctx.num_rows, grad.shape[-1])
        d_weight.index_add_(0, ids, grad.contiguous())  # a strided source (a slice of a concat) is ~3x slower
        if ctx.padding_idx is not None:
            d_weight[ctx.padding_idx] = 0
        return d_weight, None, None


def embedding_lookup(table: nn.Embedding, ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Look up several id tensors in one table at once: ``[table(x) for x in ids]``, one gradient.

    Values and gradients equal ``torch.nn.functional.embedding`` with the table's ``padding_idx`` (the
    padding row gets no gradient); the tables of this package use neither ``max_norm`` nor
    ``scale_grad_by_freq`` (other tables fall back to ``nn.Embedding``'s own forward).

    Args:
        table: the embedding table ``[V, E]``.
        ids: integer id tensors of any shapes, values in ``[0, V)``.

    Returns:
        one ``[*x.shape, E]`` tensor per id tensor ``x``.

    Raises:
        IndexError: an id outside ``[0, V)``.
    """
    if table.max_norm is not None or table.scale_grad_by_freq or table.sparse:
        return [table(x) for x in ids]
    flat = [x.reshape(-1) for x in ids]
    joined = flat[0] if len(flat) == 1 else torch.cat(flat)
    rows = _EmbeddingLookup.apply(table.weight, joined.long(), table.padding_idx)
    out = rows.split([f.numel() for f in flat]) if len(flat) > 1 else [rows]
    return [r.view(*x.shape, rows.shape[-1]) for r, x in zip(out, ids)]


@dataclass
class Encoded:
    """The embeddings of one batch (see :meth:`FeatureEncoder.encode`).

    Attributes:
        user_context: ``[B, (U + C) * E]``.
        history: ``[B, L, H * E]`` or ``None`` when not requested.
        items: ``[B, N, I * E]`` or ``None`` when not requested.
    """

    user_context: torch.Tensor
    history: torch.Tensor | None
    items: torch.Tensor | None

    def require_history(self) -> torch.Tensor:
        """``history`` ``[B, L, H * E]``; raises ValueError if the batch was encoded with ``history=False``."""
        if self.history is None:
            raise ValueError("the history was not encoded (FeatureEncoder.encode(..., history=False))")
        return self.history

    def require_items(self) -> torch.Tensor:
        """``items`` ``[B, N, I * E]``; raises ValueError if the batch was encoded with ``items=False``."""
        if self.items is None:
            raise ValueError("the candidates were not encoded (FeatureEncoder.encode(..., items=False))")
        return self.items


class FeatureEncoder(nn.Module):
    """Embedding tables for every categorical field of a :class:`DatasetSchema`.

    Args:
        schema: the dataset schema (fields, roles, vocabulary sizes, history fields).
        emb_dim: embedding dimension ``E`` of every field (8 in the LCRON experiments), or ``"log2"``: per
            field :func:`log2_embedding_dim` (RankTower, Sec. 5.1.4).

    Attributes:
        field_dims: embedding size per field name.
        emb_dim: the size shared by every field; with ``"log2"`` and differing sizes, the largest.
        uniform: whether every field has the same size.
        user_fields, context_fields, item_fields: field names per role, in schema order.
        history_fields: history field names, in schema order.
        history_item_fields: for each history field, the item field whose table it shares.
        user_context_dim, history_dim, item_dim: output widths ``(U + C) * E``, ``H * E``, ``I * E``.

    Raises:
        ValueError: ``emb_dim`` is neither a positive integer nor ``"log2"``.
    """

    def __init__(self, schema: DatasetSchema, emb_dim: int | str = 8) -> None:
        super().__init__()
        if emb_dim == "log2":
            self.field_dims = {f.name: log2_embedding_dim(f.vocab_size) for f in schema.features}
        elif isinstance(emb_dim, int) and not isinstance(emb_dim, bool) and emb_dim > 0:
            self.field_dims = {f.name: int(emb_dim) for f in schema.features}
        else:
            raise ValueError(f"emb_dim must be a positive integer or 'log2', got {emb_dim!r}")
        sizes = set(self.field_dims.values())
        self.uniform = len(sizes) <= 1
        self.emb_dim = max(sizes, default=int(emb_dim) if isinstance(emb_dim, int) else 16)
        self.tables = nn.ModuleDict(
            {f.name: nn.Embedding(f.vocab_size, self.field_dims[f.name], padding_idx=0) for f in schema.features}
        )
        self.user_fields = tuple(f.name for f in schema.fields_with_role("user"))
        self.context_fields = tuple(f.name for f in schema.fields_with_role("context"))
        self.item_fields = tuple(f.name for f in schema.fields_with_role("item"))
        self.history_fields = tuple(h.name for h in schema.history)
        self.history_item_fields = tuple(h.item_field for h in schema.history)
        dims = self.field_dims
        self.user_context_dim = sum(dims[f] for f in (*self.user_fields, *self.context_fields))
        self.history_dim = sum(dims[f] for f in self.history_item_fields)
        self.item_dim = sum(dims[f] for f in self.item_fields)

    def require_uniform(self, model: str) -> int:
        """The one embedding size of every field; raises ValueError naming ``model`` if sizes differ."""
        if not self.uniform:
            raise ValueError(f"{model} needs one embedding size for every field, got {self.field_dims}")
        return self.emb_dim

    def table(self, name: str) -> nn.Embedding:
        """The embedding table ``[V, E]`` of field ``name`` (history fields use their item field's table).

        Raises:
            KeyError: ``name`` is not a field of the schema.
        """
        table = self.tables[name]
        assert isinstance(table, nn.Embedding)  # built so in __init__
        return table

    # -- ids (validated) ---------------------------------------------------------------------------
    @staticmethod
    def _check_ids(ids: torch.Tensor, what: str) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{what} must hold integer ids (int64), got {ids.dtype}")
        return ids

    def _user_context_ids(self, batch: RequestBatch) -> list[tuple[str, torch.Tensor]]:
        b = batch.batch_size
        out = []
        for role, names, feats in (
            ("user", self.user_fields, batch.user),
            ("context", self.context_fields, batch.context),
        ):
            for name in names:
                ids = _get(feats, name, role)
                if ids.shape != (b,):
                    raise ValueError(f"batch.{role}[{name!r}] must be [B]=[{b}], got {tuple(ids.shape)}")
                out.append((name, self._check_ids(ids, f"batch.{role}[{name!r}]")))
        return out

    def _history_ids(self, batch: RequestBatch) -> tuple[list[tuple[str, torch.Tensor]], tuple[int, ...]]:
        shape = tuple(batch.history_mask.shape)
        if len(shape) != 2 or shape[0] != batch.batch_size:
            raise ValueError(f"batch.history_mask must be [B, L] with B={batch.batch_size}, got {shape}")
        out = []
        for name, item_field in zip(self.history_fields, self.history_item_fields):
            ids = _get(batch.history, name, "history")
            if tuple(ids.shape) != shape:
                raise ValueError(f"batch.history[{name!r}] has shape {tuple(ids.shape)}, history_mask has {shape}")
            out.append((item_field, self._check_ids(ids, f"batch.history[{name!r}]")))
        return out, shape

    def _item_ids(
        self, item: Mapping[str, torch.Tensor], fields: Sequence[str] | None
    ) -> list[tuple[str, torch.Tensor]]:
        names = self.item_fields if fields is None else tuple(fields)
        unknown = [n for n in names if n not in self.item_fields]
        if unknown:
            raise KeyError(f"{unknown} are not item fields; item fields: {list(self.item_fields)}")
        out, shape = [], None
        for name in names:
            ids = _get(item, name, "item")
            if shape is None:
                shape = tuple(ids.shape)
            elif tuple(ids.shape) != shape:
                raise ValueError(f"batch.item[{name!r}] has shape {tuple(ids.shape)}, other item fields {shape}")
            out.append((name, self._check_ids(ids, f"batch.item[{name!r}]")))
        return out

    def _embed(self, groups: Sequence[list[tuple[str, torch.Tensor]]]) -> list[list[torch.Tensor]]:
        """Embeddings of ``groups`` of ``(table, ids)`` pairs, with one lookup per table over all groups."""
        by_table: dict[str, list[tuple[int, int]]] = {}
        for g, group in enumerate(groups):
            for i, (table, _) in enumerate(group):
                by_table.setdefault(table, []).append((g, i))
        out: list[list[torch.Tensor | None]] = [[None] * len(group) for group in groups]
        for table, places in by_table.items():
            rows = embedding_lookup(self.table(table), [groups[g][i][1] for g, i in places])
            for (g, i), r in zip(places, rows):
                out[g][i] = r
        return [[r for r in group if r is not None] for group in out]  # every place was filled

    def _join(self, parts: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.cat(parts, dim=-1) if parts else self._empty((*shape, 0))

    # -- lookups ---------------------------------------------------------------------------------
    def encode(self, batch: RequestBatch, *, history: bool = True, items: bool = True) -> Encoded:
        """Every embedding a model needs from ``batch``, with one lookup per table.

        Equal to ``Encoded(self.user_context(batch), self.history(batch), self.items(batch))``; a history
        field and the candidate field sharing its table are looked up together (one gradient per table).

        Args:
            batch: the request batch.
            history, items: whether to embed the history and the candidates (``None`` in the result if not).

        Raises:
            KeyError / ValueError / TypeError: as :meth:`user_context`, :meth:`history` and :meth:`items`.
        """
        b = batch.batch_size
        groups = [self._user_context_ids(batch)]
        hist_shape: tuple[int, ...] = ()
        if history:
            hist_ids, hist_shape = self._history_ids(batch)
            groups.append(hist_ids)
        if items:
            groups.append(self._item_ids(batch.item, None))
        parts = self._embed(groups)
        h = self._join(parts[1], hist_shape) if history else None
        c = None
        if items:
            c = self._join(parts[-1], tuple(batch.mask.shape))
            self._check_candidates(c, batch)
        return Encoded(user_context=self._join(parts[0], (b,)), history=h, items=c)

    def user_context(self, batch: RequestBatch) -> torch.Tensor:
        """User then context field embeddings, concatenated: ``[B, (U + C) * E]``.

        Raises:
            KeyError: the batch lacks a user or context field of the schema.
        """
        return self._join(self._embed([self._user_context_ids(batch)])[0], (batch.batch_size,))

    def history(self, batch: RequestBatch) -> torch.Tensor:
        """History embeddings ``[B, L, H * E]`` (item tables shared); padded slots are whatever id they hold.

        Use ``batch.history_mask`` to ignore padded slots (id 0 already embeds to zeros).

        Raises:
            KeyError: the batch lacks a history field of the schema.
        """
        ids, shape = self._history_ids(batch)
        return self._join(self._embed([ids])[0], shape)

    def pooled_history(self, batch: RequestBatch, history: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the history embeddings over valid slots: ``[B, H * E]``; zeros for an empty history.

        The LCRON release divides the sum over slots by the history length; with ``padding_idx=0`` that
        is this masked mean (the release yields NaN for an empty history, this gives zeros).

        Args:
            batch: the request batch.
            history: its history embeddings when already computed (:meth:`encode`), else looked up.
        """
        h = self.history(batch) if history is None else history
        m = batch.history_mask.to(h.dtype)
        total = torch.einsum("bld,bl->bd", h, m)
        return total / m.sum(-1, keepdim=True).clamp_min(1.0)

    def embed_items(self, item: Mapping[str, torch.Tensor], fields: Sequence[str] | None = None) -> torch.Tensor:
        """Item field embeddings concatenated: ids ``[...]`` per field -> ``[..., len(fields) * E]``.

        Args:
            item: item field ids, each of the same shape (``[B, N]`` candidates, or ``[M]`` a corpus).
            fields: item fields to embed, in this order; default all item fields in schema order.

        Raises:
            KeyError: a field is missing from ``item`` or is not an item field.
        """
        return torch.cat(self._embed([self._item_ids(item, fields)])[0], dim=-1)

    def items(self, batch: RequestBatch, fields: Sequence[str] | None = None) -> torch.Tensor:
        """Candidate embeddings ``[B, N, len(fields) * E]`` (default: all item fields, schema order)."""
        out = self.embed_items(batch.item, fields)
        self._check_candidates(out, batch)
        return out

    @staticmethod
    def _check_candidates(out: torch.Tensor, batch: RequestBatch) -> None:
        if tuple(out.shape[:2]) != tuple(batch.mask.shape):
            raise ValueError(f"batch.item fields are {tuple(out.shape[:2])}, batch.mask is {tuple(batch.mask.shape)}")

    def _empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        w = self.table(next(iter(self.tables))).weight
        return w.new_zeros(shape)


def _get(feats: Mapping[str, torch.Tensor], name: str, role: str) -> torch.Tensor:
    try:
        return feats[name]
    except KeyError:
        raise KeyError(
            f"batch.{role} has no field {name!r} (it has {sorted(feats)}); does it match the schema?"
        ) from None


def feed_forward(sizes: Sequence[int], *, final_activation: bool = False) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) -> ReLU -> ... -> Linear(sizes[-2], sizes[-1])`` (ReLU between layers).

    :func:`mlp_forward` runs such a stack faster (in-place ReLUs on 2-D outputs), with the same values.

    Raises:
        ValueError: fewer than two sizes, or a non-positive size.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"layer sizes must be >= 2 positive integers, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _RequestCandidateLinear(torch.autograd.Function):
    """``out[b * N + n] = W [request[b], x[b * N + n]] + bias`` with ``W_r request[b]`` computed once per request."""

    @staticmethod
    def forward(ctx, x, request, weight, bias, num):  # x [B*N, C], request [B, R], weight [h, R + C]
        r = request.shape[-1]
        out = torch.addmm(bias, x, weight[:, r:].t()) if bias is not None else x.mm(weight[:, r:].t())
        out.view(request.shape[0], num, -1).add_(request.mm(weight[:, :r].t()).unsqueeze(1))
        ctx.save_for_backward(x, request, weight)
        ctx.num, ctx.has_bias = num, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, request, weight = ctx.saved_tensors
        need_x, need_req, need_w, need_b, _ = ctx.needs_input_grad
        r = request.shape[-1]
        grad = grad.contiguous()
        per_request = grad.view(request.shape[0], ctx.num, -1).sum(1)  # [B, h]
        d_x = grad.mm(weight[:, r:]) if need_x else None
        d_req = per_request.mm(weight[:, :r]) if need_req else None
        d_w = torch.cat([per_request.t().mm(request), grad.t().mm(x)], dim=1) if need_w else None
        d_b = grad.sum(0) if need_b and ctx.has_bias else None
        return d_x, d_req, d_w, d_b, None


def mlp_forward(mlp: nn.Sequential, x: torch.Tensor, *, request: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a :func:`feed_forward` stack over the last axis of ``x``, faster than ``mlp(x)``, same values.

    Leading axes are flattened so that every ``Linear`` output is a fresh 2-D tensor, which the following
    ``ReLU`` then modifies in place (on a view, an in-place op would cost autograd a copy). With ``request``
    the first layer reads ``concat(request expanded over N, x)``: its request part ``W_r request`` is computed
    once per request instead of once per candidate (the same affine map, without the ``[B, N, R + C]``
    concatenation).

    Args:
        mlp: a ``Sequential`` of ``Linear`` and ``ReLU`` modules (others are called as they are).
        x: ``[..., C]`` input; ``[B, N, C]`` when ``request`` is given.
        request: optional ``[B, R]`` per-request features, read by the first layer before ``x``.

    Returns:
        ``[..., out]``: ``mlp(x)``, or ``mlp(concat(request expanded, x))`` (up to floating-point rounding).

    Raises:
        ValueError: ``request`` is given but the shapes do not fit the first layer.
    """
    lead = x.shape[:-1]
    h = x.reshape(-1, x.shape[-1])
    layers = list(mlp)
    if request is not None:
        first = layers[0]
        if (
            not isinstance(first, nn.Linear)
            or x.dim() != 3
            or request.dim() != 2
            or request.shape[0] != x.shape[0]
            or first.in_features != request.shape[-1] + x.shape[-1]
        ):
            raise ValueError(
                f"request {tuple(request.shape)} and x {tuple(x.shape)} do not fit the first layer {first}"
            )
        h = _RequestCandidateLinear.apply(h, request, first.weight, first.bias, x.shape[1])
        layers = layers[1:]
    fresh = request is not None  # h is a tensor made here (not the caller's x), safe to modify in place
    for layer in layers:
        if isinstance(layer, nn.ReLU) and fresh:
            h = h.relu_()
        else:
            h = layer(h)
            fresh = isinstance(layer, (nn.Linear, nn.ReLU))
    return h.view(*lead, h.shape[-1])
