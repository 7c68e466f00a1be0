"""DIEN: AUGRU recurrence, re-alignment, the auxiliary loss and its negatives."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bench.training.registry import build_model
from bench.training.train import loss_fn
from bench.nn.sequence import AUGRU, _GRUFunction, active_counts, gru_sequence, left_align, right_align
from baselines.dien import DIEN
from conftest import make_split, repad, tiny_schema


def constant_item_table(schema, row=(3, 4)) -> torch.Tensor:
    """Every item id maps to the same fields: the sampled negative's embedding is deterministic."""
    return torch.tensor([row] * schema.item_fields[0].vocab_size)


def dien(schema, item_table=None, seed: int = 0, gru_impl: str | None = None, **params) -> DIEN:
    """DIEN with Config ``params``; ``gru_impl`` (a constructor speed option) when given."""
    torch.manual_seed(seed)
    table = constant_item_table(schema) if item_table is None else item_table
    options = {} if gru_impl is None else {"gru_impl": gru_impl}
    return build_model("dien", schema, params, item_table=table, options=options)


def reference_augru(cell: nn.GRUCell, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """DIEN Eq. 9 step by step (time-major): h <- h + a_t (GRUCell(x_t, h) - h) = (1 - a u) h + a u h~."""
    h = x.new_zeros(x.shape[1], cell.hidden_size)
    for t in range(x.shape[0]):
        h = h + att[t].unsqueeze(1) * (cell(x[t], h) - h)
    return h


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# ------------------------------------------------------------------ AUGRU and alignment


def test_augru_matches_the_step_by_step_definition_and_its_gradients():
    torch.manual_seed(0)
    B, T, I, H = 5, 6, 4, 3
    augru = AUGRU(I, H)
    cell = nn.GRUCell(I, H)
    cell.load_state_dict({"weight_ih": augru.weight_ih, "weight_hh": augru.weight_hh,
                          "bias_ih": augru.bias_ih, "bias_hh": augru.bias_hh})
    x = torch.randn(T, B, I, requires_grad=True)
    att = torch.rand(T, B)
    att[:, 0] = 0.0
    att[:3, 1] = 0.0
    att.requires_grad_(True)
    out, ref = augru(x, att), reference_augru(cell, x, att)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(out[0], torch.zeros(H))  # all attention 0: state never moves from h_0 = 0
    g = torch.randn(B, H)
    grads = torch.autograd.grad(out, [x, att, *augru.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [x, att, *cell.parameters()], g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("with_att", [True, False])
@pytest.mark.parametrize("last_only", [True, False])
def test_fused_recurrence_passes_gradcheck(with_att, last_only):
    torch.manual_seed(1)
    T, B, H = 4, 4, 2
    att = torch.rand(T, B, dtype=torch.double, requires_grad=True) if with_att else None
    args = (
        torch.randn(T, B, 3 * H, dtype=torch.double, requires_grad=True),
        att,
        torch.randn(3 * H, H, dtype=torch.double, requires_grad=True),
        torch.randn(H, dtype=torch.double, requires_grad=True),
        active_counts(torch.tensor([4, 3, 1, 0]), T),  # [3, 2, 2, 1]: rows skip their padding steps
        last_only,
    )
    assert args[4] == [3, 2, 2, 1]
    assert torch.autograd.gradcheck(_GRUFunction.apply, args)


def _packed_gru_reference(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1), enforce_sorted=True)
    out = nn.utils.rnn.pad_packed_sequence(gru(packed)[0], total_length=x.shape[0])[0]
    return out * (torch.arange(x.shape[0])[:, None] < lengths[None]).unsqueeze(-1)


@pytest.mark.parametrize("lengths", [[7, 7, 7, 7, 7], [7, 5, 5, 2, 0]])
def test_fused_gru_equals_torch_gru_values_and_gradients(lengths):
    torch.manual_seed(2)
    T, B, I, H = 7, 5, 6, 4
    lengths = torch.tensor(lengths)
    gru = nn.GRU(I, H)
    x = torch.randn(T, B, I) * (torch.arange(T)[:, None] < lengths[None]).unsqueeze(-1)
    x.requires_grad_(True)
    counts = active_counts(lengths, T)
    ours = gru_sequence(x, gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0, counts=counts)
    ref = _packed_gru_reference(gru, x, lengths)
    assert torch.allclose(ours, ref, atol=1e-6)
    g = torch.randn(T, B, H)
    params = [x, *gru.parameters()]
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        assert torch.allclose(a, b, atol=1e-5)


def test_augru_skipping_padding_steps_equals_running_them_with_zero_attention():
    torch.manual_seed(3)
    T, B, I, H = 6, 4, 3, 5
    lengths = torch.tensor([6, 4, 1, 0])
    real = torch.arange(T)[:, None] < lengths[None]
    augru = AUGRU(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    att = (torch.rand(T, B) * real).requires_grad_(True)
    skipped = augru(x, att, active_counts(lengths, T))
    full = augru(x, att)
    assert torch.allclose(skipped, full, atol=1e-6)
    g = torch.randn(B, H)
    params = [x, att, *augru.parameters()]
    ours, ref = torch.autograd.grad(skipped, params, g), torch.autograd.grad(full, params, g)
    for i, (a, b) in enumerate(zip(ours, ref)):
        if i == 1:  # attention: skipped steps are constants (DIEN's softmax gives them weight 0 anyway)
            a, b = a[real], b[real]
        assert torch.allclose(a, b, atol=1e-5)


def test_dien_fused_and_torch_extractors_agree():
    schema = tiny_schema()
    batch = make_split(schema, n=16, seed=8).take(slice(None))
    fused = dien(schema).train()
    assert fused.gru_impl == "fused"  # the default
    assert "gru_impl" not in dataclasses.asdict(fused.cfg)  # a speed path: not in the config nor the run id
    torch_gru = dien(schema, gru_impl="torch").train()
    torch_gru.load_state_dict(fused.state_dict())
    outs = []
    for model in (fused, torch_gru):
        torch.manual_seed(3)
        out = model(batch)
        (F.binary_cross_entropy_with_logits(out.logits, batch.label) + out.aux_loss).backward()
        outs.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = outs
    assert torch.allclose(a.logits, b.logits, atol=1e-6) and torch.allclose(a.aux_loss, b.aux_loss, atol=1e-6)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5), name
    with pytest.raises(ValueError, match="gru_impl"):
        dien(schema, gru_impl="cudnn")


def test_right_align_moves_real_behaviours_first_and_left_align_inverts():
    T = 5
    lengths = torch.tensor([0, 1, 3, 5])
    mask = torch.arange(T)[None] >= (T - lengths)[:, None]
    hist = (torch.arange(1, T + 1)[None] * 10 + torch.arange(4)[:, None]) * mask
    aligned, amask, _ = right_align(hist.unsqueeze(-1), mask)
    assert torch.equal(amask, torch.arange(T)[None] < lengths[:, None])
    for b, L in enumerate(lengths.tolist()):
        assert torch.equal(aligned[b, :L, 0], hist[b, T - L :])
        assert torch.equal(aligned[b, L:, 0], torch.zeros(T - L, dtype=torch.long))
    assert torch.equal(left_align(aligned[..., 0], mask), hist)


# ------------------------------------------------------------------ auxiliary loss


def reference_aux(model: DIEN, batch, neg_fields=(3, 4), next_offset: int = 1) -> torch.Tensor:
    """L_aux computed one sample at a time on its real behaviours only (no padding anywhere):
    h_t (GRU over the real prefix) vs e_{t + next_offset} and the constant negative."""
    e_neg = model.embedding.embed_items(torch.tensor(neg_fields)).flatten()
    terms = []
    for b in range(len(batch)):
        real = batch.hist[b][batch.hist_mask[b]]  # [L, F_i], oldest first
        L = real.shape[0]
        if L < 2:
            continue
        e = model.embedding.embed_items(real).flatten(1)  # [L, D]
        h = model.extractor(e.unsqueeze(1))[0][:, 0]  # [L, H], torch's nn.GRU on the real steps only
        score = (lambda x, y: (x * y).sum()) if model.aux_net is None else (lambda x, y: model.aux_net(torch.cat([x, y])))
        for t in range(L - 1):
            pos, neg = score(h[t], e[t + next_offset]), score(h[t], e_neg)
            terms.append(-(F.logsigmoid(pos) + F.logsigmoid(-neg)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("aux_mlp", [(100, 50), ()])
def test_aux_loss_pairs_h_t_with_the_next_behaviour(aux_mlp):
    schema = tiny_schema()
    model = dien(schema, aux_mlp=aux_mlp).train()
    with torch.no_grad():  # move away from the near-constant initial scores
        g = model.embedding.item
        g.weight.normal_()
        g.weight[g.offsets] = 0.0
        for layer in model.aux_net or []:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(5.0)
    batch = make_split(schema, n=12, seed=0).take(slice(None))
    aux = model(batch).aux_loss
    expected = reference_aux(model, batch)
    assert torch.allclose(aux, expected, atol=1e-5)
    # the check can fail: pairing h_t with e_t instead of e_{t+1} gives another value
    assert (aux - reference_aux(model, batch, next_offset=0)).abs() > 1e-2, float(aux)


def test_aux_loss_ignores_padding():
    schema = tiny_schema()
    model = dien(schema).train()
    batch = make_split(schema, n=16, seed=1).take(slice(None))
    a = model(batch).aux_loss
    b = model(repad(batch, schema.max_len + 6)).aux_loss
    assert torch.allclose(a, b, atol=1e-6)


def test_aux_loss_is_zero_for_histories_of_length_0_or_1():
    schema = tiny_schema()
    model = dien(schema).train()
    batch = make_split(schema, n=6, seed=2, lengths=[0, 1, 1, 0, 1, 0]).take(slice(None))
    out = model(batch)
    assert out.aux_loss is not None and out.aux_loss.item() == 0.0
    assert torch.isfinite(out.logits).all()


def test_aux_gradient_reaches_the_extractor_gru_and_the_embeddings():
    schema = tiny_schema()
    model = dien(schema).train()
    batch = make_split(schema, n=16, seed=3).take(slice(None))
    model(batch).aux_loss.backward()
    for p in (model.extractor.weight_ih_l0, model.extractor.weight_hh_l0, model.embedding.item.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.evolution.weight_hh.grad is None  # the aux loss does not reach the AUGRU


def test_total_loss_is_bce_plus_alpha_times_aux():
    schema = tiny_schema()
    batch = make_split(schema, n=16, seed=4).take(slice(None))
    base = dien(schema).train()
    weighted = dien(schema, aux_weight=2.5).train()
    weighted.load_state_dict(base.state_dict())
    l_aux = reference_aux(base, batch)
    out = weighted(batch)
    assert torch.allclose(out.aux_loss, 2.5 * l_aux, atol=1e-5)
    total = loss_fn(out, batch.label)
    assert torch.allclose(total, F.binary_cross_entropy_with_logits(out.logits, batch.label) + 2.5 * l_aux, atol=1e-5)


def test_aux_loss_is_none_in_eval_mode_and_when_off():
    schema = tiny_schema()
    batch = make_split(schema, n=8, seed=5).take(slice(None))
    assert dien(schema).eval()(batch).aux_loss is None
    off = build_model("dien", schema, {"use_aux": False})  # no item table needed
    assert off.train()(batch).aux_loss is None and off.aux_net is None


def test_item_table_is_required_and_checked():
    schema = tiny_schema()
    with pytest.raises(ValueError, match="item_table"):
        build_model("dien", schema, {})
    with pytest.raises(ValueError, match="shape"):
        build_model("dien", schema, {}, item_table=torch.zeros(5, 2, dtype=torch.long))


def test_negatives_are_drawn_from_the_item_vocabulary_with_the_global_generator():
    schema = tiny_schema()
    V = schema.item_fields[0].vocab_size
    table = torch.stack([torch.arange(V), 2 + torch.arange(V) % 5], -1)
    model = dien(schema, item_table=table).train()
    batch = make_split(schema, n=16, seed=6).take(slice(None))
    seen: list[torch.Tensor] = []
    hook = model.embedding.item.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    torch.manual_seed(11)
    a = model(batch).aux_loss
    hook.remove()
    neg = seen[-1]  # the last item-table lookup: the negatives of the real pairs [P, F_i]
    pairs = int((batch.hist_mask.sum(1) - 1).clamp_min(0).sum())  # (t, t+1) pairs of real behaviours
    assert neg.shape == (pairs, 2) and pairs > 16
    assert int(neg[..., 0].min()) >= 2 and int(neg[..., 0].max()) < V
    assert torch.equal(neg, table[neg[..., 0]])  # other item fields come from the item table
    torch.manual_seed(11)
    assert torch.equal(model(batch).aux_loss, a)
    torch.manual_seed(12)
    assert not torch.equal(model(batch).aux_loss, a)


def test_attention_is_softmax_over_real_steps_and_final_state_is_after_last_real():
    schema = tiny_schema()
    model = dien(schema).eval()
    batch = make_split(schema, n=8, seed=7, lengths=[0, 1, 2, 8, 3, 5, 0, 4]).take(slice(None))
    with torch.no_grad():
        a = model(batch).attention["dien"]
    real = batch.hist_mask
    assert torch.equal(a[~real], torch.zeros(int((~real).sum())))
    sums = a.sum(1)
    assert torch.allclose(sums[real.any(1)], torch.ones(int(real.any(1).sum())), atol=1e-6)
    assert torch.equal(sums[~real.any(1)], torch.zeros(int((~real.any(1)).sum())))
    # the MLP sees the AUGRU state after the most recent real behaviour: logits do not depend
    # on what a padding slot would hold once its attention is 0
    with torch.no_grad():
        b2 = dataclasses.replace(batch, hist=batch.hist.clone())
        b2.hist[~real] = 5  # garbage ids under the mask
        assert torch.allclose(model(b2).logits, model(batch).logits, atol=1e-6)
