"""Training-step time of MIAN (or any registered model) at MovieLens-100K shapes or on real batches.

Run: ``python -m mian.benchmark [--threads 2] [--steps 30] [--model mian] [--dataset NAME]
[--set key=value ...]``.

Without ``--dataset`` the batches are synthetic at MovieLens-100K shapes (PROTOCOL 2.1, real
ML-100K vocabulary sizes incl. padding and OOV): item fields movie_id 1650, genre 20, year 20;
T = 50, every history full (the worst case: nothing to trim); user fields user_id 760, gender 4,
age 9, occupation 23, zip1 12; context fields hour 26, weekday 9, gap 9; batch 256. With
``--dataset`` eight random training batches of the prepared dataset are cycled (real history
lengths). One timed step = zero_grad + forward + BCE (+ aux loss) + backward + Adam step; the
median over ``steps`` steps after ``warmup`` steps is reported, as wall time and as process CPU
time (steadier on a shared machine).
"""
from __future__ import annotations

import argparse
import ast
import logging
import statistics
import time
from typing import Any

import torch
from torch.nn import functional as F

from bench.contract import Batch, FeatureSchema, Field
from baselines.speed import synthetic_batch
from bench.registry import build_model, count_params

log = logging.getLogger(__name__)

ML100K_SCHEMA = FeatureSchema(
    item_fields=(Field("movie_id", 1650), Field("genre", 20), Field("year", 20)),
    user_fields=(
        Field("user_id", 760),
        Field("gender", 4),
        Field("age", 9),
        Field("occupation", 23),
        Field("zip1", 12),
    ),
    context_fields=(Field("hour", 26), Field("weekday", 9), Field("gap", 9)),
    max_len=50,
)


def random_batch(schema: FeatureSchema, batch_size: int, full: bool = True, seed: int = 0) -> Batch:
    """A random batch on ``schema`` (``baselines.speed.synthetic_batch``)."""
    return synthetic_batch(schema, batch_size, seed=seed, full=full)


def time_training_step(
    batches: list[Batch],
    schema: FeatureSchema,
    model_name: str = "mian",
    params: dict[str, Any] | None = None,
    item_table: torch.Tensor | None = None,
    steps: int = 30,
    warmup: int = 10,
) -> dict[str, float]:
    """Median wall and CPU time (ms) of one training step cycling over ``batches``, and the
    trainable parameter count. Raises what :func:`bench.registry.build_model` raises."""
    torch.manual_seed(0)
    model = build_model(model_name, schema, params or {}, item_table=item_table)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    wall, cpu = [], []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        loss.backward()
        opt.step()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {
        "wall_ms": 1e3 * statistics.median(wall),
        "cpu_ms": 1e3 * statistics.median(cpu),
        "params": float(count_params(model)),
    }


def _parse_sets(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--model", default="mian", help="registry name (default mian)")
    ap.add_argument("--dataset", default=None, help="time on real training batches of this dataset")
    ap.add_argument("--partial", action="store_true", help="synthetic: random history lengths")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    params = _parse_sets(args.set)
    if args.dataset:
        from bench.data import load_prepared  # only needed for real batches

        ds = load_prepared(args.dataset)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(ds.train), generator=g)
        batches = [ds.train.take(perm[i * 256 : (i + 1) * 256]) for i in range(8)]
        schema, item_table, where = ds.schema, ds.item_table, f"{args.dataset} training batches"
    else:
        batches = [random_batch(ML100K_SCHEMA, 256, full=not args.partial)]
        schema, item_table = ML100K_SCHEMA, None
        where = "ML-100K shapes, " + ("random lengths" if args.partial else "full histories")
    res = time_training_step(batches, schema, args.model, params, item_table, steps=args.steps)
    log.info(
        "%s %s: %.1f ms wall, %.1f ms CPU per step (batch 256, %s, %d threads), %d parameters",
        args.model,
        params or "defaults",
        res["wall_ms"],
        res["cpu_ms"],
        where,
        args.threads,
        int(res["params"]),
    )


if __name__ == "__main__":
    main()
