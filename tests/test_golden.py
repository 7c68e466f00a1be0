"""Golden results: a speed change to the trainer or a model must not change what training produces.

Every registered model is trained for a few steps (two epochs of five batches, validation after
each) on a tiny synthetic dataset built here with fixed seeds, one intra-op thread; the
best-epoch validation metrics, the test metrics and the per-epoch training losses are compared
with the values the code produced when this test was written.

Two checks, because float results are exact only on one CPU instruction set:
- on this machine, the same seed gives bit-identical figures: trained twice in this process, and
  once more in a fresh interpreter (exact equality; the test compares two runs of the same machine);
- against the recorded values, within ``TOL``. Measured spread of these figures across CPU kernels
  (``python tests/test_golden.py --spread``: AVX-512, AVX2, no-SIMD and MKL's conditional-numerical-
  reproducibility paths of torch 2.13 on one Xeon, plus the recording machine): at most 1.4e-7, and
  1.9e-7 reported from an AMD EPYC (AVX2). ``TOL`` = 1e-6 is 5x that, and 150x below the smallest
  change a real edit makes (a 0.1 % learning-rate change moves these figures by >= 1.6e-4).
  docs/REPRODUCIBILITY.md has the figures.

If a change is MEANT to alter results (a bug fix, a new model default), regenerate the table with
``python tests/test_golden.py`` and say so in the commit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.contract import FeatureSchema, Split  # noqa: E402
from bench.data import PreparedDataset  # noqa: E402
from bench.training.registry import MODEL_NAMES  # noqa: E402
from bench.training.train import train_run  # noqa: E402
from conftest import make_split, tiny_schema  # noqa: E402

TOL = 1e-6  # cross-CPU spread measured at <= 1.9e-7 (module docstring)


def golden_dataset() -> PreparedDataset:
    """320 / 160 / 160 samples on ``tiny_schema()``; label = item-id parity with 15% noise."""
    schema = tiny_schema()
    splits = []
    for seed, n in ((10, 320), (11, 160), (12, 160)):
        s = make_split(schema, n=n, seed=seed)
        noise = torch.rand(n, generator=torch.Generator().manual_seed(100 + seed)) < 0.15
        s.label = ((s.item[:, 0] % 2 == 0) ^ noise).float()
        splits.append(s)
    g = torch.Generator().manual_seed(7)
    V = schema.item_fields[0].vocab_size
    cols = [torch.arange(V)] + [torch.randint(2, f.vocab_size, (V,), generator=g) for f in schema.item_fields[1:]]
    table = torch.stack(cols, -1)
    table[0] = 0
    return PreparedDataset("golden", "golden-v1", "0" * 64, schema, *splits, item_table=table, path=Path("golden"))


def golden_config() -> dict:
    return {
        "train": {"lr": 1e-2, "batch_size": 64, "max_epochs": 2, "patience": 5, "eval_batch_size": 96,
                  "eval_every_steps": 0, "weight_decay": 0.0},
        "model": {},
    }


def golden_figures(model: str) -> dict[str, float]:
    """Train ``model`` on the golden dataset (seed 0, one thread) and flatten what it produced."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record, _ = train_run(golden_dataset(), model, golden_config(), seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    out = {f"valid_{k}": v for k, v in record["valid"].items()}
    out.update({f"test_{k}": v for k, v in record["test"].items()})
    for h in record["valid_history"]:
        out[f"train_loss_epoch{h['epoch']}"] = h["train_loss"]
        out[f"valid_auc_epoch{h['epoch']}"] = h["valid"]["auc"]
    out["best_epoch"] = float(record["best_epoch"])
    out["steps"] = float(record["steps"])
    return out


# Recorded with the code of commit 29ef94b (before any speed work on bench/training/train.py).
EXPECTED: dict[str, dict[str, float]] = {
    'lr': {
        'valid_auc': 0.7102672292545711,
        'valid_logloss': 0.6747212775940981,
        'valid_gauc': 0.69430533008658,
        'test_auc': 0.7668385685263321,
        'test_logloss': 0.671891835397934,
        'test_gauc': 0.756185515873016,
        'train_loss_epoch1': 0.6889029502868652,
        'valid_auc_epoch1': 0.6665103922487888,
        'train_loss_epoch2': 0.6734707355499268,
        'valid_auc_epoch2': 0.7102672292545711,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
    'wide_deep': {
        'valid_auc': 0.9046726050945461,
        'valid_logloss': 0.496863617823437,
        'valid_gauc': 0.9116477272727274,
        'test_auc': 0.8656040006250976,
        'test_logloss': 0.5295373270881922,
        'test_gauc': 0.8490352182539682,
        'train_loss_epoch1': 0.6880013465881347,
        'valid_auc_epoch1': 0.8177840287544929,
        'train_loss_epoch2': 0.619147777557373,
        'valid_auc_epoch2': 0.9046726050945461,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
    'dcn': {
        'valid_auc': 0.9229567119862478,
        'valid_logloss': 0.5182208824044414,
        'valid_gauc': 0.9225196158008657,
        'test_auc': 0.8573214564775746,
        'test_logloss': 0.5465558838649227,
        'test_gauc': 0.8398288690476191,
        'train_loss_epoch1': 0.6940659999847412,
        'valid_auc_epoch1': 0.9204563213002032,
        'train_loss_epoch2': 0.644896125793457,
        'valid_auc_epoch2': 0.9229567119862478,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
    'deepfm': {
        'valid_auc': 0.8726363494295983,
        'valid_logloss': 0.5868323914781061,
        'valid_gauc': 0.8923694534632034,
        'test_auc': 0.8412251914361618,
        'test_logloss': 0.598223038108568,
        'test_gauc': 0.8370585317460317,
        'train_loss_epoch1': 0.6888433456420898,
        'valid_auc_epoch1': 0.7652758243475543,
        'train_loss_epoch2': 0.6363163471221924,
        'valid_auc_epoch2': 0.8726363494295983,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
    'xdeepfm': {
        'valid_auc': 0.9067041725269572,
        'valid_logloss': 0.47987373515952997,
        'valid_gauc': 0.9076833062770563,
        'test_auc': 0.8263791217377715,
        'test_logloss': 0.5635993442912834,
        'test_gauc': 0.8210292658730157,
        'train_loss_epoch1': 0.9141751289367676,
        'valid_auc_epoch1': 0.8957649632755118,
        'train_loss_epoch2': 0.5770217895507812,
        'valid_auc_epoch2': 0.9067041725269572,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
    'din': {
        'valid_auc': 0.9051414283481793,
        'valid_logloss': 0.6895311727573012,
        'valid_gauc': 0.9170035173160173,
        'test_auc': 0.8338802937959054,
        'test_logloss': 0.6902003511532759,
        'test_gauc': 0.8332366071428572,
        'train_loss_epoch1': 0.6888647556304932,
        'valid_auc_epoch1': 0.9051414283481793,
        'train_loss_epoch2': 0.5944905281066895,
        'valid_auc_epoch2': 0.9018596655727457,
        'best_epoch': 1.0,
        'steps': 10.0,
    },
    'dien': {
        'valid_auc': 0.9274886701047039,
        'valid_logloss': 0.5872877431049252,
        'valid_gauc': 0.9367573051948052,
        'test_auc': 0.853258321612752,
        'test_logloss': 0.6109809662912953,
        'test_gauc': 0.839171626984127,
        'train_loss_epoch1': 2.0737367630004884,
        'valid_auc_epoch1': 0.7888732614471011,
        'train_loss_epoch2': 1.9820331573486327,
        'valid_auc_epoch2': 0.9274886701047039,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
    'mian': {
        'valid_auc': 0.7721518987341771,
        'valid_logloss': 0.6891655485180964,
        'valid_gauc': 0.774880275974026,
        'test_auc': 0.7465228942022191,
        'test_logloss': 0.6892586895005473,
        'test_gauc': 0.7559697420634921,
        'train_loss_epoch1': 0.6951698780059814,
        'valid_auc_epoch1': 0.6200968901390843,
        'train_loss_epoch2': 0.7024811744689942,
        'valid_auc_epoch2': 0.7721518987341771,
        'best_epoch': 2.0,
        'steps': 10.0,
    },
}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_training_results_are_unchanged(model):
    assert model in EXPECTED, f"no golden values for {model}; run python tests/test_golden.py"
    got = golden_figures(model)
    want = EXPECTED[model]
    assert set(got) == set(want)
    bad = {k: (got[k], want[k]) for k in want if abs(got[k] - want[k]) > TOL}
    assert not bad, f"{model}: results changed by more than {TOL} (got, expected): {bad}"


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_same_seed_is_bit_identical_on_this_machine(model):
    first, second = golden_figures(model), golden_figures(model)
    assert first == second, {k: (first[k], second[k]) for k in first if first[k] != second[k]}


def test_same_seed_is_bit_identical_in_a_fresh_process():
    """A fresh interpreter (nothing cached, other hash seed) gives exactly this process's figures."""
    out = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=600)
    fresh = json.loads(out.stdout)
    here = {m: golden_figures(m) for m in MODEL_NAMES}
    assert fresh == here


def test_every_registered_model_has_golden_values():
    assert set(EXPECTED) == set(MODEL_NAMES)


#: CPU kernel settings of ``--spread``: torch's dispatch level, MKL's and oneDNN's instruction sets
KERNEL_SETTINGS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "no-simd": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "mkl-cbwr": {"MKL_CBWR": "COMPATIBLE"},
}


def spread() -> None:
    """Print the largest difference of the golden figures between CPU kernel settings (each in a
    fresh interpreter, since the settings are read when torch loads) and against ``EXPECTED``."""
    import itertools

    runs = {"recorded": EXPECTED}
    for name, env in KERNEL_SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        runs[name] = json.loads(out.stdout)
    for a, b in itertools.combinations(runs, 2):
        diff, where = max((abs(runs[a][m][k] - runs[b][m][k]), (m, k)) for m in EXPECTED for k in EXPECTED[m])
        print(f"{a:>9s} vs {b:<9s} max |difference| {diff:.3g} ({where[0]} {where[1]})")


if __name__ == "__main__":
    if "--json" in sys.argv:  # the figures of every model, for the fresh-process test and --spread
        print(json.dumps({m: golden_figures(m) for m in MODEL_NAMES}))
    elif "--spread" in sys.argv:
        spread()
    else:  # prints the EXPECTED table for the current code
        print("EXPECTED: dict[str, dict[str, float]] = {")
        for name in MODEL_NAMES:
            figures = golden_figures(name)
            print(f"    {name!r}: {{")
            for k, v in figures.items():
                print(f"        {k!r}: {v!r},")
            print("    },")
        print("}")
