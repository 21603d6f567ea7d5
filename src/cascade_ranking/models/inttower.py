r"""IntTower: the interaction-enhanced two-tower pre-ranking model (a baseline of RankTower's Table 1).

Li, Chen, Guo, Li, Zhu, Long, Li, Wang, Guo, Mao et al., "IntTower: the Next Generation of Two-Tower Model for
Pre-Ranking System", CIKM 2022 (RankTower's ref. [14]). Three modules on top of a two-tower model:

* **Light-SE** (one per tower): field importance from a single linear map with softmax, applied with a
  residual: for field embeddings ``E [.., F, e]``, ``z_f = mean(E_f)``, ``a = softmax(W z + b)`` over the
  ``F`` fields, output ``E + a (.) E``;
* **FE-Block** (fine-grained and early interaction): every layer ``l = 1..L`` of the user tower's MLP is read
  through its own linear *multi-head representer* into ``H_u`` heads of size ``k``; the item tower's last layer
  likewise into ``H_i`` heads; the score sums, over user layers and user heads, the best-matching item head:

  .. math::

      s = \sum_{l=1}^{L} \sum_{h=1}^{H_u} \max_{h'} \langle u^{l, h}, v^{h'} \rangle

  (the user's early layers meet the item representation: interaction before the towers' ends, still
  decoupled, so both sides can be cached);
* **CIR** (contrastive interaction regularisation): InfoNCE between the user tower's last layer and the item
  tower's last layer, cosine similarity at temperature ``tau_c``: for every positive pair ``(b, j)``,
  ``-log exp(cos(u_b, v_bj)/tau_c) / sum_{(b', j') valid in the batch} exp(cos(u_b, v_b'j')/tau_c)``, averaged
  over the positive pairs (in-batch negatives: every other valid candidate of every request), weighted by
  ``lambda_cir`` and added to the ranking loss through :mod:`cascade_ranking.models.auxiliary`.

**Serving split**: :meth:`IntTower.user_heads` ``[B, L, H_u, k]`` once per request and :meth:`IntTower.item_heads`
``[..., H_i, k]`` once per item (cacheable); :meth:`IntTower.score_from_cache` is the max-sum above.

**Our choices**: MLP towers of ``layers`` (3) ReLU layers of width ``hidden`` (the released configuration uses
three layers of 300); ``H_u = H_i = 2`` heads of ``k = 16``; the user tower reads the user and context fields
and the masked-mean history as one more field (uniform embedding sizes required by Light-SE's field view);
``tau_c = 0.1``, ``lambda_cir = 0.1``; positives as :func:`~cascade_ranking.models.auxiliary.positives`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import DatasetSchema
from ..types import RequestBatch
from .auxiliary import AuxiliaryLossStore, positives
from .embedding import FeatureEncoder

__all__ = ["IntTower", "LightSE", "contrastive_interaction_loss", "fe_score"]


class LightSE(nn.Module):
    """Light-SE over ``F`` fields: ``[..., F, e] -> [..., F, e]``, ``E + softmax(W mean_e(E) + b) (.) E``."""

    def __init__(self, fields: int) -> None:
        super().__init__()
        self.excitation = nn.Linear(fields, fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.excitation(x.mean(-1)), dim=-1)
        return x + x * a.unsqueeze(-1)


def fe_score(user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """FE-Block score ``sum_l sum_h max_h' <user[l, h], item[h']>``.

    Args:
        user: ``[B, L, H_u, k]``.
        item: ``[B, N, H_i, k]`` or a shared ``[N, H_i, k]``.

    Returns:
        ``[B, N]``.
    """
    if item.dim() == 3:
        item = item.unsqueeze(0)
    sims = torch.einsum("blhk,bngk->bnlhg", user, item.expand(user.shape[0], *item.shape[1:]))
    return sims.amax(-1).sum((-2, -1))


def contrastive_interaction_loss(
    user: torch.Tensor, item: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor, *, tau: float
) -> torch.Tensor:
    """In-batch InfoNCE of the positive pairs (module docstring), 0-dim; 0 without a positive pair.

    Args:
        user: ``[B, D]`` user representations.
        item: ``[B, N, D]`` candidate representations.
        positive: ``[B, N]`` bool, positive pairs (a subset of ``valid``).
        valid: ``[B, N]`` bool, the in-batch candidates (negatives and positives).
        tau: temperature.
    """
    u = F.normalize(user, dim=-1)
    v = F.normalize(item, dim=-1).reshape(-1, item.shape[-1])  # [B*N, D]
    logits = u @ v.T / tau  # [B, B*N]
    flat_valid = valid.reshape(-1)
    logits = logits.masked_fill(~flat_valid.unsqueeze(0), torch.finfo(logits.dtype).min)
    log_p = torch.log_softmax(logits, dim=-1).view(user.shape[0], *valid.shape)  # [B, B, N]
    own = log_p.diagonal(dim1=0, dim2=1).T  # [B, N]: user b against its own candidates
    pos = positive & valid
    return -(torch.where(pos, own, torch.zeros_like(own))).sum() / pos.sum().clamp_min(1).to(own.dtype)


class IntTower(AuxiliaryLossStore, nn.Module):
    """IntTower scorer (see the module docstring).

    Args:
        schema: dataset schema.
        emb_dim: embedding size of every field (one size: Light-SE weighs fields of equal width).
        hidden: width of every tower layer.
        layers: tower depth ``L`` (default 3).
        heads_user, heads_item: ``H_u``, ``H_i`` (default 2 each).
        head_dim: ``k`` (default 16).
        cir: ``lambda_cir`` (default 0.1; 0 turns CIR off).
        cir_temperature: ``tau_c`` (default 0.1).
        positive_label: see :func:`~cascade_ranking.models.auxiliary.positives`.

    Raises:
        ValueError: bad sizes, differing embedding sizes, no user-side field.
    """

    def __init__(
        self,
        schema: DatasetSchema,
        *,
        emb_dim: int | str = 8,
        hidden: int = 128,
        layers: int = 3,
        heads_user: int = 2,
        heads_item: int = 2,
        head_dim: int = 16,
        cir: float = 0.1,
        cir_temperature: float = 0.1,
        positive_label: float | None = None,
    ) -> None:
        super().__init__()
        sizes = {"hidden": hidden, "layers": layers, "heads_user": heads_user, "heads_item": heads_item,
                 "head_dim": head_dim}  # fmt: skip
        for name, v in sizes.items():
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise ValueError(f"IntTower: {name} must be a positive integer, got {v!r}")
        if cir < 0 or not cir_temperature > 0:
            raise ValueError(f"IntTower: cir must be >= 0 and cir_temperature > 0, got {cir}, {cir_temperature}")
        self.encoder = FeatureEncoder(schema, emb_dim)
        enc = self.encoder
        e = enc.require_uniform("IntTower")
        user_fields = len(enc.user_fields) + len(enc.context_fields) + (1 if enc.history_fields else 0)
        if user_fields == 0 or not enc.item_fields:
            raise ValueError("IntTower needs a user-side field (user, context or history) and an item field")
        hist = len(enc.history_fields)
        self.history_fields = hist
        self.history_pool = nn.Linear(hist * e, e) if hist > 1 else None  # several history fields -> one field
        self.user_se = LightSE(user_fields)
        self.item_se = LightSE(len(enc.item_fields))
        self.user_layers = _tower(user_fields * e, hidden, layers)
        self.item_layers = _tower(len(enc.item_fields) * e, hidden, layers)
        self.user_heads_proj = nn.ModuleList([nn.Linear(hidden, heads_user * head_dim) for _ in range(layers)])
        self.item_heads_proj = nn.Linear(hidden, heads_item * head_dim)
        self.shape = (int(heads_user), int(heads_item), int(head_dim))
        self.cir, self.cir_temperature = float(cir), float(cir_temperature)
        self.positive_label = positive_label

    # -- towers (cacheable) ------------------------------------------------------------------------
    def _user_fields(self, batch: RequestBatch, user_context: torch.Tensor, history: torch.Tensor | None):
        e = self.encoder.emb_dim
        parts = [user_context.view(batch.batch_size, -1, e)]
        if self.history_fields:
            pooled = self.encoder.pooled_history(batch, history)
            if self.history_pool is not None:
                pooled = self.history_pool(pooled)
            parts.append(pooled.view(batch.batch_size, 1, e))
        return torch.cat(parts, dim=1)

    def _user_tower(self, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.user_se(fields).flatten(-2)
        heads = []
        for layer, proj in zip(self.user_layers, self.user_heads_proj):
            x = torch.relu(layer(x))
            heads.append(proj(x).view(*x.shape[:-1], self.shape[0], self.shape[2]))
        return torch.stack(heads, dim=-3), x  # [B, L, H_u, k], last layer [B, hidden]

    def _item_tower(self, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fields = embedded.view(*embedded.shape[:-1], -1, self.encoder.emb_dim)
        x = self.item_se(fields).flatten(-2)
        for layer in self.item_layers:
            x = torch.relu(layer(x))
        return self.item_heads_proj(x).view(*x.shape[:-1], self.shape[1], self.shape[2]), x

    def user_heads(self, batch: RequestBatch) -> torch.Tensor:
        """User multi-head representations of every tower layer ``[B, L, H_u, k]``."""
        return self._user_tower(self._user_fields(batch, self.encoder.user_context(batch), None))[0]

    def item_heads(self, item: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item multi-head representations ``[..., H_i, k]`` for ids of any shape (``[B, N]`` or ``[M]``)."""
        return self._item_tower(self.encoder.embed_items(item))[0]

    def score_from_cache(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, N]`` from :meth:`user_heads` and :meth:`item_heads` outputs (:func:`fe_score`)."""
        return fe_score(user, items)

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        """Logits ``[B, N]``; in training mode also keeps the weighted CIR loss."""
        enc = self.encoder.encode(batch)
        user, u_last = self._user_tower(self._user_fields(batch, enc.user_context, enc.history))
        items, v_last = self._item_tower(enc.require_items())
        if self.training and self.cir:
            y = positives(batch, self.positive_label)
            cir = contrastive_interaction_loss(u_last, v_last, y, batch.mask, tau=self.cir_temperature)
            self._keep_auxiliary({"cir": self.cir * cir})
        return fe_score(user, items)


def _tower(in_dim: int, hidden: int, layers: int) -> nn.ModuleList:
    return nn.ModuleList([nn.Linear(in_dim if i == 0 else hidden, hidden) for i in range(layers)])
