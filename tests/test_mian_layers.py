"""MIAN's layers checked against literal, loop-based transcriptions of the paper's equations."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mian.layers import (
    GIM_MODES,
    BehaviourAttention,
    BehaviourEncoder,
    FieldAttention,
    GlobalInteraction,
    tanh_softmax,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _left_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    lengths_t = torch.tensor(lengths)
    return torch.arange(T).unsqueeze(0) >= (T - lengths_t).unsqueeze(1)


def test_tanh_softmax_masks_exactly_and_handles_empty_rows():
    scores = torch.randn(4, 6) * 5
    mask = _left_padded_mask([6, 3, 1, 0], 6)
    w = tanh_softmax(scores, mask)
    assert torch.all(w[~mask] == 0)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # on real positions it is the plain softmax of tanh(scores)
    ref = torch.softmax(torch.tanh(scores[1, 3:]), 0)
    torch.testing.assert_close(w[1, 3:], ref)


def test_field_attention_matches_eq_10_11_literally():
    torch.manual_seed(0)
    B, J, D_i, d = 5, 4, 6, 3
    att = FieldAttention(J, D_i, d)
    with torch.no_grad():
        att.bias.normal_()
    e_i, e_u = torch.randn(B, D_i), torch.randn(B, J, d)
    r, alpha = att(e_i, e_u)
    assert r.shape == (B, D_i + d) and alpha.shape == (B, J)
    # Eq. (10): alpha_j = softmax_j tanh(V_u^j . W_u^j + b_u^j), V_u^j = [e_i; e_u^j]
    v = [torch.cat([e_i, e_u[:, j]], -1) for j in range(J)]
    s = torch.stack([torch.tanh(v[j] @ att.weight[j] + att.bias[j]) for j in range(J)], 1)
    ref_alpha = torch.softmax(s, 1)
    ref_r = sum(ref_alpha[:, j : j + 1] * v[j] for j in range(J))  # Eq. (11)
    torch.testing.assert_close(alpha, ref_alpha)
    torch.testing.assert_close(r, ref_r)
    # the e_i half is kept (MIAN.md 7.3): with sum(alpha) = 1 it equals e_i
    torch.testing.assert_close(r[:, :D_i], e_i)


@pytest.mark.parametrize("score", ["per_slot", "shared"])
def test_behaviour_attention_matches_eq_7_9_literally(score):
    torch.manual_seed(1)
    B, T, max_len, D_i, d_h = 4, 5, 9, 6, 6
    att = BehaviourAttention(D_i, d_h, max_len, score)
    with torch.no_grad():
        att.bias.normal_()
    e_i, h = torch.randn(B, D_i), torch.randn(B, T, d_h)
    mask = _left_padded_mask([5, 3, 1, 0], T)
    r, alpha = att(e_i, h, mask)
    assert r.shape == (B, D_i + d_h) and alpha.shape == (B, T)
    # Eq. (8) with W_t for slot t counted from the end of a max_len-long parameter table
    rows = []
    for t in range(T):
        slot = (max_len - T + t) if score == "per_slot" else 0
        v_t = torch.cat([e_i, h[:, t]], -1)
        rows.append(torch.tanh(v_t @ att.weight[slot] + att.bias[slot]))
    gamma = torch.stack(rows, 1)
    ref_alpha = torch.where(mask, gamma.exp(), torch.zeros(()))
    ref_alpha = ref_alpha / ref_alpha.sum(1, keepdim=True).clamp_min(1e-30)  # Eq. (7), real slots
    v = torch.cat([e_i.unsqueeze(1).expand(B, T, D_i), h], -1)
    ref_r = (ref_alpha.unsqueeze(-1) * v).sum(1)  # Eq. (9): sum_t alpha_t V_t
    torch.testing.assert_close(alpha, ref_alpha)
    torch.testing.assert_close(r, ref_r)
    assert torch.all(alpha[~mask] == 0)
    torch.testing.assert_close(alpha.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.all(r[3] == 0)  # empty history: the empty sum


def test_per_slot_scores_depend_on_the_candidate_but_shared_ranking_does_not():
    """MIAN.md 7.2: with a shared W the behaviour ranking ignores the candidate item."""
    torch.manual_seed(2)
    B, T, D = 2, 6, 4
    h = torch.randn(1, T, D).expand(B, T, D)
    e_i = torch.randn(B, D)
    mask = torch.ones(B, T, dtype=torch.bool)
    shared = BehaviourAttention(D, D, T, "shared")
    per_slot = BehaviourAttention(D, D, T, "per_slot")
    _, a_shared = shared(e_i, h, mask)
    _, a_slot = per_slot(e_i, h, mask)
    assert torch.equal(a_shared[0].argsort(), a_shared[1].argsort())
    assert not torch.allclose(a_slot[0], a_slot[1])


def test_gim_matches_eq_14_15_with_per_representation_projections():
    torch.manual_seed(3)
    B, D = 5, 7
    dims = (4, 0, 4, 6, 8, 0, 5)
    gim = GlobalInteraction(dims, D)
    with torch.no_grad():
        gim.proj_bias.normal_()
        gim.score_bias.normal_()
    reps = [torch.randn(B, w) if w else None for w in dims]
    r, weights = gim(reps)
    assert r.shape == (B, D) and weights.shape == (B, 7)
    present = [l for l, w in enumerate(dims) if w]
    # literal: p_l = r_l A_l + c_l with A_l the l-th block of rows, score tanh(p_l . w_l + b_l)
    p, start = [], 0
    for n, l in enumerate(present):
        a_l = gim.proj_weight[start : start + dims[l]]
        start += dims[l]
        p.append(reps[l] @ a_l + gim.proj_bias[n])
    s = torch.stack([torch.tanh(p[n] @ gim.score_weight[n] + gim.score_bias[n]) for n in range(len(p))], 1)
    ref_alpha = torch.softmax(s, 1)
    ref_r = sum(ref_alpha[:, n : n + 1] * p[n] for n in range(len(p)))
    torch.testing.assert_close(r, ref_r)
    torch.testing.assert_close(weights[:, present], ref_alpha)
    assert torch.all(weights[:, [1, 5]] == 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(B))
    n_params = sum(p.numel() for p in gim.parameters())
    assert n_params == sum(dims) * D + len(present) * (2 * D + 1)


def _gim_loop(gim: GlobalInteraction, reps, dims):
    """GIM of every reading written out sample by sample and representation by representation
    (MIAN.md 7.4 a / b, 7.6, and the uniform control): (output [B, out], weights [B, 7])."""
    B = next(r for r in reps if r is not None).shape[0]
    present = [l for l, w in enumerate(dims) if w]
    outs, weights = [], []
    for b in range(B):
        p, s, raw, start = [], [], [], 0
        for n, l in enumerate(present):
            r = reps[l][b]
            raw.append(r)
            if gim.mode == "concat":  # Eq. (15) on the raw r_l: tanh(r_l . W_l + b_l)
                w_l = gim.score_weight[start : start + dims[l]]
                s.append(torch.tanh(r @ w_l + gim.score_bias[n]))
            else:  # p_l = r_l A_l + c_l, score tanh(p_l . w_l + b_l)
                p_l = r @ gim.proj_weight[start : start + dims[l]] + gim.proj_bias[n]
                p.append(p_l)
                if gim.mode != "uniform":
                    s.append(torch.tanh(p_l @ gim.score_weight[n] + gim.score_bias[n]))
            start += dims[l]
        if gim.mode == "uniform":
            alpha = [torch.tensor(1.0 / len(present))] * len(present)
        else:
            e = [torch.exp(x) for x in s]
            alpha = [x / sum(e) for x in e]
        if gim.mode == "concat":
            out = torch.cat([alpha[n] * raw[n] for n in range(len(present))])
        else:
            out = sum(alpha[n] * p[n] for n in range(len(present)))
            if gim.mode == "sum_concat":
                out = torch.cat([out, torch.cat(raw)])
        w = torch.zeros(7)
        for n, l in enumerate(present):
            w[l] = alpha[n]
        outs.append(out)
        weights.append(w)
    return torch.stack(outs), torch.stack(weights)


@pytest.mark.parametrize("mode", GIM_MODES)
def test_every_gim_reading_matches_its_loop_transcription(mode):
    torch.manual_seed(7)
    B, D = 4, 5
    dims = (4, 0, 4, 6, 8, 0, 3)
    gim = GlobalInteraction(dims, D, mode)
    with torch.no_grad():
        for name, p in gim.named_parameters():
            if "bias" in name:
                p.normal_()
    reps = [torch.randn(B, w) if w else None for w in dims]
    out, weights = gim(reps)
    ref_out, ref_w = _gim_loop(gim, reps, dims)
    total = sum(dims)
    assert out.shape == (B, {"sum": D, "uniform": D, "concat": total, "sum_concat": D + total}[mode])
    assert gim.out_dim == out.shape[1]
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_w)
    # the Figure 6 weights: a softmax over the present representations (1/k for the control),
    # exactly 0 for the absent ones, summing to 1
    assert torch.all(weights[:, [1, 5]] == 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(B))
    if mode == "uniform":
        assert torch.all(weights[:, [0, 2, 3, 4, 6]] == 0.2)
        assert not any("score" in n for n, _ in gim.named_parameters())
    else:
        assert weights[:, [0, 2, 3, 4, 6]].std(0).min() > 0  # per-sample weights, not constants
    if mode == "sum_concat":  # [R_g; r_g]: the sum reading's output, then the representations
        plain = GlobalInteraction(dims, D, "sum")
        plain.load_state_dict(gim.state_dict())
        torch.testing.assert_close(out[:, :D], plain(reps)[0])
        torch.testing.assert_close(out[:, D:], torch.cat([r for r in reps if r is not None], -1))
    n_params = sum(p.numel() for p in gim.parameters())
    k = 5
    assert n_params == {"sum": total * D + k * (2 * D + 1), "sum_concat": total * D + k * (2 * D + 1),
                        "uniform": total * D + k * D, "concat": total + k}[mode]


def test_gim_sum_reading_keeps_the_parameters_and_initialisation_of_before():
    """The default reading builds the same parameters from the same random draws as the GIM the
    committed runs were trained with (its names, shapes and values)."""
    dims = (4, 0, 4, 6, 8, 0, 3)
    torch.manual_seed(11)
    new = GlobalInteraction(dims, 5)
    torch.manual_seed(11)
    widths = [w for w in dims if w]
    ref = {"proj_weight": torch.empty(sum(widths), 5), "proj_bias": torch.zeros(5, 5),
           "score_weight": torch.empty(5, 5), "score_bias": torch.zeros(5)}
    start = 0
    for w in widths:
        torch.nn.init.uniform_(ref["proj_weight"][start : start + w], -1 / math.sqrt(w), 1 / math.sqrt(w))
        start += w
    torch.nn.init.uniform_(ref["score_weight"], -1 / math.sqrt(5), 1 / math.sqrt(5))
    state = new.state_dict()
    assert list(state) == list(ref)
    for k, v in ref.items():
        assert torch.equal(state[k], v), k


def test_bilinear_ibim_score_matches_its_loop_transcription():
    torch.manual_seed(8)
    B, T, max_len, D_i = 3, 4, 7, 6
    att = BehaviourAttention(D_i, D_i, max_len, "bilinear")
    assert att.bilinear.shape == (D_i, D_i) and torch.all(att.bilinear == 0)  # starts as "per_slot"
    with torch.no_grad():
        att.bias.normal_()
        att.bilinear.normal_()
    e_i, h = torch.randn(B, D_i), torch.randn(B, T, D_i)
    mask = _left_padded_mask([4, 2, 0], T)
    r, alpha = att(e_i, h, mask)
    for b in range(B):
        real = [t for t in range(T) if mask[b, t]]
        gamma = {}
        for t in real:  # Eq. (8) per slot, plus e_i^T M h_t
            slot = max_len - T + t
            v_t = torch.cat([e_i[b], h[b, t]])
            bil = sum(e_i[b, i] * att.bilinear[i, j] * h[b, t, j] for i in range(D_i) for j in range(D_i))
            gamma[t] = torch.tanh(v_t @ att.weight[slot] + att.bias[slot] + bil)
        z = sum(torch.exp(g) for g in gamma.values()) if real else None
        for t in range(T):
            want = torch.exp(gamma[t]) / z if t in real else torch.tensor(0.0)
            torch.testing.assert_close(alpha[b, t], want)
        want_r = (sum((alpha[b, t] * torch.cat([e_i[b], h[b, t]]) for t in real)) if real
                  else torch.zeros(2 * D_i))  # Eq. (9)
        torch.testing.assert_close(r[b], want_r)


def test_bilinear_score_lets_the_candidate_pick_the_behaviour_like_it():
    """Eq. (8)'s additive score weighs a behaviour by its slot and content alone; with M = I the
    bilinear term puts the largest weight on the behaviour most similar to the candidate."""
    torch.manual_seed(9)
    D, T = 4, 5
    h = torch.randn(1, T, D).expand(2, T, D)
    mask = torch.ones(2, T, dtype=torch.bool)
    att = BehaviourAttention(D, D, T, "bilinear")
    with torch.no_grad():
        att.weight.zero_()
        att.bilinear.copy_(torch.eye(D))
    e_i = torch.stack([h[0, 1], h[0, 3]]) * 0.3  # each candidate resembles one behaviour
    _, alpha = att(e_i, h, mask)
    sims = e_i @ h[0].T
    assert alpha[0].argmax() == sims[0].argmax() and alpha[1].argmax() == sims[1].argmax()
    assert alpha[0].argmax() != alpha[1].argmax()


def _layer_norm(x, ln):
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def _mhsa(x, mha, key_mask):
    """Multi-head self-attention written out (Vaswani et al.), key_mask True = real key."""
    B, T, E = x.shape
    H = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def heads(z):
        return z.view(B, T, H, E // H).transpose(1, 2)  # [B, H, T, E/H]

    q, k, v = heads(x @ w_q.T + b_q), heads(x @ w_k.T + b_k), heads(x @ w_v.T + b_v)
    s = q @ k.transpose(-1, -2) / math.sqrt(E // H)
    s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, E)
    return o @ mha.out_proj.weight.T + mha.out_proj.bias


def _ffn(x, layer):
    hidden = F.relu(x @ layer.linear1.weight.T + layer.linear1.bias)
    return hidden @ layer.linear2.weight.T + layer.linear2.bias


@pytest.mark.parametrize("positional", [False, True])
def test_pre_ln_and_post_ln_blocks_follow_their_own_formulas(positional):
    """Same weights in both blocks; each matches its own hand-written form (MIAN.md 2.2, 7.9)."""
    torch.manual_seed(4)
    B, T, E, max_len = 3, 5, 8, 7
    kw = dict(
        d_model=E, n_heads=2, n_layers=2, ffn_dim=12, dropout=0.0, max_len=max_len, positional=positional
    )
    pre = BehaviourEncoder(kind="pre_ln", **kw)
    post = BehaviourEncoder(kind="post_ln", **kw)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for mod in pre.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(std=0.1)
    missing, unexpected = post.load_state_dict(pre.state_dict(), strict=False)
    assert missing == [] and unexpected == ["final_norm.weight", "final_norm.bias"]
    assert pre.final_norm is not None and post.final_norm is None
    x = torch.randn(B, T, E)
    mask = _left_padded_mask([5, 2, 4], T)
    pre.eval(), post.eval()
    h_pre, h_post = pre(x, mask), post(x, mask)

    z = x + pre.position[max_len - T :] if positional else x
    z_pre, z_post = z, z
    for layer in pre.layers:  # Pre-LN (Xiong et al.): y = x + MHSA(LN(x)); z = y + FFN(LN(y))
        y = z_pre + _mhsa(_layer_norm(z_pre, layer.norm1), layer.self_attn, mask)
        z_pre = y + _ffn(_layer_norm(y, layer.norm2), layer)
    z_pre = _layer_norm(z_pre, pre.final_norm)
    for layer in post.layers:  # Post-LN (Vaswani et al.): y = LN(x + MHSA(x)); z = LN(y + FFN(y))
        y = _layer_norm(z_post + _mhsa(z_post, layer.self_attn, mask), layer.norm1)
        z_post = _layer_norm(y + _ffn(y, layer), layer.norm2)
    torch.testing.assert_close(h_pre, z_pre, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_post, z_post, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(h_pre, h_post, atol=1e-3)
    with torch.no_grad():  # torch's inference fast path must agree with the autograd path
        torch.testing.assert_close(pre(x, mask), h_pre, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(post(x, mask), h_post, atol=1e-5, rtol=1e-5)


def test_encoder_with_empty_history_rows_is_finite_and_gets_finite_gradients():
    torch.manual_seed(5)
    enc = BehaviourEncoder(8, 2, 1, 8, 0.0, "pre_ln", max_len=6, positional=True)
    x = torch.randn(3, 6, 8, requires_grad=True)
    mask = _left_padded_mask([0, 0, 0], 6)
    h = enc(x, mask)
    assert torch.isfinite(h).all()
    h.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize("buckets", [2, 4, 9])
def test_encoder_length_buckets_match_one_pass_on_real_slots(buckets):
    torch.manual_seed(6)
    T = 9
    kw = dict(
        d_model=8, n_heads=2, n_layers=2, ffn_dim=8, dropout=0.0, kind="pre_ln", max_len=12, positional=True
    )
    one = BehaviourEncoder(**kw)
    grouped = BehaviourEncoder(length_buckets=buckets, **kw)
    grouped.load_state_dict(one.state_dict())
    x = torch.randn(7, T, 8)
    mask = _left_padded_mask([9, 0, 1, 2, 5, 3, 8], T)
    h1, hg = one(x, mask), grouped(x, mask)
    torch.testing.assert_close(hg[mask], h1[mask], atol=1e-6, rtol=1e-6)
    assert torch.all(hg[1] == 0)  # an empty history is not encoded at all
    assert torch.isfinite(hg).all()


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="n_heads"):
        BehaviourEncoder(10, 3, 1, 8, 0.0, "pre_ln", 5, True)
    with pytest.raises(ValueError, match="length_buckets"):
        BehaviourEncoder(8, 2, 1, 8, 0.0, "pre_ln", 5, True, length_buckets=0)
    with pytest.raises(ValueError, match="kind"):
        BehaviourEncoder(8, 2, 1, 8, 0.0, "rezero", 5, True)
    with pytest.raises(ValueError, match="ibim_score"):
        BehaviourAttention(4, 4, 5, "dot")
    with pytest.raises(ValueError, match="at least one field"):
        FieldAttention(0, 4, 2)
    with pytest.raises(ValueError, match="at least one representation"):
        GlobalInteraction((0,) * 7, 8)
    with pytest.raises(ValueError, match="gim_mode must be one of sum, concat, sum_concat, uniform"):
        GlobalInteraction((4,) * 7, 8, "product")
