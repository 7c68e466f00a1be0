"""The DeepCTR-Torch 0.3.0 peer of the efficiency benchmark (docs/EFFICIENCY.md): its import,
feature columns and inputs converted from our prepared splits, its models built with our
hyper-parameters, and :class:`DeepCTRAdapter`, through which ``bench.training.train.Trainer`` trains it by
the protocol (``fit(..., epochs=1)`` per epoch, validation AUC with ``bench.metrics``, early
stopping, best epoch restored, test scored once with their ``predict``).
"""
from __future__ import annotations

import contextlib
import io
import sys
import time
from typing import Any, Iterator

import numpy as np
import torch

from bench.training.config import TrainConfig
from bench.metrics import auc, gauc, logloss
from bench.training.runtime import synchronize

PEERS = ("deepctr-torch",)
PEER_VERSION = "0.3.0"
PEER_INSTALL = f'pip install deepctr-torch=={PEER_VERSION}   (or: pip install -e ".[peer]")'

#: our model -> the DeepCTR-Torch model run as its peer (None: no counterpart)
DEEPCTR_MODELS: dict[str, str | None] = {
    "lr": "WDL (linear part only)",
    "wide_deep": "WDL",
    "dcn": "DCN",
    "deepfm": "DeepFM",
    "xdeepfm": "xDeepFM",
    "din": "DIN",
    "dien": "DIEN",
    "mian": None,
}

#: the workarounds the DeepCTR-Torch 0.3.0 peer needs; written under the table
DEEPCTR_WORKAROUNDS = (
    "imported without running its package __init__, which starts a PyPI version check in a thread "
    "(and needs `requests`, not a declared dependency); the models and layers are imported directly",
    "fit/predict cast every input column to float32 (ids included): checked exact (every vocabulary "
    "< 2^24) before training",
    "fit/predict print the device and a summary line: stdout silenced; verbose=0 (no tqdm bar, no "
    "per-step training metrics)",
    "their loss is BCE with reduction='sum': compiled with a mean-reduced BCE callable instead, the "
    "protocol's loss (their DIEN auxiliary loss is added to it as in ours)",
    "DNN(activation='dice') builds Dice for 3-D inputs (dice_dim=3) and fails on the 2-D DNN input: "
    "DIN's and DIEN's DNN activations replaced by their own Dice(dim=2) after construction",
    "xDeepFM sizes its CIN by the number of embedding tables, not of fields; with behaviour fields "
    "sharing the item tables the CIN (and its output unit) is rebuilt for the real field count",
    "histories converted from our left padding to right padding plus a length column, and DIEN's "
    "negative sequences drawn, outside every timed region",
)


class PeerUnavailable(RuntimeError):
    """The peer library is not installed; the message says how to install it."""




def peer_installed(peer: str = "deepctr-torch") -> bool:
    """True when the peer library can be imported (nothing is imported here)."""
    import importlib.util

    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {', '.join(PEERS)}")
    return importlib.util.find_spec("deepctr_torch") is not None


def import_deepctr():
    """``(deepctr_torch.models, deepctr_torch.inputs, deepctr_torch.layers, version)`` without
    executing the package's ``__init__`` (a PyPI version check in a thread; it also needs
    ``requests``). Raises PeerUnavailable naming the install command when it is absent."""
    import importlib
    import importlib.metadata
    import importlib.util

    if "deepctr_torch" not in sys.modules:
        spec = importlib.util.find_spec("deepctr_torch")
        if spec is None:
            raise PeerUnavailable(f"--peer deepctr-torch needs DeepCTR-Torch: {PEER_INSTALL}")
        pkg = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
        sys.modules["deepctr_torch"] = pkg
    try:
        version = importlib.metadata.version("deepctr-torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    models = importlib.import_module("deepctr_torch.models")
    inputs = importlib.import_module("deepctr_torch.inputs")
    layers = importlib.import_module("deepctr_torch.layers")
    return models, inputs, layers, version


def right_pad(hist: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Left-padded histories [N, T, ...] (real behaviours in the LAST ``lengths`` slots) ->
    right-padded (real behaviours first, same order, zeros after). Vectorised gather."""
    N, T = hist.shape[:2]
    src = (np.arange(T)[None, :] + (T - lengths)[:, None]) % T  # slot j <- slot j + T - L
    out = np.take_along_axis(hist, src.reshape(N, T, *([1] * (hist.ndim - 2))), axis=1)
    keep = np.arange(T)[None, :] < lengths[:, None]
    return out * keep.reshape(N, T, *([1] * (hist.ndim - 2))).astype(out.dtype)


def _names(schema) -> tuple[list[str], list[str], list[str]]:
    """DeepCTR feature names of the item, user and context fields (prefixed: field names of
    different groups may coincide)."""
    return ([f"item_{f.name}" for f in schema.item_fields], [f"user_{f.name}" for f in schema.user_fields],
            [f"ctx_{f.name}" for f in schema.context_fields])


def deepctr_columns(schema, inputs, embed_dim: int, negatives: bool):
    """Feature columns from our FeatureSchema: SparseFeat per item/user/context field, and a
    VarLenSparseFeat ``hist_<item field>`` per item field sharing that field's embedding (mean
    combiner, length column ``hist_len``); with ``negatives`` also ``neg_hist_<item field>``."""
    SparseFeat, VarLenSparseFeat = inputs.SparseFeat, inputs.VarLenSparseFeat
    items, users, ctx = _names(schema)
    fields = list(schema.item_fields) + list(schema.user_fields) + list(schema.context_fields)
    sparse = [SparseFeat(n, f.vocab_size, embedding_dim=embed_dim, embedding_name=n)
              for n, f in zip(items + users + ctx, fields)]
    varlen = []
    for prefix in ("hist_",) + (("neg_hist_",) if negatives else ()):
        varlen += [VarLenSparseFeat(SparseFeat(prefix + n, f.vocab_size, embedding_dim=embed_dim, embedding_name=n),
                                    maxlen=schema.max_len, combiner="mean", length_name="hist_len")
                   for n, f in zip(items, schema.item_fields)]
    return sparse, varlen, items


def deepctr_inputs(split, schema, item_table: np.ndarray | None, neg_seed: int | None) -> dict[str, np.ndarray]:
    """One split as DeepCTR's input dict {feature name: int64 array}: [N] per field, [N, T] per
    history field (right-padded), ``hist_len`` [N]; with ``neg_seed`` also ``neg_hist_*``: item ids
    drawn uniformly from [2, V_item_id) (numpy generator seeded by ``neg_seed``), their item fields
    from ``item_table``, zero beyond each row's length."""
    items, users, ctx = _names(schema)
    lengths = split.hist_mask.sum(1).numpy().astype(np.int64)
    hist = right_pad(split.hist.numpy(), lengths)
    x: dict[str, np.ndarray] = {}
    for j, n in enumerate(items):
        x[n] = split.item[:, j].numpy()
        x["hist_" + n] = np.ascontiguousarray(hist[:, :, j])
    for j, n in enumerate(users):
        x[n] = split.user[:, j].numpy()
    for j, n in enumerate(ctx):
        x[n] = split.context[:, j].numpy()
    x["hist_len"] = lengths
    if neg_seed is not None:
        N, T = hist.shape[:2]
        rng = np.random.default_rng(neg_seed)
        neg_ids = rng.integers(2, item_table.shape[0], size=(N, T))
        neg = item_table[neg_ids] * (np.arange(T)[None, :] < lengths[:, None])[..., None]
        for j, n in enumerate(items):
            x["neg_hist_" + n] = np.ascontiguousarray(neg[:, :, j])
    return x


def build_deepctr(name: str, schema, cfg: dict[str, Any], device: str, seed: int, api) -> torch.nn.Module:
    """The DeepCTR-Torch peer of our ``name`` with our hyper-parameters: embedding ``embed_dim``,
    DNN ``mlp`` (ReLU; Dice for DIN/DIEN as ours), cross ``cross_layers``, CIN ``cin``, DIN
    attention ``att_mlp``; no L2, no dropout, embedding/DNN init N(0, 0.01^2) (our embedding
    init; DeepCTR's default is 1e-4)."""
    models, inputs, layers, _ = api
    embed = int(cfg.get("embed_dim", 16))
    mlp = tuple(cfg.get("mlp", (200, 80)))
    sparse, varlen, items = deepctr_columns(schema, inputs, embed, negatives=(name == "dien"))
    common = dict(init_std=0.01, seed=seed, device=device, l2_reg_embedding=0.0)
    dice = False
    if name == "lr":
        model = models.WDL(sparse + varlen, [], dnn_hidden_units=(), l2_reg_linear=0.0, **common)
    elif name == "wide_deep":
        model = models.WDL(sparse + varlen, sparse + varlen, dnn_hidden_units=mlp, l2_reg_linear=0.0, **common)
    elif name == "dcn":
        model = models.DCN([], sparse + varlen, cross_num=int(cfg.get("cross_layers", 3)),
                           cross_parameterization="vector", dnn_hidden_units=mlp, l2_reg_linear=0.0,
                           l2_reg_cross=0.0, **common)
    elif name == "deepfm":
        model = models.DeepFM(sparse + varlen, sparse + varlen, dnn_hidden_units=mlp, l2_reg_linear=0.0, **common)
    elif name == "xdeepfm":
        cin = tuple(cfg.get("cin", (100, 100)))
        split_half = bool(cfg.get("cin_split_half", False))
        model = models.xDeepFM(sparse + varlen, sparse + varlen, dnn_hidden_units=mlp, cin_layer_size=cin,
                               cin_split_half=split_half, cin_activation="linear", l2_reg_linear=0.0,
                               l2_reg_cin=0.0, **common)
        m = len(sparse) + len(varlen)  # fields fed to the CIN (pooled behaviours included)
        if model.cin.field_nums[0] != m:  # workaround: CIN sized by embedding tables
            model.cin = layers.CIN(m, cin, "linear", split_half, 0.0, seed, device=device)
            model.cin_linear = torch.nn.Linear(model.featuremap_num, 1, bias=False).to(device)
    elif name == "din":
        model = models.DIN(sparse + varlen[: len(items)], items, dnn_hidden_units=mlp,
                           att_hidden_size=tuple(cfg.get("att_mlp", (80, 40))),
                           att_activation="Dice" if cfg.get("att_activation", "dice") == "dice" else cfg["att_activation"],
                           att_weight_normalization=bool(cfg.get("softmax", False)), **common)
        dice = cfg.get("mlp_activation", "dice") == "dice"
    elif name == "dien":
        model = models.DIEN(sparse + varlen, items, gru_type="AUGRU", use_negsampling=True,
                            alpha=float(cfg.get("aux_weight", 1.0)), dnn_hidden_units=mlp,
                            att_hidden_units=(80, 40), **common)
        dice = cfg.get("mlp_activation", "dice") == "dice"
    else:
        raise ValueError(f"no DeepCTR-Torch peer for {name!r}")
    if dice:  # workaround: DNN(activation="dice") builds 3-D Dice layers for a 2-D input
        from deepctr_torch.layers.activation import Dice

        model.dnn.activation_layers = torch.nn.ModuleList(
            [Dice(h, dim=2, device=device) for h in mlp]).to(device)
    return model


def _mean_bce(y_pred: torch.Tensor, y_true: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The protocol's loss for DeepCTR's ``compile``: mean BCE on their sigmoid outputs (their
    fit passes ``reduction='sum'``, ignored on purpose)."""
    return torch.nn.functional.binary_cross_entropy(y_pred, y_true)


class DeepCTRAdapter:
    """A compiled DeepCTR-Torch model as a ``bench.training.train.EpochAdapter``: one ``fit(..., epochs=1,
    shuffle=True)`` per epoch (stdout silenced, no mid-epoch validation), scores from their
    ``predict`` with ``bench.metrics`` (AUC, logloss and gAUC on their sigmoid outputs).

    x / y / users: DeepCTR inputs (:func:`deepctr_inputs`), float32 labels and user keys of the
    splits "train", "valid", "test" (users of "valid" and "test" only). ``fit_seconds``: seconds of
    each ``fit`` call (device synchronised).
    """

    def __init__(self, model: torch.nn.Module, x: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray],
                 users: dict[str, np.ndarray], batch_size: int, eval_batch_size: int, device: torch.device):
        self.model, self.x, self.y, self.users, self.device = model, x, y, users, device
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.steps = 0
        self.fit_seconds: list[float] = []
        self._train_loss = float("nan")

    def fit_epoch(self, epoch: int) -> Iterator[None]:
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            history = self.model.fit(self.x["train"], self.y["train"], batch_size=self.batch_size, epochs=1,
                                     verbose=0, shuffle=True)
            synchronize(self.device)
            self.fit_seconds.append(time.perf_counter() - t0)
        n = len(self.y["train"])
        steps = -(-n // self.batch_size)
        self.steps += steps
        # their epoch "loss" is the sum of the per-step mean losses / N: back to the mean per step
        self._train_loss = history.history["loss"][-1] * n / steps
        return iter(())

    def predict(self, split: str) -> np.ndarray:
        """Their sigmoid outputs [N] on ``split``."""
        with contextlib.redirect_stdout(io.StringIO()):
            return self.model.predict(self.x[split], batch_size=self.eval_batch_size).reshape(-1)

    def score(self, split: str) -> dict[str, float]:
        p, y = self.predict(split), self.y[split]
        return {"auc": auc(y, p), "logloss": logloss(y, p), "gauc": gauc(y, p, self.users[split])}

    def take_train_loss(self) -> float:
        loss, self._train_loss = self._train_loss, float("nan")
        return loss


def deepctr_adapter(ds, model_name: str, cfg: dict[str, dict[str, Any]], device: torch.device, seed: int,
                    api) -> DeepCTRAdapter:
    """The peer of our ``model_name`` on the prepared dataset ``ds`` with the resolved config
    ``cfg``: inputs converted (DIEN's negatives seeded by ``seed``), model built
    (:func:`build_deepctr`) and compiled with Adam and the protocol's mean BCE.

    Raises ValueError when a vocabulary is not exact in DeepCTR's float32 input cast (>= 2^24)
    or when ``model_name`` has no peer.
    """
    schema = ds.schema
    biggest = max(f.vocab_size for f in (*schema.item_fields, *schema.user_fields, *schema.context_fields))
    if biggest >= 2**24:
        raise ValueError(f"a vocabulary of {biggest} ids is not exact in DeepCTR's float32 input cast")
    table = ds.item_table.numpy()
    neg = model_name == "dien"
    x = {s: deepctr_inputs(ds.split(s), schema, table, (seed * 1000 + k) if neg else None)
         for k, s in enumerate(("train", "valid", "test"))}
    y = {s: ds.split(s).label.numpy().astype(np.float32) for s in ("train", "valid", "test")}
    users = {s: ds.split(s).user_index.numpy() for s in ("valid", "test")}
    model = build_deepctr(model_name, schema, cfg["model"], str(device), seed, api)
    tcfg = TrainConfig(**cfg["train"])
    model.compile(torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay),
                  loss=_mean_bce, metrics=[])
    return DeepCTRAdapter(model, x, y, users, tcfg.batch_size, tcfg.eval_batch_size, device)


def peer_notes(version: str) -> list[str]:
    """The notes under the efficiency table that describe the peer (DeepCTR-Torch ``version``)."""
    return [
        f"Peer: DeepCTR-Torch {version} (WDL, DCN, DeepFM, xDeepFM, DIN, DIEN; LR = WDL without DNN; "
        "no MIAN) fed from the same prepared arrays: SparseFeat per item/user/context field, "
        "VarLenSparseFeat hist_<item field> sharing the item field's embedding (mean-pooled for "
        "the non-sequence models, as ours), right-padded with a length column; DIEN with "
        "gru_type=AUGRU, use_negsampling=True, negatives drawn once per sample from the item table "
        "(seeded), its attention MLP (80, 40); same embedding 16, DNN, cross layers, CIN, DIN "
        "attention (80, 40), batch, Adam lr as ours; no L2 and no dropout (ours have none); "
        "init std 0.01.",
        "DeepCTR train samples/s = N_train / seconds of one fit(..., epochs=1) of a freshly seeded "
        "model (their DataLoader and per-step host work included). Ratio = OUR epoch-based "
        "train samples/s / theirs (infer_ratio in the CSV: the same for scoring). DeepCTR test "
        "AUC: fit one epoch at a time, validation AUC with bench.metrics after each, patience and "
        "max epochs from the config, best epoch's weights restored, test scored once with their "
        "predict and bench.metrics.",
        "Workarounds for DeepCTR-Torch: " + "; ".join(DEEPCTR_WORKAROUNDS) + ".",
    ]
