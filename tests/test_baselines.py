"""The seven Table 2 baselines: worked checks of BASELINES.md, shared blocks, masking, training."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from bench.nn.contract import ModelOutput
from bench.training.registry import build_model, model_class
from bench.nn.attention import DINAttention, masked_softmax
from bench.nn.embedding import _GroupEmbedding, field_matrix, n_fields
from bench.nn.interaction import CIN, CrossNetwork, LinearPart, fm_second_order
from bench.nn.pooling import masked_mean
from conftest import make_split, repad, separable_split, tiny_schema

BASELINES = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien")


def item_table_for(schema) -> torch.Tensor:
    """[V_item_id, F_i]: row v holds item id v and a category derived from v."""
    V = schema.item_fields[0].vocab_size
    ids = torch.arange(V)
    cols = [ids] + [2 + ids % (f.vocab_size - 2) for f in schema.item_fields[1:]]
    return torch.stack(cols, -1)


def build(name: str, schema, seed: int = 0, **params):
    torch.manual_seed(seed)
    return build_model(name, schema, params, item_table=item_table_for(schema))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# ------------------------------------------------------------------ configs and registry


@pytest.mark.parametrize("name", BASELINES)
def test_config_is_frozen_with_protocol_defaults(name):
    cfg = model_class(name).Config()
    names = {f.name for f in dataclasses.fields(cfg)}
    if name != "lr":
        assert cfg.embed_dim == 16 and cfg.mlp == (200, 80)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.embed_dim = 8
    expected = {
        "dcn": {"cross_layers": 3},
        "xdeepfm": {"cin": (100, 100)},
        "din": {"att_mlp": (80, 40), "softmax": False},
        "dien": {"aux_weight": 1.0, "use_aux": True},
    }.get(name, {})
    for key, value in expected.items():
        assert key in names and getattr(cfg, key) == value


# ------------------------------------------------------------------ worked checks and blocks


def test_dcn_cross_layer_worked_check():
    x0 = torch.tensor([[1.0, 2.0]])
    for n_layers, expected in ((1, [2.0, 4.0]), (2, [4.0, 8.0])):
        cross = CrossNetwork(2, n_layers)
        with torch.no_grad():
            cross.weight.copy_(torch.tensor([[1.0, 0.0]] * n_layers))
            cross.bias.zero_()
        assert torch.equal(cross(x0), torch.tensor([expected]))


def test_cross_layer_bias_is_added_once_per_layer():
    cross = CrossNetwork(2, 2)
    with torch.no_grad():
        cross.weight.zero_()
        cross.bias.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))
    assert torch.equal(cross(torch.tensor([[1.0, 2.0]])), torch.tensor([[2.5, 1.5]]))


def test_fm_second_order_is_sum_of_pairwise_inner_products():
    x = torch.randn(3, 5, 4)
    expected = sum((x[:, i] * x[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_second_order(x), expected, atol=1e-5)


@pytest.mark.parametrize("split_half", [False, True])
def test_cin_follows_xdeepfm_eq6(split_half):
    torch.manual_seed(0)
    B, m, d = 3, 4, 5
    cin = CIN(m, (6, 4), split_half=split_half)
    x0 = torch.randn(B, m, d)
    xk, pooled = x0, []
    for k, layer in enumerate(cin.layers):
        W = layer.weight.reshape(layer.out_features, xk.shape[1], m)  # W^{k,h}_{i,j}
        h = torch.einsum("hij,bid,bjd->bhd", W, xk, x0) + layer.bias[None, :, None]
        if split_half and k == 0:
            xk, out = h[:, :3], h[:, 3:]
        else:
            xk, out = h, h
        pooled.append(out.sum(-1))
    expected = torch.cat(pooled, 1)
    assert cin.out_dim == expected.shape[1] == (6 if not split_half else 3) + 4
    assert torch.allclose(cin(x0), expected, atol=1e-5)


def test_field_matrix_pools_real_behaviours_only():
    schema = tiny_schema()
    split = make_split(schema, n=6, seed=1, lengths=[0, 1, 3, 8, 2, 5])
    emb = build("wide_deep", schema).embedding(split.take(slice(None)))
    x = field_matrix(emb)
    F_i, J, K = schema.n_item_fields, schema.n_user_fields, schema.n_context_fields
    assert x.shape == (6, n_fields(schema), 16) and n_fields(schema) == 2 * F_i + J + K
    assert torch.equal(x[:, :F_i], emb.e_i)
    assert torch.equal(x[0, F_i : 2 * F_i], torch.zeros(F_i, 16))  # empty history
    for b, L in enumerate([0, 1, 3, 8, 2, 5]):
        if L:
            assert torch.allclose(x[b, F_i : 2 * F_i], emb.e_b[b, -L:].mean(0), atol=1e-7)
    assert torch.equal(x[:, 2 * F_i : 2 * F_i + J], emb.e_u)
    assert torch.equal(x[:, 2 * F_i + J :], emb.e_c)


def test_masked_mean_is_the_mean_of_the_real_slots_in_any_shape():
    mask = torch.arange(5)[None] >= (5 - torch.tensor([0, 1, 3, 5]))[:, None]
    for shape in ((4, 5), (4, 5, 7), (4, 5, 2, 3)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        got = masked_mean(x, mask)
        assert got.shape == (4, *shape[2:]) and torch.equal(got[0], torch.zeros(shape[2:]))
        for b, L in enumerate([1, 3, 5], start=1):
            torch.testing.assert_close(got[b], x[b, 5 - L :].mean(0), atol=1e-7, rtol=1e-6)


def test_linear_part_is_one_weight_per_feature_value():
    schema = tiny_schema()
    batch = make_split(schema, n=5, seed=2, lengths=[0, 2, 8, 1, 4]).take(slice(None))
    torch.manual_seed(0)
    lin = LinearPart(schema)
    with torch.no_grad():
        lin.bias.fill_(0.3)
    w = lin.weights
    expected = torch.full((5,), 0.3)
    for f in range(schema.n_item_fields):
        table = w.item.table(f)[:, 0]
        expected = expected + table[batch.item[:, f]]
        hist_sum = (table[batch.hist[..., f]] * batch.hist_mask).sum(1)
        expected = expected + hist_sum / batch.hist_mask.sum(1).clamp_min(1)
    for f in range(schema.n_user_fields):
        expected = expected + w.user.table(f)[batch.user[:, f], 0]
    for f in range(schema.n_context_fields):
        expected = expected + w.context.table(f)[batch.context[:, f], 0]
    assert torch.allclose(lin(batch), expected, atol=1e-6)
    lr_model = build("lr", schema)
    assert torch.equal(lr_model(batch).logits, lr_model.linear(batch))


def _reference_din_scores(att: DINAttention, q, keys, mask):
    """The local activation unit applied to the explicit concatenation [q, k, q-k, q*k]."""
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    k = keys[b_idx, t_idx]
    qq = q[b_idx]
    x = torch.cat([qq, k, qq - k, qq * k], -1)
    s = att.rest(att.first_act(att.first(x))).squeeze(-1)
    out = torch.zeros(mask.shape)
    out[b_idx, t_idx] = s
    return out


@pytest.mark.parametrize("training", [True, False])
def test_din_attention_unit_is_mlp_over_q_k_diff_prod(training):
    torch.manual_seed(0)
    B, T, D = 6, 7, 8
    att = DINAttention(D, (80, 40), activation="dice")
    att.train(training)
    if not training:  # non-trivial running statistics
        att.train()
        att(torch.randn(B, D), torch.randn(B, T, D), torch.ones(B, T, dtype=torch.bool))
        att.eval()
    q, keys = torch.randn(B, D), torch.randn(B, T, D)
    lengths = torch.tensor([0, 1, 3, 7, 2, 5])
    mask = torch.arange(T)[None] >= (T - lengths)[:, None]
    keys = keys * mask[..., None]
    expected = _reference_din_scores(att, q, keys, mask)  # Dice statistics over real rows only
    pooled, w = att(q, keys, mask)
    assert torch.allclose(w, expected, atol=1e-5)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(pooled, (w[..., None] * keys).sum(1), atol=1e-5)


def test_din_scores_are_not_softmaxed_unless_asked():
    torch.manual_seed(0)
    B, T, D = 5, 6, 4
    q, keys = torch.randn(B, D), torch.randn(B, T, D)
    mask = torch.arange(T)[None] >= (T - torch.tensor([0, 1, 2, 4, 6]))[:, None]
    raw = DINAttention(D, (8,), activation="prelu")
    _, w = raw(q, keys, mask)
    assert not torch.allclose(w[1:].sum(1), torch.ones(B - 1))
    soft = DINAttention(D, (8,), activation="prelu", softmax=True)
    soft.load_state_dict(raw.state_dict())
    _, ws = soft(q, keys, mask)
    assert torch.allclose(ws[1:].sum(1), torch.ones(B - 1), atol=1e-6)
    assert torch.equal(ws[0], torch.zeros(T)) and torch.equal(ws[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(ws, masked_softmax(w, mask))


# ------------------------------------------------------------------ every model


@pytest.mark.parametrize("name", BASELINES)
def test_padding_invariance(name):
    schema = tiny_schema()
    batch = make_split(schema, n=32, seed=3).take(slice(None))
    model = build(name, schema).eval()
    with torch.no_grad():
        a, b = model(batch), model(repad(batch, schema.max_len + 7))
    assert isinstance(a, ModelOutput) and a.logits.shape == (32,)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    for key, w in a.attention.items():
        assert w.shape == (32, schema.max_len)
        assert torch.allclose(b.attention[key][:, 7:], w, atol=1e-6)
        assert torch.equal(b.attention[key][:, :7], torch.zeros(32, 7))
        assert torch.equal(w[~batch.hist_mask], torch.zeros(int((~batch.hist_mask).sum())))


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("training", [True, False])
def test_empty_histories_give_finite_outputs(name, training):
    schema = tiny_schema()
    model = build(name, schema).train(training)
    mixed = make_split(schema, n=8, seed=4, lengths=[0, 0, 1, 8, 3, 0, 5, 2]).take(slice(None))
    empty = make_split(schema, n=8, seed=5, lengths=[0] * 8).take(slice(None))
    for batch in (mixed, empty):
        out = model(batch)
        assert out.logits.shape == (8,) and torch.isfinite(out.logits).all()
        if out.aux_loss is not None:
            assert torch.isfinite(out.aux_loss)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
        if training:
            (loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            model.zero_grad()


@pytest.mark.parametrize("name", BASELINES)
def test_candidate_and_behaviours_share_one_table_per_field(name):
    schema = tiny_schema()
    model = build(name, schema)
    groups = [m for m in model.modules() if isinstance(m, _GroupEmbedding)]
    item_groups = [g for g in groups if g.vocab_sizes == [f.vocab_size for f in schema.item_fields]]
    # one item group per embedding width (the field embedding; LR/W&D/DeepFM/xDeepFM add the
    # width-1 linear weights), each with exactly vocab-size rows per field
    assert len({g.dim for g in item_groups}) == len(item_groups) >= 1
    for g in item_groups:
        assert g.weight.shape[0] == sum(f.vocab_size for f in schema.item_fields)
        for f, field in enumerate(schema.item_fields):
            assert g.table(f).shape[0] == field.vocab_size
    # the behaviours' gradient lands in the same table object as the candidate's
    batch = make_split(schema, n=4, seed=6, lengths=[8, 8, 8, 8]).take(slice(None))
    batch = dataclasses.replace(batch, item=torch.full_like(batch.item, 2), hist=batch.hist.clamp_min(3))
    model.train()
    out = model(batch)
    (out.logits.sum() + (out.aux_loss if out.aux_loss is not None else 0)).backward()
    for g in item_groups:
        grad0 = g.weight.grad[g.offsets[0] :][: schema.item_fields[0].vocab_size]
        assert grad0[2].abs().sum() > 0  # candidate id
        assert grad0[batch.hist[0, -1, 0]].abs().sum() > 0  # a behaviour id


@pytest.mark.parametrize("name", BASELINES)
def test_every_parameter_receives_a_gradient(name):
    schema = tiny_schema()
    model = build(name, schema).train()
    batch = make_split(schema, n=32, seed=7).take(slice(None))
    out = model(batch)
    loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient for {missing}"


@pytest.mark.parametrize("name", BASELINES)
def test_a_few_adam_steps_lower_the_loss(name):
    schema = tiny_schema()
    split = separable_split(schema)
    batch = split.take(slice(None))
    model = build(name, schema)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(model(batch).logits, batch.label).item()

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):  # 48 steps; Dice's running statistics need a few to settle
        for b in split.batches(128, shuffle=True, generator=gen):
            out = model(b)
            loss = F.binary_cross_entropy_with_logits(out.logits, b.label)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.train()
    after = eval_loss()
    assert after < before - 0.05, (before, after)
