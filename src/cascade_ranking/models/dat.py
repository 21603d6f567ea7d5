r"""DAT: the Dual Augmented Two-tower model (a pre-ranking baseline of RankTower's Table 1).

Yu, Wang, Feng & Xue, "A Dual Augmented Two-tower Model for Online Large-scale Recommendation", DLP-KDD 2021
(RankTower's ref. [33]). A two-tower model whose towers each read one extra, learned **augmented vector**:

* user tower ``p_u = normalize(MLP_u([X_U, a_u]))``, item tower ``p_v = normalize(MLP_v([X_I, a_v]))``, with
  ``a_u`` looked up by the user id and ``a_v`` by the item id (tables of width ``d``, the towers' output width);
  score ``s = <p_u, p_v> / tau``;
* **Adaptive-Mimic Mechanism** (AMM): each augmented vector learns to mimic the *other* tower's output on
  positive pairs, the tower outputs being constants (stop-gradient):

  .. math::

      L_u = \frac1{|T|} \sum_{(u, v, y) \in T} \| y\,a_u + (1 - y)\,\bar p_v - \bar p_v \|^2
          = \frac1{|T|} \sum y\,\| a_u - \bar p_v \|^2, \qquad
      L_v = \frac1{|T|} \sum y\,\| a_v - \bar p_u \|^2

  over the valid (request, candidate) pairs ``T`` of the batch (``bar`` = stop-gradient), so the augmented
  vector carries what the other tower learned about this user's (item's) positives into its own tower: an
  interaction the two towers otherwise lack.
* **Category Alignment Loss** (CAL): the covariance of the item representations of each minor category is pulled
  to that of the major category (the one with most candidates in the batch):
  ``L_CA = sum_{c != major} || C(S_major) - C(S_c) ||_F^2``, ``C`` the covariance matrix over the batch's
  valid candidates of category ``c`` (categories with fewer than 2 candidates are skipped).

Training loss: the ranking loss ``+ lambda_u L_u + lambda_v L_v + lambda_ca L_CA``; the three terms reach the
training loop through :mod:`cascade_ranking.models.auxiliary` (computed in the training forward pass, popped by
the loop). **Serving split**: :meth:`DAT.user_embedding` once per request, :meth:`DAT.encode_items` once per
item (cacheable), :meth:`DAT.score_from_cache` a dot product.

**Our choices where the paper leaves room**: towers ``Linear(in, h) -> ReLU -> Linear(h, h/2) -> ReLU ->
Linear(h/2, d)`` with ``d = h/4`` (as our DSSM); ``tau = 0.1`` (the outputs are unit vectors, so the logit
needs a scale for list-wise losses); ``lambda_u = lambda_v = 0.5`` (the default of Alibaba's TorchEasyRec DAT),
``lambda_ca = 1``; the augmented vectors also receive the ranking loss's gradient (they are tower inputs);
positives ``y = 1`` are the candidates at the request's top funnel position unless ``positive_label`` is set
(:func:`~cascade_ranking.models.auxiliary.positives`); the category field is an item field named by
``category_field`` (CAL is off when it is ``None``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .auxiliary import AuxiliaryLossStore, positives
from .embedding import FeatureEncoder, feed_forward, mlp_forward

__all__ = ["DAT", "amm_loss", "category_alignment_loss"]


def amm_loss(augmented: torch.Tensor, target: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor):
    """Adaptive-mimic loss ``sum_T y ||a - sg(p)||^2 / |T|`` (see the module docstring).

    Args:
        augmented: ``[B, N, d]`` (or broadcastable, e.g. ``[B, 1, d]``) augmented vectors ``a``.
        target: ``[B, N, d]`` (or broadcastable) the other tower's outputs ``p`` (detached here).
        positive: ``[B, N]`` bool, ``y``.
        valid: ``[B, N]`` bool, the pairs ``T``.

    Returns:
        0-dim tensor; 0 when there is no valid pair.
    """
    sq = (augmented - target.detach()).square().sum(-1)  # [B, N]
    y = (positive & valid).to(sq.dtype)
    return (sq * y).sum() / valid.sum().clamp_min(1).to(sq.dtype)


def category_alignment_loss(items: torch.Tensor, category: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``sum_{c != major} ||C(S_major) - C(S_c)||_F^2`` over the valid item representations (module docstring).

    Args:
        items: ``[..., d]`` item representations.
        category: ``[...]`` int category ids.
        valid: ``[...]`` bool.

    Returns:
        0-dim tensor; 0 with fewer than two categories of at least 2 valid items.
    """
    x, c = items[valid], category[valid]
    cats, counts = torch.unique(c, return_counts=True)
    keep = counts >= 2
    cats, counts = cats[keep], counts[keep]
    if cats.numel() < 2:
        return items.sum() * 0.0
    major = cats[torch.argmax(counts)]  # ties: the smallest id

    def cov(rows: torch.Tensor) -> torch.Tensor:
        centred = rows - rows.mean(0, keepdim=True)
        return centred.T @ centred / (rows.shape[0] - 1)

    ref = cov(x[c == major])
    return sum(((ref - cov(x[c == k])).square().sum() for k in cats if k != major), items.sum() * 0.0)


class DAT(AuxiliaryLossStore, nn.Module):
    """Dual Augmented Two-tower scorer (see the module docstring).

    Args:
        schema: dataset schema.
        emb_dim: embedding size per field (or ``"log2"``).
        hidden: first tower width ``h`` (towers ``h -> h/2 -> d``).
        out_dim: ``d``, the width of ``p_u``, ``p_v``, ``a_u``, ``a_v`` (default ``hidden // 4``).
        temperature: ``tau`` (default 0.1).
        amm_user, amm_item, cal: ``lambda_u``, ``lambda_v``, ``lambda_ca`` (defaults 0.5, 0.5, 1).
        user_id_field, item_id_field: the fields whose ids key the augmented vectors (default: the first user
            and the first item field of the schema).
        category_field: item field of the category for CAL (``None``: CAL off).
        positive_label: see :func:`~cascade_ranking.models.auxiliary.positives`.

    Raises:
        ValueError: bad sizes, unknown fields, a negative weight.
    """

    def __init__(
        self,
        schema: DatasetSchema,
        *,
        emb_dim: int | str = 8,
        hidden: int = 128,
        out_dim: int | None = None,
        temperature: float = 0.1,
        amm_user: float = 0.5,
        amm_item: float = 0.5,
        cal: float = 1.0,
        user_id_field: str | None = None,
        item_id_field: str | None = None,
        category_field: str | None = None,
        positive_label: float | None = None,
    ) -> None:
        super().__init__()
        if int(hidden) != hidden or hidden < 4:
            raise ValueError(f"hidden must be an integer >= 4, got {hidden!r}")
        if not temperature > 0 or min(amm_user, amm_item, cal) < 0:
            raise ValueError(f"temperature must be > 0 and the loss weights >= 0, got {temperature}, {amm_user}, ...")
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        d = int(out_dim) if out_dim is not None else hidden // 4
        self.user_id_field = user_id_field or _first(enc.user_fields, "user")
        self.item_id_field = item_id_field or _first(enc.item_fields, "item")
        for name, allowed, role in ((self.user_id_field, enc.user_fields, "user"),
                                    (self.item_id_field, enc.item_fields, "item"),
                                    (category_field, enc.item_fields, "item")):  # fmt: skip
            if name is not None and name not in allowed:
                raise ValueError(f"{name!r} is not a {role} field of the schema ({list(allowed)})")
        self.category_field = category_field
        self.user_aug = nn.Embedding(schema.feature(self.user_id_field).vocab_size, d, padding_idx=0)
        self.item_aug = nn.Embedding(schema.feature(self.item_id_field).vocab_size, d, padding_idx=0)
        for table in (self.user_aug, self.item_aug):
            nn.init.normal_(table.weight, std=0.1)
            with torch.no_grad():
                table.weight[0].zero_()
        self.user_tower = feed_forward([enc.user_context_dim + enc.history_dim + d, hidden, hidden // 2, d])
        self.item_tower = feed_forward([enc.item_dim + d, hidden, hidden // 2, d])
        self.temperature = float(temperature)
        self.weights = {"amm_user": float(amm_user), "amm_item": float(amm_item), "cal": float(cal)}
        self.positive_label = positive_label

    # -- towers (cacheable) ------------------------------------------------------------------------
    def _user(self, batch: RequestBatch, user_context: torch.Tensor, history: torch.Tensor | None):
        a_u = self.user_aug(batch.user[self.user_id_field])
        x = torch.cat([user_context, self.encoder.pooled_history(batch, history), a_u], dim=-1)
        return F.normalize(mlp_forward(self.user_tower, x), dim=-1), a_u

    def user_embedding(self, batch: RequestBatch) -> torch.Tensor:
        """``p_u`` ``[B, d]``, unit vectors."""
        return self._user(batch, self.encoder.user_context(batch), None)[0]

    def _items(self, item: dict[str, torch.Tensor], embedded: torch.Tensor):
        a_v = self.item_aug(item[self.item_id_field])
        return F.normalize(mlp_forward(self.item_tower, torch.cat([embedded, a_v], dim=-1)), dim=-1), a_v

    def encode_items(self, item: dict[str, torch.Tensor]) -> torch.Tensor:
        """``p_v`` ``[..., d]`` for item field ids of any shape (``[B, N]`` or a corpus ``[M]``), unit vectors."""
        return self._items(dict(item), self.encoder.embed_items(item))[0]

    def score_from_cache(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, N]`` from ``user [B, d]`` and ``items [B, N, d]`` (or a shared ``[N, d]``)."""
        if items.dim() == 2:
            return user @ items.T / self.temperature
        return torch.einsum("bd,bnd->bn", user, items) / self.temperature

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]``; in training mode also keeps the weighted AMM and CAL losses."""
        enc = self.encoder.encode(batch)
        p_u, a_u = self._user(batch, enc.user_context, enc.history)
        p_v, a_v = self._items(dict(batch.item), enc.require_items())
        if self.training:
            self._keep_auxiliary(self._auxiliary_terms(batch, p_u, a_u, p_v, a_v))
        return self.score_from_cache(p_u, p_v)

    def _auxiliary_terms(self, batch, p_u, a_u, p_v, a_v) -> dict[str, torch.Tensor]:
        y, valid = positives(batch, self.positive_label), batch.mask
        out = {}
        if self.weights["amm_user"]:
            out["amm_user"] = self.weights["amm_user"] * amm_loss(a_u.unsqueeze(1), p_v, y, valid)
        if self.weights["amm_item"]:
            out["amm_item"] = self.weights["amm_item"] * amm_loss(a_v, p_u.unsqueeze(1), y, valid)
        if self.weights["cal"] and self.category_field is not None:
            out["cal"] = self.weights["cal"] * category_alignment_loss(p_v, batch.item[self.category_field], valid)
        return out


def _first(fields: tuple[str, ...], role: str) -> str:
    if not fields:
        raise ValueError(f"DAT needs a {role} field for its augmented vectors")
    return fields[0]
