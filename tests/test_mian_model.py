"""MIAN end to end: shapes, masks, padding invariance, empty histories, switches, training."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch.nn import functional as F

from bench.nn.config import ConfigError
from bench.nn.contract import Batch
from bench.training.registry import build_model, count_params, make_config
from conftest import make_split, repad, separable_split, tiny_schema
from mian.model import GIM_INPUTS, MIAN, MIANOutput

TRANSFORMERS = ("pre_ln", "post_ln", "none")
SCORES = ("per_slot", "shared", "bilinear")
#: the readings of MIAN.md 7.4 / 7.6 other than the default (Config overrides)
READINGS = [{"gim_mode": "concat"}, {"gim_mode": "sum_concat"}, {"gim_mode": "uniform"},
            {"ibim_score": "bilinear"}, {"mlp_activation": "prelu"}, {"mlp_activation": "dice"}]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(schema, seed: int = 0, trim_padding: bool = True, length_buckets: int = 4, **params) -> MIAN:
    """MIAN with Config ``params`` and the constructor's speed paths (defaults: the fast ones)."""
    torch.manual_seed(seed)
    return MIAN(schema, make_config(MIAN.Config, params), trim_padding=trim_padding, length_buckets=length_buckets)


def _randomise_biases(model: MIAN) -> None:
    """Zero-initialised biases (and the bilinear score's M) would hide bugs in the per-slot /
    per-field indexing."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (name.endswith("bias") or name.endswith("bilinear")) and "embedding" not in name:
                p.normal_(std=0.5)


def _batch(schema, n=12, seed=0, lengths=None) -> Batch:
    return make_split(schema, n=n, seed=seed, lengths=lengths).take(slice(0, n))


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_output_type_and_shapes_of_every_intermediate():
    schema = tiny_schema(n_context=3, n_user=2, max_len=8)
    model = _model(schema)
    B, T, F_i, d, J, K = 6, 8, 2, 16, 2, 3
    D_i = F_i * d
    batch = _batch(schema, n=B, lengths=[8, 5, 1, 0, 3, 8])
    out = model(batch)
    assert isinstance(out, MIANOutput)
    assert out.logits.shape == (B,) and out.aux_loss is None
    assert out.gim_weights.shape == (B, 7)
    assert out.ibim_weights.shape == (B, T)
    assert out.iuim_weights.shape == (B, J)
    assert out.icim_weights.shape == (B, K)
    assert set(out.attention) == {"gim", "ibim", "iuim", "icim"}
    assert out.attention["gim"] is out.gim_weights

    emb = model.embedding(batch)
    assert emb.e_i.shape == (B, F_i, d) and emb.e_b.shape == (B, T, F_i, d)
    assert emb.e_u.shape == (B, J, d) and emb.e_c.shape == (B, K, d)
    e_i, e_b = emb.e_i.reshape(B, D_i), emb.e_b.reshape(B, T, D_i)
    h = model.encoder(e_b, emb.mask)
    assert h.shape == (B, T, D_i)
    r_ibim, a_ibim = model.ibim(e_i, h, emb.mask)
    assert r_ibim.shape == (B, 2 * D_i) and a_ibim.shape == (B, T)
    r_iuim, _ = model.iuim(e_i, emb.e_u)
    r_icim, _ = model.icim(e_i, emb.e_c)
    assert r_iuim.shape == (B, D_i + d) and r_icim.shape == (B, D_i + d)
    assert model.rep_dims == (D_i, K * d, D_i, J * d, 2 * D_i, D_i + d, D_i + d)
    reps = (e_i, emb.e_c.reshape(B, -1), e_b.mean(1), emb.e_u.reshape(B, -1), r_ibim, r_iuim, r_icim)
    r_g, w = model.gim(reps)
    assert r_g.shape == (B, model.cfg.gim_dim) and w.shape == (B, 7)
    assert model.mlp(r_g).shape == (B, 1)
    assert GIM_INPUTS == ("e_i", "e_c", "e_b", "e_u", "R_ibim", "R_iuim", "R_icim")


def test_registry_builds_mian_with_overrides():
    schema = tiny_schema()
    model = build_model("mian", schema, {"use_gim": False, "mlp": [32, 8]})
    assert isinstance(model, MIAN) and model.gim is None and model.cfg.mlp == (32, 8)


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_attention_weights_are_normalised_and_zero_on_padding(transformer):
    schema = tiny_schema(max_len=8)
    model = _model(schema, transformer=transformer)
    _randomise_biases(model)
    lengths = torch.tensor([8, 5, 1, 0, 3, 8, 2, 0])
    out = model(_batch(schema, n=8, lengths=lengths))
    mask = torch.arange(8).unsqueeze(0) >= (8 - lengths).unsqueeze(1)
    a = out.ibim_weights
    assert torch.all(a[~mask] == 0)
    assert torch.all(a[mask] > 0)
    expect = (lengths > 0).float()
    torch.testing.assert_close(a.sum(1), expect)
    torch.testing.assert_close(out.iuim_weights.sum(1), torch.ones(8))
    torch.testing.assert_close(out.icim_weights.sum(1), torch.ones(8))
    torch.testing.assert_close(out.gim_weights.sum(1), torch.ones(8))
    assert torch.all(out.gim_weights > 0)


@pytest.mark.parametrize(
    "transformer,score,trim,buckets",
    [
        (t, s, trim, b)
        for t, s in itertools.product(TRANSFORMERS, SCORES)
        for trim, b in [(False, 1), (True, 4)]
    ]
    + [("pre_ln", "per_slot", False, 4), ("pre_ln", "per_slot", True, 1)],
)
def test_same_history_padded_to_two_lengths_gives_the_same_output(transformer, score, trim, buckets):
    data_schema = tiny_schema(max_len=6)
    model_schema = tiny_schema(max_len=11)
    model = _model(
        model_schema, transformer=transformer, ibim_score=score, trim_padding=trim, length_buckets=buckets
    )
    _randomise_biases(model)
    model.eval()
    batch6 = _batch(data_schema, n=10, lengths=[6, 4, 1, 0, 6, 2, 3, 5, 6, 1])
    batch11 = repad(batch6, 11)
    # torch's inference fast path (as the trainer's inference_mode evaluation), then autograd
    for context in (torch.inference_mode, torch.no_grad, torch.enable_grad):
        with context():
            o6, o11 = model(batch6), model(batch11)
        torch.testing.assert_close(o6.logits, o11.logits, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(o6.ibim_weights, o11.ibim_weights[:, 5:], atol=1e-6, rtol=1e-6)
        assert torch.all(o11.ibim_weights[:, :5] == 0)
        torch.testing.assert_close(o6.gim_weights, o11.gim_weights, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: "-".join(map(str, r.values())))
def test_every_reading_is_padding_invariant(reading):
    data_schema = tiny_schema(max_len=6)
    model = _model(tiny_schema(max_len=11), **reading)
    _randomise_biases(model)
    model.eval()
    batch6 = _batch(data_schema, n=10, lengths=[6, 4, 1, 0, 6, 2, 3, 5, 6, 1])
    batch11 = repad(batch6, 11)
    for context in (torch.inference_mode, torch.enable_grad):
        with context():
            o6, o11 = model(batch6), model(batch11)
        torch.testing.assert_close(o6.logits, o11.logits, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(o6.gim_weights, o11.gim_weights, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "concat", "sum_concat", "uniform"])
def test_the_mlp_sees_what_the_gim_reading_outputs(mode):
    """7.4 / 7.6: the MLP's input is GIM's output of the reading (R_g, the weighted
    concatenation, or [R_g; r_g]); the Figure 6 weights sum to 1 (1/7 each for the control)."""
    schema = tiny_schema(max_len=6)
    model = _model(schema, gim_mode=mode)
    _randomise_biases(model)
    batch = _batch(schema, n=6, lengths=[6, 3, 0, 1, 5, 2])
    out = model(batch)
    total = sum(model.rep_dims)
    width = {"sum": 128, "uniform": 128, "concat": total, "sum_concat": 128 + total}[mode]
    assert model.mlp.net[0].in_features == width == model.gim.out_dim
    seen = []
    hook = model.mlp.register_forward_hook(lambda mod, args, res: seen.append(args[0]))
    model(batch)
    hook.remove()
    top, weights = model.gim(_reps(model, batch))
    torch.testing.assert_close(seen[0], top)
    torch.testing.assert_close(weights, out.gim_weights)
    torch.testing.assert_close(out.gim_weights.sum(1), torch.ones(6))
    if mode == "uniform":
        torch.testing.assert_close(out.gim_weights, torch.full((6, 7), 1 / 7))
    if mode == "sum_concat":
        torch.testing.assert_close(top[:, 128:], torch.cat([r for r in _reps(model, batch) if r is not None], -1))


def _reps(model: MIAN, batch: Batch):
    """The seven GIM inputs of ``batch`` computed from the model's modules one by one (Eq. 14)."""
    from bench.nn.pooling import masked_mean

    emb = model.embedding(batch.trim_padding())
    B, D_i = emb.e_i.shape[0], model.item_dim
    e_i, e_b = emb.e_i.reshape(B, D_i), emb.e_b.reshape(B, -1, D_i)
    r_ibim, _ = model.ibim(e_i, model.encoder(e_b, emb.mask), emb.mask)
    return (e_i, emb.e_c.reshape(B, -1), masked_mean(e_b, emb.mask), emb.e_u.reshape(B, -1), r_ibim,
            model.iuim(e_i, emb.e_u)[0], model.icim(e_i, emb.e_c)[0])


@pytest.mark.parametrize("activation,module", [("relu", torch.nn.ReLU), ("prelu", torch.nn.PReLU),
                                               ("dice", "Dice")])
def test_mlp_activation_builds_that_activation_in_the_prediction_mlp(activation, module):
    from bench.nn.mlp import Dice

    module = Dice if module == "Dice" else module
    model = _model(tiny_schema(max_len=6), mlp_activation=activation)
    acts = [m for m in model.mlp.net if not isinstance(m, torch.nn.Linear)]
    assert len(acts) == len(model.cfg.mlp) and all(isinstance(m, module) for m in acts)


def test_length_buckets_give_the_same_outputs_and_gradients_as_one_pass():
    schema = tiny_schema(max_len=12)
    lengths = [12, 0, 1, 2, 3, 5, 6, 7, 11, 4, 0, 9]
    batch = _batch(schema, n=12, seed=4, lengths=lengths)
    results = []
    for buckets in (1, 3, 8):
        model = _model(schema, seed=2, length_buckets=buckets, trim_padding=False)
        _randomise_biases(model)
        out = model(batch)
        F.binary_cross_entropy_with_logits(out.logits, batch.label).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref, ref_grads) = results[0]
    for out, grads in results[1:]:
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.ibim_weights, ref.ibim_weights, atol=1e-6, rtol=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_padding_invariance_is_not_trivial():
    """The per-slot weights and positions really depend on the slot: shifting a history changes
    the output (so the invariance above comes from indexing from the most recent behaviour)."""
    schema = tiny_schema(max_len=6)
    model = _model(schema, trim_padding=False)
    _randomise_biases(model)
    model.eval()
    batch = _batch(schema, n=4, lengths=[3, 3, 3, 3])
    shifted = dataclasses.replace(
        batch, hist=batch.hist.roll(-1, 1), hist_mask=batch.hist_mask.roll(-1, 1)
    )
    with torch.no_grad():
        assert not torch.allclose(model(batch).logits, model(shifted).logits, atol=1e-4)


@pytest.mark.parametrize("transformer,score", list(itertools.product(TRANSFORMERS, SCORES)))
def test_empty_histories_give_finite_outputs_and_gradients(transformer, score):
    schema = tiny_schema(max_len=6)
    for buckets in (1, 4):
        model = _model(
            schema, transformer=transformer, ibim_score=score, trim_padding=False, length_buckets=buckets
        )
        mixed = _batch(schema, n=6, lengths=[0, 3, 0, 6, 1, 0])
        out = model(mixed)
        assert torch.isfinite(out.logits).all()
        assert torch.all(out.ibim_weights[[0, 2, 5]] == 0)
    for trim, buckets in itertools.product((False, True), (1, 4)):
        model = _model(
            schema, transformer=transformer, ibim_score=score, trim_padding=trim, length_buckets=buckets
        )
        empty = _batch(schema, n=5, lengths=[0] * 5)
        out = model(empty)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.gim_weights).all()
        assert out.ibim_weights.shape == (5, 6) and torch.all(out.ibim_weights == 0)
        F.binary_cross_entropy_with_logits(out.logits, empty.label).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), name


def test_every_parameter_gets_a_gradient_in_the_full_model():
    schema = tiny_schema(max_len=6)
    model = _model(schema, trim_padding=False)
    batch = _batch(schema, n=32, seed=3, lengths=[6, 0, 1, 2, 3, 4, 5, 6] * 4)
    out = model(batch)
    F.binary_cross_entropy_with_logits(out.logits, batch.label).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _gim_count(dims, D) -> int:
    present = [w for w in dims if w]
    return sum(present) * D + len(present) * (2 * D + 1)


@pytest.mark.parametrize(
    "switch,removed_modules,removed_rep",
    [
        ({"use_ibim": False}, ("encoder", "ibim"), "R_ibim"),
        ({"use_iuim": False}, ("iuim",), "R_iuim"),
        ({"use_icim": False}, ("icim",), "R_icim"),
        ({"transformer": "none"}, ("encoder",), None),
    ],
)
def test_each_switch_removes_exactly_its_module(switch, removed_modules, removed_rep):
    schema = tiny_schema()
    full, off = _model(schema), _model(schema, **switch)
    D = full.cfg.gim_dim
    removed = sum(_n(getattr(full, m)) for m in removed_modules)
    assert removed > 0
    for m in removed_modules:
        assert getattr(off, m) is None
    col = GIM_INPUTS.index(removed_rep) if removed_rep else None
    gim_removed = 0
    if col is not None:
        assert off.rep_dims[col] == 0 and full.rep_dims[col] > 0
        gim_removed = full.rep_dims[col] * D + 2 * D + 1  # its projection block, bias, score w, b
    assert _n(full.gim) == _gim_count(full.rep_dims, D)
    assert _n(off.gim) == _gim_count(off.rep_dims, D)
    assert count_params(full) - count_params(off) == removed + gim_removed
    # nothing outside the removed modules and GIM changed
    keep = {
        n: s for n, s in _shapes(full).items()
        if n.split(".")[0] not in removed_modules and not n.startswith("gim.")
    }
    assert {n: s for n, s in _shapes(off).items() if not n.startswith("gim.")} == keep

    batch = _batch(schema, n=8)
    out = off(batch)
    if col is not None:
        assert torch.all(out.gim_weights[:, col] == 0)
        torch.testing.assert_close(out.gim_weights.sum(1), torch.ones(8))
        assert getattr(out, f"{removed_rep[2:]}_weights") is None


def test_without_gim_the_representations_are_concatenated_into_the_mlp():
    schema = tiny_schema()
    full, off = _model(schema), _model(schema, use_gim=False)
    D, S, h1 = full.cfg.gim_dim, sum(full.rep_dims), full.cfg.mlp[0]
    assert off.gim is None
    assert off.mlp.net[0].in_features == S
    assert count_params(full) - count_params(off) == _n(full.gim) + (D - S) * h1
    out = off(_batch(schema))
    assert out.gim_weights is None and "gim" not in out.attention
    assert out.ibim_weights is not None


def test_shared_score_has_one_weight_vector_instead_of_one_per_slot():
    schema = tiny_schema(max_len=8)
    per_slot, shared = _model(schema), _model(schema, ibim_score="shared")
    width = per_slot.ibim.out_dim
    assert tuple(per_slot.ibim.weight.shape) == (8, width)
    assert tuple(shared.ibim.weight.shape) == (1, width)
    assert count_params(per_slot) - count_params(shared) == 7 * (width + 1)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"use_ibim": False},
        {"use_iuim": False},
        {"use_icim": False},
        {"use_gim": False},
        {"use_iuim": False, "use_icim": False},
        {"transformer": "post_ln"},
        {"transformer": "none"},
        {"ibim_score": "shared"},
        *READINGS,
    ],
)
def test_every_variant_trains(params):
    schema = tiny_schema(max_len=6)
    split = separable_split(schema, n=256)
    batch = split.take(slice(0, 256))
    model = _model(schema, seed=1, **params)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(batch).logits, batch.label)

    with torch.no_grad():
        before = loss().item()
    for _ in range(25):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < before - 0.05, (before, after)


def test_amazon_shape_and_no_context_dataset():
    amazon = tiny_schema(n_context=2, n_user=1)
    out = _model(amazon)(_batch(amazon))
    assert out.iuim_weights.shape == (12, 1) and torch.all(out.iuim_weights == 1)
    assert out.icim_weights.shape == (12, 2)

    no_ctx = tiny_schema(n_context=0)
    with pytest.raises(ValueError, match="context fields"):
        _model(no_ctx)
    model = _model(no_ctx, use_icim=False)
    out = model(_batch(no_ctx))
    assert model.rep_dims[GIM_INPUTS.index("e_c")] == 0
    assert torch.all(out.gim_weights[:, [1, 6]] == 0)  # e_c and R_icim leave GIM
    torch.testing.assert_close(out.gim_weights.sum(1), torch.ones(12))
    assert out.icim_weights is None and torch.isfinite(out.logits).all()
    no_gim = _model(no_ctx, use_icim=False, use_gim=False)
    assert torch.isfinite(no_gim(_batch(no_ctx)).logits).all()


def test_invalid_configs_and_batches_are_rejected():
    schema = tiny_schema(max_len=6)
    with pytest.raises(ValueError, match="transformer"):
        MIAN.Config(transformer="rezero")
    with pytest.raises(ValueError, match="ibim_score"):
        MIAN.Config(ibim_score="dot")
    with pytest.raises(ValueError, match="activation"):
        MIAN.Config(mlp_activation="gelu")
    for key, bad in (("gim_mode", "product"), ("ibim_score", "dot"), ("mlp_activation", "gelu")):
        with pytest.raises(ConfigError, match=f"mian config: {key} expects one of .*, got '{bad}'"):
            make_config(MIAN.Config, {key: bad}, where="mian config")
    with pytest.raises(ValueError, match="n_heads"):
        _model(schema, n_heads=3)  # 2 item fields x 16 = 32 is not divisible by 3
    with pytest.raises(ValueError, match="user fields"):
        _model(tiny_schema(n_user=0))
    with pytest.raises(ValueError, match="max_len"):
        _model(schema)(repad(_batch(schema), 9))
    with pytest.raises(dataclasses.FrozenInstanceError):
        MIAN.Config().embed_dim = 8  # type: ignore[misc]


def test_step_benchmark_times_a_training_step():
    from bench.perf.stepbench import step_times, synthetic_batch

    schema = tiny_schema(max_len=6)
    batches = [synthetic_batch(schema, 16, full=False)]
    res = step_times(["mian"], schema, batches, overrides={"model.gim_dim": 8}, steps=2, warmup=1)["mian"]
    assert 0 < res.min_ms <= res.median_ms and res.samples_per_s > 0
    assert res.n_params == count_params(_model(schema, gim_dim=8))


def test_speed_paths_are_constructor_options_outside_the_config_and_run_id():
    from bench.training.config import ConfigError, resolve_config
    from bench.training.registry import speed_options

    assert speed_options("mian") == {"trim_padding": True, "length_buckets": 4}
    assert speed_options("dien") == {"gru_impl": "fused"} and speed_options("lr") == {}
    model = _model(tiny_schema(max_len=6))
    assert model.trim_padding is True and model.encoder.length_buckets == 4
    assert not {"trim_padding", "length_buckets"} & set(dataclasses.asdict(model.cfg))
    for key in ("trim_padding", "model.length_buckets"):
        with pytest.raises(ConfigError, match="length_buckets|trim_padding"):
            resolve_config("movielens-100k", "mian", None, {key: False if "trim" in key else 1})
    with pytest.raises(ConfigError, match="gru_impl"):
        resolve_config("movielens-100k", "dien", None, {"gru_impl": "torch"})
    built = build_model("mian", tiny_schema(max_len=6), {}, options={"length_buckets": 1, "trim_padding": False})
    assert built.trim_padding is False and built.encoder.length_buckets == 1
    with pytest.raises(ConfigError, match="no speed option.*'nope'.*known: trim_padding, length_buckets"):
        build_model("mian", tiny_schema(max_len=6), {}, options={"nope": 1})
    for bad in ({"trim_padding": 1}, {"length_buckets": 0}, {"length_buckets": 2.0}, {"length_buckets": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MIAN(tiny_schema(max_len=6), MIAN.Config(transformer="none"), **bad)
