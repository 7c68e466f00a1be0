"""MIAN: Multi-Interactive Attention Network (Zhang et al., WSDM 2021).

Embedding layer (Eq. 1-2) -> three local modules, IBIM (Pre-LN Transformer over the behaviours,
then Eq. 7-9 attention against the candidate item), IUIM (Eq. 10-11 over the user fields) and ICIM
(Eq. 12-13 over the context fields) -> GIM (Eq. 14-15) over the seven representations
[e_i, e_c, e_b, e_u, R_ibim, R_iuim, R_icim] -> prediction MLP -> one logit (the sigmoid and the
binary cross-entropy of the paper's loss are the trainer's job).

Where the paper is silent the project's resolutions in ../shared/paper/MIAN.md section 7 are
followed ("7.n" below); the choices made here are listed in docs/MIAN.md.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.config import ModelConfig, choice
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding
from bench.nn.mlp import ACTIVATIONS, MLP
from bench.nn.pooling import masked_mean
from mian.layers import (
    GIM_MODES,
    IBIM_SCORES,
    TRANSFORMER_KINDS,
    BehaviourAttention,
    BehaviourEncoder,
    FieldAttention,
    GlobalInteraction,
)

log = logging.getLogger(__name__)

#: The seven GIM inputs in the paper's order (Eq. 14); the columns of ``MIANOutput.gim_weights``.
GIM_INPUTS: tuple[str, ...] = ("e_i", "e_c", "e_b", "e_u", "R_ibim", "R_iuim", "R_icim")


@dataclass
class MIANOutput(ModelOutput):
    """What :meth:`MIAN.forward` returns.

    logits: [B] pre-sigmoid click scores.
    gim_weights: [B, 7] GIM softmax weights (Eq. 15) in the order of :data:`GIM_INPUTS`, exactly 0
        for a representation that is absent (1/k for each of the k present ones with
        ``gim_mode="uniform"``); None when GIM is off.
    ibim_weights: [B, T] behaviour weights alpha_t (Eq. 7), 0 on padding; None when IBIM is off.
    iuim_weights: [B, J] user-field weights alpha_j (Eq. 10); None when IUIM is off.
    icim_weights: [B, K] context-field weights (Eq. 13); None when ICIM is off.
    aux_loss is always None. ``attention`` holds the same tensors under the names
    "gim", "ibim", "iuim", "icim" (present modules only).
    """

    gim_weights: torch.Tensor | None = None
    ibim_weights: torch.Tensor | None = None
    iuim_weights: torch.Tensor | None = None
    icim_weights: torch.Tensor | None = None


class MIAN(nn.Module):
    """Multi-Interactive Attention Network for CTR prediction (Zhang et al., WSDM 2021, Sec. 3).

    Args:
        schema: the dataset's feature schema (item fields F_i, user fields J, context fields K,
            max_len T).
        cfg: a :class:`MIAN.Config`.
        item_table: unused (accepted for the shared model signature).
        trim_padding: run IBIM only on the slots where some row of the batch has a real behaviour
            (exact: the model is invariant to extra left padding; a speed-up only, so not part of
            the Config nor of the run id).
        length_buckets: the Transformer encodes rows grouped by history length into up to this
            many buckets, each on its own trailing window of slots (1 = one pass over all slots);
            exact, a speed-up only (see BehaviourEncoder), not part of the Config.
    Forward: ``batch`` (bench.nn.contract.Batch, histories left-padded, any T <= schema.max_len) ->
        :class:`MIANOutput` (logits [B] and the attention weights of every present module).
    Raises:
        ValueError (at construction): ICIM on with no context fields (K = 0), IUIM on with no
        user fields, n_heads not dividing F_i * embed_dim, ``trim_padding`` not a bool or
        ``length_buckets`` not an integer >= 1 (a value out of range is refused by the Config
        itself, ConfigError from bench.nn.config).
        ValueError (in forward): a batch whose T exceeds schema.max_len.
    """

    @dataclass(frozen=True)
    class Config(ModelConfig):
        """Every hyper-parameter of MIAN (defaults justified in docs/MIAN.md).

        embed_dim: embedding size per field (PROTOCOL section 3).
        mlp: hidden sizes of the prediction MLP (PROTOCOL section 3, 7.6).
        mlp_activation: the prediction MLP's activation, 7.6 ("200-80 with PReLU/Dice", as DIN /
            DIEN): "relu" (default) | "prelu" | "dice" (bench.nn.mlp.Dice, DIN Eq. 9).
        mlp_dropout: dropout after each hidden MLP layer.
        use_ibim, use_iuim, use_icim, use_gim: the four modules (Table 3 ablation).
        transformer: "pre_ln" (paper) | "post_ln" (Table 4 "w/ Transformer") | "none"
            (Table 4 "w/o both": Eq. 7-9 on the raw behaviour embeddings), 7.9.
        ibim_score: the score of Eq. (8), 7.2: "per_slot" (default: W_t, b_t per behaviour slot, the
            subscript read literally) | "shared" (one W, b for every slot) | "bilinear" (per slot
            plus e_i^T M h_t, M a learned [D_i, D_i] matrix: the candidate can pick the behaviours
            similar to it, which Eq. 8's additive score cannot). See mian.layers.BehaviourAttention.
        n_layers, n_heads, ffn_dim, dropout, positional: the behaviour Transformer (7.1);
            ffn_dim None = the behaviour width F_i * embed_dim (SASRec's choice).
        gim_dim: common width D of the GIM projections (7.4a).
        gim_mode: what GIM (Eq. 14-15) hands the MLP, 7.4 / 7.6: "sum" (default, 7.4a: R_g =
            sum_l alpha_l p_l of the projected representations, alone) | "concat" (7.4b: the
            weighted concatenation [alpha_1 r_1; ...; alpha_7 r_7], scores on the raw r_l) |
            "sum_concat" (7.6: [R_g; r_g], r_g the concatenation of Eq. 14) | "uniform" (a control:
            alpha_l = 1/k over the k present representations, otherwise "sum"). Ignored when
            use_gim is False. Left out of the resolved config (and the run id) while "sum", so
            the records made before it existed keep their ids (bench.nn.config.omitted_at_default).
            See mian.layers.GlobalInteraction.

        The exact speed paths (``trim_padding``, ``length_buckets``) are constructor arguments of
        :class:`MIAN`, not fields here: they do not change the model, so not the run id.
        """

        embed_dim: int = 16
        mlp: tuple[int, ...] = (200, 80)
        mlp_activation: str = choice("relu", ACTIVATIONS)
        mlp_dropout: float = 0.0
        use_ibim: bool = True
        use_iuim: bool = True
        use_icim: bool = True
        use_gim: bool = True
        transformer: str = choice("pre_ln", TRANSFORMER_KINDS)
        ibim_score: str = choice("per_slot", IBIM_SCORES)
        n_layers: int = 1
        n_heads: int = 2
        ffn_dim: int | None = None
        dropout: float = 0.0
        positional: bool = True
        gim_dim: int = 128
        gim_mode: str = choice("sum", GIM_MODES, omit_at_default=True)

    def __init__(
        self,
        schema: FeatureSchema,
        cfg: "MIAN.Config | None" = None,
        item_table: torch.Tensor | None = None,
        *,
        trim_padding: bool = True,
        length_buckets: int = 4,
    ):
        super().__init__()
        if not isinstance(trim_padding, bool):
            raise ValueError(f"MIAN: trim_padding must be True or False, got {trim_padding!r}")
        if isinstance(length_buckets, bool) or not isinstance(length_buckets, int) or length_buckets < 1:
            raise ValueError(f"MIAN: length_buckets must be an integer >= 1, got {length_buckets!r}")
        cfg = cfg if cfg is not None else MIAN.Config()
        self.schema = schema
        self.cfg = cfg
        self.trim_padding = trim_padding
        self.length_buckets = length_buckets
        d = cfg.embed_dim
        F_i, J, K, T = (
            schema.n_item_fields,
            schema.n_user_fields,
            schema.n_context_fields,
            schema.max_len,
        )
        if F_i < 1 or T < 1:
            raise ValueError(f"MIAN needs at least one item field and max_len >= 1, got {F_i}, {T}")
        if cfg.use_icim and K == 0:
            raise ValueError(
                "MIAN: ICIM is on (use_icim=True) but the dataset has no context fields; "
                "set use_icim=False for this dataset"
            )
        if cfg.use_iuim and J == 0:
            raise ValueError(
                "MIAN: IUIM is on (use_iuim=True) but the dataset has no user fields; "
                "set use_iuim=False for this dataset"
            )
        item_dim = F_i * d  # D_i: e_i, and one behaviour token, is the concatenation of F_i fields
        self.item_dim = item_dim

        # Eq. (1)-(2): one table per field, candidate and behaviours share the item tables.
        self.embedding = FeatureEmbedding(schema, d)

        # IBIM (Sec. 3.2.2): Transformer over the behaviours, then Eq. (7)-(9).
        self.encoder: BehaviourEncoder | None = None
        self.ibim: BehaviourAttention | None = None
        if cfg.use_ibim:
            if cfg.transformer != "none":
                self.encoder = BehaviourEncoder(
                    d_model=item_dim,
                    n_heads=cfg.n_heads,
                    n_layers=cfg.n_layers,
                    ffn_dim=cfg.ffn_dim if cfg.ffn_dim is not None else item_dim,
                    dropout=cfg.dropout,
                    kind=cfg.transformer,
                    max_len=T,
                    positional=cfg.positional,
                    length_buckets=length_buckets,
                )
            self.ibim = BehaviourAttention(item_dim, item_dim, T, cfg.ibim_score)
        # IUIM (Eq. 10-11) and ICIM (Eq. 12-13).
        self.iuim = FieldAttention(J, item_dim, d) if cfg.use_iuim else None
        self.icim = FieldAttention(K, item_dim, d) if cfg.use_icim else None

        # Widths of [e_i, e_c, e_b, e_u, R_ibim, R_iuim, R_icim] (Eq. 14); 0 = absent.
        self.rep_dims: tuple[int, ...] = (
            item_dim,
            K * d,
            item_dim,  # e_b, mean-pooled over the real behaviours (7.4a)
            J * d,
            self.ibim.out_dim if self.ibim is not None else 0,
            self.iuim.out_dim if self.iuim is not None else 0,
            self.icim.out_dim if self.icim is not None else 0,
        )
        # GIM (Eq. 14-15); without it the representations are concatenated into the MLP.
        self.gim = GlobalInteraction(self.rep_dims, cfg.gim_dim, cfg.gim_mode) if cfg.use_gim else None
        mlp_in = self.gim.out_dim if self.gim is not None else sum(self.rep_dims)
        self.mlp = MLP(mlp_in, cfg.mlp, out_dim=1, activation=cfg.mlp_activation, dropout=cfg.mlp_dropout)
        log.debug("MIAN built: %s, representation widths %s", dataclasses.asdict(cfg), self.rep_dims)

    def forward(self, batch: Batch) -> MIANOutput:
        B, T_in = batch.hist.shape[:2]
        if T_in > self.schema.max_len:
            raise ValueError(
                f"MIAN: batch has {T_in} behaviour slots, more than the schema's max_len "
                f"{self.schema.max_len}"
            )
        if T_in == 0:
            raise ValueError("MIAN: batch has no behaviour slots (hist of shape [B, 0, F_i])")
        if self.trim_padding:
            batch = batch.trim_padding()  # exact: positions and W_t count back from the most recent slot
        emb = self.embedding(batch)
        T = emb.e_b.shape[1]
        e_i = emb.e_i.reshape(B, self.item_dim)  # [B, D_i]
        e_b = emb.e_b.reshape(B, T, self.item_dim)  # [B, T, D_i], 0 on padding
        mask = emb.mask

        r_ibim = r_iuim = r_icim = None
        ibim_w = iuim_w = icim_w = None
        if self.ibim is not None:
            h = self.encoder(e_b, mask) if self.encoder is not None else e_b  # 7.9 (ii) for "none"
            r_ibim, ibim_w = self.ibim(e_i, h, mask)  # [B, 2 D_i], [B, T]
            if T < T_in:
                ibim_w = nn.functional.pad(ibim_w, (T_in - T, 0))
        if self.iuim is not None:
            r_iuim, iuim_w = self.iuim(e_i, emb.e_u)  # [B, D_i + d], [B, J]
        if self.icim is not None:
            r_icim, icim_w = self.icim(e_i, emb.e_c)  # [B, D_i + d], [B, K]

        reps = (
            e_i,
            emb.e_c.reshape(B, -1),
            masked_mean(e_b, mask),  # e_b of GIM (7.4a): the mean over the real behaviours, 0 if none
            emb.e_u.reshape(B, -1),
            r_ibim,
            r_iuim,
            r_icim,
        )
        reps = tuple(r if w > 0 else None for r, w in zip(reps, self.rep_dims))
        gim_w = None
        if self.gim is not None:
            top, gim_w = self.gim(reps)  # [B, gim.out_dim] (R_g for "sum"), [B, 7]
        else:
            top = torch.cat([r for r in reps if r is not None], -1)  # r_g of Eq. (14)
        logits = self.mlp(top).squeeze(-1)

        named = {"gim": gim_w, "ibim": ibim_w, "iuim": iuim_w, "icim": icim_w}
        return MIANOutput(
            logits=logits,
            aux_loss=None,
            attention={k: v for k, v in named.items() if v is not None},
            gim_weights=gim_w,
            ibim_weights=ibim_w,
            iuim_weights=iuim_w,
            icim_weights=icim_w,
        )


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "mian", "MIAN", MIAN
