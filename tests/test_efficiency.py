"""The efficiency benchmark (issue 7): `cli.py bench` on a tiny prepared MovieLens-100K, the
measurement functions, the DeepCTR-Torch peer's input conversion and models (bench.perf.peer), gAUC timing."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench import data

from bench.perf import efficiency
from bench.perf import peer as peer_mod
from bench.training.config import resolve_config
from bench.perf.efficiency import BenchOptions, CSV_COLUMNS
from bench.metrics import gauc
from bench.training.registry import build_model, count_params
from datagen import prepare_tiny_ml100k


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny movielens-100k prepared from synthetic raw files: (data_dir, PreparedDataset)."""
    data_dir = prepare_tiny_ml100k(tmp_path_factory.mktemp("bench"))
    return data_dir, data.load_prepared("movielens-100k", data_dir)


def options(ds, **kw) -> BenchOptions:
    base = dict(dataset="movielens-100k", cache=str(ds.path), threads=1, steps=2, warmup=1, infer_passes=1)
    base.update(kw)
    return BenchOptions(**base)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- CLI


def test_bench_writes_csv_with_every_column_and_notes(prepared, tmp_path):
    from cli import cli

    data_dir, ds = prepared
    committed = tmp_path / "movielens-100k" / "efficiency.md"
    committed.parent.mkdir(parents=True)
    committed.write_text("the committed 8-model table\n")
    res = CliRunner().invoke(cli, ["bench", "--data-dir", str(data_dir), "--results-dir", str(tmp_path),
                                   "--models", "lr", "--models", "din", "--steps", "2", "--warmup", "1",
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    # a subset (2 models, no peer, other steps): under subsets/, never over the full table
    out = tmp_path / "movielens-100k" / "subsets" / "lr+din_nopeer_steps2_warmup1"
    assert committed.read_text() == "the committed 8-model table\n"
    assert not (tmp_path / "movielens-100k" / "efficiency.csv").exists()
    csv = pd.read_csv(out / "efficiency.csv")
    assert list(csv.columns) == [*CSV_COLUMNS, "table_stamp"]
    [stamp] = set(pd.read_csv(out / "efficiency.csv", dtype=str)["table_stamp"])  # md and csv published together
    assert f"table stamp {stamp}" in (out / "efficiency.md").read_text()
    assert list(csv["model"]) == ["lr", "din"]
    for name, row in zip(("lr", "din"), csv.itertuples()):
        assert row.n_params == count_params(build_model(name, ds.schema, _model_cfg(name), item_table=ds.item_table))
        for col in ("train_samples_per_s", "epoch_train_samples_per_s", "infer_samples_per_s", "epoch_compute_s",
                    "eval_s", "peak_rss_mb"):
            assert getattr(row, col) > 0, col
        assert row.epoch_data_s >= 0
        assert row.peak_rss_mb >= row.base_rss_mb > 50
        assert 0 <= row.test_auc <= 1 and row.best_epoch >= 1
        for col in ("step_gflop", "achieved_gflops", "matmul_peak_gflops", "flop_fraction"):
            assert np.isfinite(getattr(row, col)) and getattr(row, col) > 0, col
        assert row.achieved_gflops == pytest.approx(row.step_gflop / (row.step_ms / 1e3), rel=1e-4)
        assert row.flop_fraction == pytest.approx(row.achieved_gflops / row.matmul_peak_gflops, rel=1e-4)
    # one matmul peak per bench run, in every row; LR's step has far fewer FLOPs than DIN's
    assert csv["matmul_peak_gflops"].nunique() == 1
    lr, din = csv.set_index("model").loc[["lr", "din"], "step_gflop"]
    assert 0 < 10 * lr < din
    assert csv["peer_train_samples_per_s"].isna().all() and csv["ratio"].isna().all()
    # test metrics come from the run records the Runner saved (a second bench reuses them)
    records = list((tmp_path / "runs").glob("*.json"))
    assert len(records) == 2
    # one seed's cost: each row's record train + eval seconds, summed in the note
    by_model = {r["model"]: sum(r["wall_seconds"].values()) for r in map(lambda p: json.loads(p.read_text()), records)}
    assert csv.set_index("model")["run_seconds"].to_dict() == pytest.approx(by_model)
    md = (out / "efficiency.md").read_text()
    for needle in ("CPUs available", "torch " + torch.__version__, ds.fingerprint[:16], "measured 20",
                   "gauc on 1,000,000 predictions from 10,000 users",
                   "FlopCounterMode", "embedding lookups", "memory-bound",
                   "One seed of the 2 models (the run records of seed 0", f"{sum(by_model.values()):,.0f} s = ",
                   f"{csv['matmul_peak_gflops'][0]:,.1f} GFLOP/s (median of 5 torch.mm of 2048 x 2048 fp32"):
        assert needle in md, needle
    header = [c.strip() for c in md.split("\n")[2].strip("|").split("|")]
    assert header[header.index("Peak RSS (MB)") + 1:][:3] == ["GFLOP/step", "GFLOP/s", "% of matmul peak"]
    for line in md.split("\n")[4:6]:  # LR's ~1e-4 GFLOP/step is shown to 3 significant figures, not as 0.000
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(float(cells[header.index(c)].replace(",", "")) > 0 for c in ("GFLOP/step", "GFLOP/s", "% of matmul peak"))


def _model_cfg(name: str) -> dict:
    from bench.training.config import resolve_config

    return resolve_config("movielens-100k", name)["model"]


def test_peer_without_the_package_is_one_clear_click_error(prepared, tmp_path, monkeypatch):
    from cli import cli

    monkeypatch.setattr(efficiency, "peer_installed", lambda peer="deepctr-torch": False)
    res = CliRunner().invoke(cli, ["bench", "--data-dir", str(prepared[0]), "--results-dir", str(tmp_path),
                                   "--peer", "deepctr-torch", "--models", "lr"])
    assert res.exit_code == 1
    assert "pip install deepctr-torch==0.3.0" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "movielens-100k").exists()


def test_bench_device_option_is_validated(prepared, tmp_path):
    from cli import cli

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the option is accepted")
    res = CliRunner().invoke(cli, ["bench", "--data-dir", str(prepared[0]), "--results-dir", str(tmp_path),
                                   "--device", "cuda", "--models", "lr"])
    assert res.exit_code == 2 and "CUDA" in res.output


# --------------------------------------------------------------------------- measurements in-process


def test_measure_ours_reports_positive_figures(prepared, one_thread):
    _, ds = prepared
    out = efficiency.measure_ours(options(ds), "dien")
    assert out["n_params"] == count_params(build_model("dien", ds.schema, _model_cfg("dien"), item_table=ds.item_table))
    assert out["timed_steps"] == 2
    full = min(256, len(ds.train))
    assert out["train_samples_per_s"] == pytest.approx(full / (out["step_ms"] / 1e3))
    assert out["epoch_train_samples_per_s"] == pytest.approx(
        len(ds.train) / (out["epoch_data_s"] + out["epoch_compute_s"]))
    assert out["epoch_total_s"] == pytest.approx(out["epoch_data_s"] + out["epoch_compute_s"] + out["eval_s"])
    assert 0 <= out["valid_auc_epoch1"] <= 1
    assert np.isnan(out["peak_gpu_mb"])
    assert out["step_gflop"] > 0
    assert out["achieved_gflops"] == pytest.approx(out["step_gflop"] / (out["step_ms"] / 1e3))


def test_step_flops_counts_the_matmuls_of_forward_and_backward(one_thread):
    """A bias-free linear model: forward x @ W (2 B I O) and backward dW (2 B I O); no dx for the
    input leaf; the elementwise ops, the loss and Adam count 0."""
    from types import SimpleNamespace

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(32, 1, bias=False)

        def forward(self, batch):
            return SimpleNamespace(logits=torch.tanh(self.w(batch.x)).squeeze(-1) * 2.0, aux_loss=None)

    model = Lin()
    batch = SimpleNamespace(x=torch.randn(64, 32), label=torch.rand(64).round())
    loop = SimpleNamespace(model=model, optimizer=torch.optim.Adam(model.parameters()))
    flops = efficiency.step_flops(loop, batch)
    assert flops == 2 * (2 * 64 * 32 * 1)


def test_matmul_peak_is_positive_and_finite(one_thread):
    out = efficiency.measure_matmul_peak(BenchOptions(dataset="movielens-100k", cache="x", threads=1,
                                                      matmul_n=256, matmul_repeats=2))
    assert out["matmul_n"] == 256 and out["matmul_repeats"] == 2 and out["threads"] == 1
    assert np.isfinite(out["matmul_peak_gflops"]) and out["matmul_peak_gflops"] > 0


def test_right_pad_moves_real_behaviours_first():
    rng = np.random.default_rng(0)
    N, T, F = 50, 7, 3
    lengths = rng.integers(0, T + 1, N)
    hist = rng.integers(2, 99, (N, T, F)) * (np.arange(T)[None, :] >= (T - lengths)[:, None])[..., None]
    out = peer_mod.right_pad(hist, lengths)
    for i in range(N):
        L = lengths[i]
        assert (out[i, :L] == hist[i, T - L:]).all()
        assert (out[i, L:] == 0).all()
    assert (peer_mod.right_pad(hist[:, :, 0], lengths)[:, :] == out[:, :, 0]).all()


def test_deepctr_inputs_convert_padding_and_draw_negatives_from_the_item_table(prepared):
    _, ds = prepared
    split, schema = ds.valid, ds.schema
    table = ds.item_table.numpy()
    x = peer_mod.deepctr_inputs(split, schema, table, neg_seed=5)
    lengths = split.hist_mask.sum(1).numpy()
    assert (x["hist_len"] == lengths).all()
    items, users, ctx = peer_mod._names(schema)
    T = schema.max_len
    for j, n in enumerate(items):
        assert (x[n] == split.item[:, j].numpy()).all()
        right = x["hist_" + n]
        assert right.shape == (len(split), T)
        for i in range(len(split)):
            L = lengths[i]
            assert (right[i, :L] == split.hist[i, T - L:, j].numpy()).all() and (right[i, L:] == 0).all()
    # negatives: real item rows where a behaviour is real, zero elsewhere, reproducible by seed
    neg = np.stack([x["neg_hist_" + n] for n in items], -1)
    real = np.arange(T)[None, :] < lengths[:, None]
    assert (neg[~real] == 0).all()
    rows = neg[real]
    assert (rows[:, 0] >= 2).all()
    assert (table[rows[:, 0]] == rows).all()
    again = peer_mod.deepctr_inputs(split, schema, table, neg_seed=5)
    assert all((again[k] == x[k]).all() for k in x)
    assert (peer_mod.deepctr_inputs(split, schema, table, neg_seed=6)["neg_hist_" + items[0]] != neg[..., 0]).any()
    assert set(x) >= {*users, *ctx}


# --------------------------------------------------------------------------- DeepCTR-Torch peer


@pytest.fixture
def deepctr():
    # not pytest.importorskip("deepctr_torch"): its package __init__ needs `requests` (undeclared) and
    # starts a PyPI version check; the benchmark imports its models without running it
    if not peer_mod.peer_installed():
        pytest.skip("DeepCTR-Torch not installed (pip install -e '.[peer]')")
    return peer_mod.import_deepctr()


def test_every_peer_model_trains_by_the_protocol_on_tiny_data(prepared, deepctr, one_thread):
    _, ds = prepared
    opts = options(ds, accuracy=True)
    for name, peer in peer_mod.DEEPCTR_MODELS.items():
        if peer is None:
            continue
        out = efficiency.measure_peer(opts, name)
        assert out["peer_train_samples_per_s"] > 0 and out["peer_infer_samples_per_s"] > 0, name
        assert 0 <= out["peer_test_auc"] <= 1 and 0 < out["peer_test_logloss"] < 5, name
        # early stopping as the protocol's: stop `patience` epochs after the best one, or at max_epochs
        train = resolve_config("movielens-100k", name)["train"]
        stop = min(out["peer_best_epoch"] + train["patience"], train["max_epochs"])
        assert 1 <= out["peer_best_epoch"] <= out["peer_epochs_run"], name
        assert out["peer_epochs_run"] == stop, (name, out["peer_best_epoch"], out["peer_epochs_run"], stop)
        assert out["peer_epochs_run"] == 20 or out["peer_epochs_run"] == out["peer_best_epoch"] + 2, name
        assert out["peer_version"] == peer_mod.PEER_VERSION


def test_peer_goes_through_the_trainers_early_stopping(prepared, deepctr, one_thread):
    """bench.perf.peer.DeepCTRAdapter under bench.training.train.Trainer: their fit once per epoch, the validation
    AUC (forced to a sequence here) selects the epoch, the best epoch's weights come back, test last."""
    from bench.training.train import Trainer

    _, ds = prepared
    cfg = resolve_config("movielens-100k", "lr")
    adapter = peer_mod.deepctr_adapter(ds, "lr", cfg, torch.device("cpu"), 0, deepctr)
    aucs, snapshots, calls = iter([0.6, 0.7, 0.65, 0.66, 0.9]), [], []
    real_score = adapter.score

    def score(split):
        calls.append(split)
        if split == "test":
            return real_score(split)
        snapshots.append({k: v.clone() for k, v in adapter.model.state_dict().items()})
        return {"auc": next(aucs), "logloss": 0.6, "gauc": 0.5}

    adapter.score = score
    trainer = Trainer(adapter, max_epochs=20, patience=2).fit()
    assert (trainer.best_epoch, trainer.epochs_run) == (2, 4)
    assert len(adapter.fit_seconds) == 4 and min(adapter.fit_seconds) > 0
    assert adapter.steps == 4 * -(-len(ds.train) // cfg["train"]["batch_size"])
    assert all(0 < h["train_loss"] < 5 for h in trainer.history)
    state = adapter.model.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[3][k]) for k in state)
    test = trainer.test()
    assert calls == ["valid"] * 4 + ["test"]
    assert test["auc"] == real_score("test")["auc"]


def test_peer_models_match_our_sizes_where_the_architectures_agree(prepared, deepctr):
    _, ds = prepared
    # no extra parameters beyond ours: same embedding tables (shared by candidate and behaviours),
    # same DNN / cross / CIN widths; (DeepCTR's output bias stands in for our linear part's bias)
    for name in ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm"):
        cfg = _model_cfg(name)
        peer = peer_mod.build_deepctr(name, ds.schema, cfg, "cpu", 0, deepctr)
        ours = count_params(build_model(name, ds.schema, cfg, item_table=ds.item_table))
        theirs = sum(p.numel() for p in peer.parameters() if p.requires_grad)
        assert abs(ours - theirs) <= 1, (name, ours, theirs)


def test_peer_workarounds_are_needed_and_applied(prepared, deepctr):
    _, ds = prepared
    models, inputs, layers, _ = deepctr
    sparse, varlen, items = peer_mod.deepctr_columns(ds.schema, inputs, 16, negatives=False)
    # DeepCTR's own xDeepFM sizes the CIN by embedding tables (fewer than the fields fed to it)
    raw = models.xDeepFM(sparse + varlen, sparse + varlen, cin_layer_size=(100, 100), cin_split_half=False, device="cpu")
    assert raw.cin.field_nums[0] == len(sparse) < len(sparse) + len(varlen)
    fixed = peer_mod.build_deepctr("xdeepfm", ds.schema, _model_cfg("xdeepfm"), "cpu", 0, deepctr)
    assert fixed.cin.field_nums[0] == len(sparse) + len(varlen)
    # DIN's DNN with Dice: their DNN builds 3-D Dice; ours replaced by 2-D Dice
    din = peer_mod.build_deepctr("din", ds.schema, _model_cfg("din"), "cpu", 0, deepctr)
    assert [type(a).__name__ for a in din.dnn.activation_layers] == ["Dice", "Dice"]
    assert all(a.dim == 2 for a in din.dnn.activation_layers)


def test_cli_bench_with_peer(prepared, deepctr, tmp_path):
    from cli import cli

    res = CliRunner().invoke(cli, ["bench", "--data-dir", str(prepared[0]), "--results-dir", str(tmp_path),
                                   "--models", "din", "--peer", "deepctr-torch", "--steps", "2", "--warmup", "1",
                                   "--threads", "1", "--no-accuracy"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "movielens-100k" / "subsets" / "din_steps2_warmup1_noaccuracy"
    row = pd.read_csv(out / "efficiency.csv").iloc[0]
    assert row["peer_status"] == "ok" and row["peer_model"] == "DeepCTR-Torch 0.3.0 DIN"
    assert row["ratio"] == pytest.approx(row["epoch_train_samples_per_s"] / row["peer_train_samples_per_s"], rel=1e-4)
    assert row["infer_ratio"] == pytest.approx(row["infer_samples_per_s"] / row["peer_infer_samples_per_s"], rel=1e-4)
    assert row["peer_peak_rss_mb"] > 50 and row["peer_n_params"] > 0
    # --no-accuracy: speed only, no training to early stopping, no run records
    assert np.isnan(row["test_auc"]) and np.isnan(row["peer_test_auc"])
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))
    md = (out / "efficiency.md").read_text()
    assert "Workarounds for DeepCTR-Torch" in md and "epoch-based" in md


# --------------------------------------------------------------------------- gAUC


def test_gauc_benchmark_times_the_real_function():
    g = efficiency.gauc_benchmark(n=20_000, n_users=300, repeats=2, seed=1)
    rng = np.random.default_rng(1)
    users = rng.integers(0, 300, 20_000)
    labels = (rng.random(20_000) < 0.5).astype(np.float64)
    scores = rng.standard_normal(20_000) + 0.3 * labels
    assert g["gauc"] == gauc(labels, scores, users)
    assert 0 < g["min_s"] <= g["median_s"]


def test_gauc_same_value_for_every_user_key_encoding():
    rng = np.random.default_rng(2)
    n = 4000
    users = rng.integers(0, 150, n)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n), 1)  # ties
    ref = gauc(labels, scores, users)
    assert gauc(labels, scores, users.astype(str)) == ref  # np.unique fallback
    assert gauc(labels, scores, users * (2**50) - 7) == ref  # key range too wide for the packed sort key
    assert gauc(labels, scores, users.astype(np.int32) - 100) == ref  # negative, narrow keys


# --------------------------------------------------------------------------- developer step timing (bench.perf.stepbench)


def _finite_positive(res, names):
    import math

    assert list(res) == list(names)
    for name, r in res.items():
        for v in (r.median_ms, r.min_ms, r.samples_per_s):
            assert v > 0 and math.isfinite(v), (name, r)
        assert r.min_ms <= r.median_ms and r.n_params > 0


def test_stepbench_times_baselines_and_mian_on_synthetic_batches(one_thread, caplog):
    import logging

    from bench.perf import stepbench
    caplog.set_level(logging.INFO, logger="bench.perf.stepbench")
    names = ("lr", "din", "dien", "mian")
    res = stepbench.main(["--models", ",".join(names), "--steps", "2", "--warmup", "1", "--batch", "8",
                          "--threads", "1", "--cpu-time", "--set", "model.transformer=none", "gim_dim=8"])
    _finite_positive(res, names)
    schema = stepbench.ml100k_schema()
    assert res["mian"].params == {"transformer": "none", "gim_dim": 8} and res["din"].params == {}
    assert res["mian"].n_params == count_params(build_model("mian", schema, {"transformer": "none", "gim_dim": 8}))
    assert res["dien"].n_params == count_params(build_model("dien", schema, item_table=stepbench.item_table(schema)))
    text = caplog.text
    assert "DIEN/DIN step-time ratio" in text and "CPU time" in text
    for name, r in res.items():
        assert f"{name} " in text and f"{r.median_ms:.2f}" in text


def test_stepbench_options_set_the_speed_paths(one_thread, caplog):
    import logging

    from bench.perf import stepbench
    caplog.set_level(logging.INFO, logger="bench.perf.stepbench")
    res = stepbench.main(["--models", "dien,mian", "--steps", "1", "--warmup", "0", "--batch", "8", "--threads", "1",
                          "--option", "gru_impl=torch", "model.length_buckets=1", "--set", "gim_dim=8"])
    assert res["dien"].options == {"gru_impl": "torch"} and res["dien"].params == {}
    assert res["mian"].options == {"length_buckets": 1} and res["mian"].params == {"gim_dim": 8}
    assert "gim_dim=8, length_buckets=1" in caplog.text and "gru_impl='torch'" in caplog.text


def test_stepbench_on_prepared_training_batches(prepared, one_thread):
    from bench.perf import stepbench
    data_dir, ds = prepared
    res = stepbench.main(["--models", "din,dien", "--dataset", "movielens-100k", "--data-dir", str(data_dir),
                          "--steps", "2", "--warmup", "1", "--batch", "32", "--threads", "1"])
    _finite_positive(res, ("din", "dien"))
    assert res["din"].n_params == count_params(build_model("din", ds.schema, item_table=ds.item_table))
    assert res["din"].samples_per_s == pytest.approx(32 / (res["din"].median_ms / 1e3))


def test_stepbench_refuses_unknown_models_and_keys(one_thread, capsys):
    from bench.perf import stepbench
    for argv, words in ((["--models", "din,nosuchmodel"], ["nosuchmodel", "expected one of"]),
                        (["--models", "din", "--set", "transformer=none"], ["transformer", "din"]),
                        (["--models", "din", "--set", "train.lr=0.1"], ["train.lr"]),
                        (["--models", "mian", "--set", "length_buckets=1"], ["length_buckets", "mian"]),
                        (["--models", "din,mian", "--option", "gru_impl=torch"],
                         ["--option gru_impl", "din: (none)", "mian: length_buckets, trim_padding"])):
        with pytest.raises(SystemExit) as exc:
            stepbench.main([*argv, "--steps", "1", "--warmup", "0", "--threads", "1"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
    schema = stepbench.ml100k_schema(max_len=4)
    with pytest.raises(KeyError, match="nosuchmodel"):
        stepbench.step_times(["nosuchmodel"], schema, [stepbench.synthetic_batch(schema, 4)], steps=1)
