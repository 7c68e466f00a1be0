"""Memory and speed of the data path (issue 16): prepare's peak RSS, the cache's bytes, and the
training throughput of one DIN epoch, each measured in a fresh interpreter.

    python -m bench.perf.datapath --dataset movielens-100k --dataset amazon-beauty \\
        --raw-dir amazon-beauty=../shared/datasets/amazon-beauty [--synthetic 1000000] [--code DIR]

For each dataset a child process prepares it into a scratch data folder (``--force``; the raw files
are read where the project finds them, or from ``--raw-dir NAME=DIR``) and reports its peak RSS
(``ru_maxrss``) and the interpreter's own RSS before preparing (torch, numpy, pandas imported); a
second child loads the cache and trains one epoch of DIN (the trainer's shuffled batches and
``train_step``, one torch thread) and reports samples/s and its peak RSS. ``--synthetic R`` adds a
generated dataset in the S3-Rec Beauty format (``Beauty.txt``, ``Beauty_time_intervals.txt``,
``Beauty_item2attributes.json``) with about R reviews: heavy-tailed user activity (5 + a geometric
number of reviews), Zipf item popularity, numpy seed 0; prepared as ``amazon-beauty`` with the
files' sha256 pins replaced in the child. ``--code DIR`` runs the children on the checkout in DIR
(e.g. the code before issue 16: the functions used exist in both). Speed figures are printed,
never asserted. The bytes per review are (peak RSS - RSS before preparing) / reviews.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

#: the child that prepares: prints one JSON line {base_rss_mb, peak_rss_mb, seconds, path, fingerprint}
PREPARE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    import torch, numpy, pandas  # the interpreter a command runs in
    import bench.data as data
    from bench.data.sources import amazon
    name, data_dir, raw_dir, synthetic = sys.argv[1], Path(sys.argv[2]), sys.argv[3] or None, sys.argv[4] == "1"
    if synthetic:  # generated files: their own sha256 instead of the published ones' pins
        from bench.data.sources.common import sha256_file
        for role, (fname, src) in list(amazon.BEAUTY_FILES.items()):
            amazon.BEAUTY_FILES[role] = (fname, type(src)(src.repo, src.commit, src.path,
                                                          sha256_file(Path(raw_dir) / fname)))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    info = data.prepare(name, data_dir, Path(raw_dir) if raw_dir else None, force=True)
    print(json.dumps({"base_rss_mb": base, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - t0, "path": str(info.path), "fingerprint": info.fingerprint,
                      "samples": sum(info.counts.values())}))
""")

#: the child that trains one DIN epoch on a cache: prints {samples_per_s, seconds, peak_rss_mb, ...}
EPOCH_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from bench.data import load_cache
    from bench.training.config import TrainConfig
    from bench.training.registry import build_model
    from bench.training.train import StepLoop, seed_everything, train_step
    from bench.training.config import resolve_config
    path, dataset, model_name, max_steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.perf_counter()
    ds = load_cache(path)
    load_s = time.perf_counter() - t0
    cfg = resolve_config(dataset, model_name)
    tcfg = TrainConfig(**cfg["train"])
    seed_everything(0)
    model = build_model(model_name, ds.schema, cfg["model"], item_table=ds.item_table)
    loop = StepLoop(model, {"train": ds.train}, tcfg, 0, torch.device("cpu"), run=model_name)
    model.train()
    n = steps = 0
    data_s = 0.0
    t0 = time.perf_counter()
    batches = loop.splits["train"].batches(tcfg.batch_size, shuffle=True, generator=loop.generator)
    while steps < max_steps:
        t1 = time.perf_counter()
        batch = next(batches, None)
        data_s += time.perf_counter() - t1
        if batch is None:
            break
        train_step(model, loop.optimizer, batch)
        n += len(batch)
        steps += 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"samples_per_s": n / seconds, "samples": n, "steps": steps, "seconds": seconds,
                      "data_s": data_s, "load_s": load_s,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def write_synthetic_beauty(folder: Path, reviews: int, seed: int = 0) -> int:
    """Write the three S3-Rec Beauty files with about ``reviews`` reviews into ``folder``
    (module docstring); returns the number of reviews written."""
    rng = np.random.default_rng(seed)
    n_users = max(1, reviews // 9)
    counts = 5 + rng.geometric(0.25, n_users) - 1  # heavy-tailed activity, at least 5 (5-core)
    n_items = max(100, reviews // 16)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9  # Zipf popularity
    items = rng.choice(n_items, size=int(counts.sum()), p=pop / pop.sum()) + 1
    gaps = np.where(rng.random(len(items)) < 0.4, 0, rng.integers(1, 90 * 86_400, len(items)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gaps[starts] = 0
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "Beauty.txt", "w") as seq, open(folder / "Beauty_time_intervals.txt", "w") as gap:
        for u, (lo, n) in enumerate(zip(starts, counts), start=1):
            line = f"{u} " + " ".join(map(str, items[lo:lo + n]))
            seq.write(line + "\n")
            gap.write(line + "\t" + " ".join(map(str, gaps[lo:lo + n])) + "\n")
    attrs = {str(i): [int(1 + i % 250)] for i in range(1, n_items + 1)}
    (folder / "Beauty_item2attributes.json").write_text(json.dumps(attrs))
    return int(counts.sum())


def _child(code: Path, program: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", program, *args], cwd=code, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child failed: {out.stderr.strip().splitlines()[-3:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def measure(name: str, code: Path, data_dir: Path, raw_dir: Path | None, reviews: int | None,
            synthetic: bool, max_steps: int) -> dict:
    """Prepare ``name`` and train one epoch (at most ``max_steps`` steps) in two children."""
    prep = _child(code, PREPARE_CHILD, [name, str(data_dir), str(raw_dir or ""), "1" if synthetic else "0"])
    epoch = _child(code, EPOCH_CHILD, [prep["path"], name, "din", str(max_steps)])
    row = {"dataset": name + (" (synthetic)" if synthetic else ""), "reviews": reviews,
           "samples": prep["samples"], "prepare_s": prep["seconds"], "base_rss_mb": prep["base_rss_mb"],
           "prepare_peak_rss_mb": prep["peak_rss_mb"], "cache_bytes": _bytes(Path(prep["path"])),
           "fingerprint": prep["fingerprint"], "din_samples_per_s": epoch["samples_per_s"],
           "din_steps": epoch["steps"], "din_data_s": epoch["data_s"], "din_seconds": epoch["seconds"],
           "load_s": epoch["load_s"], "train_peak_rss_mb": epoch["peak_rss_mb"]}
    if reviews:
        row["bytes_per_review"] = (prep["peak_rss_mb"] - prep["base_rss_mb"]) * 2**20 / reviews
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", action="append", default=[], help="a prepared dataset's name (repeatable)")
    p.add_argument("--raw-dir", action="append", default=[], metavar="NAME=DIR", help="raw files of NAME in DIR")
    p.add_argument("--synthetic", action="append", type=int, default=[], metavar="REVIEWS",
                   help="a generated S3-Rec Beauty-format dataset of about REVIEWS reviews (repeatable)")
    p.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[2],
                   help="the checkout the children run (default: this one)")
    p.add_argument("--max-steps", type=int, default=10**9, help="cap of the DIN epoch's steps")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    raw = dict(item.split("=", 1) for item in args.raw_dir)
    reviews_of = {"amazon-beauty": 198_502, "movielens-100k": 100_000, "movielens-100k-user": 100_000}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        data_dir = Path(tmp) / "data"
        ml_raw = Path(os.environ.get("MIAN_DATA_DIR", args.code / "data")) / "raw" / "movielens-100k"
        if ml_raw.is_dir():  # no second download
            import shutil
            shutil.copytree(ml_raw, data_dir / "raw" / "movielens-100k")
        for name in args.dataset:
            rd = Path(raw[name]) if name in raw else None
            rows.append(measure(name, args.code, data_dir, rd, reviews_of.get(name), False, args.max_steps))
            print(json.dumps(rows[-1]), flush=True)
        for r in args.synthetic:
            folder = Path(tmp) / f"synthetic-{r}"
            n = write_synthetic_beauty(folder, r)
            rows.append(measure("amazon-beauty", args.code, Path(tmp) / f"data-{r}", folder, n, True, args.max_steps))
            print(json.dumps(rows[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
