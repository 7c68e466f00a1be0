"""Forward+backward time of MIAN on synthetic batches at MovieLens-100K shapes.

Run: ``python -m mian.benchmark [--threads 2] [--steps 30] [--set key=value ...]``.
Shapes (PROTOCOL 2.1, real ML-100K vocabulary sizes incl. padding and OOV): item fields movie_id
1650, genre 20, year 20; T = 50, all histories full (the worst case: no padding to trim); user
fields user_id 760, gender 4, age 9, occupation 23, zip1 12; context fields hour 26, weekday 9,
gap 9; batch 256; one Adam step per timed iteration.
"""
from __future__ import annotations

import argparse
import ast
import logging
import statistics
import time
from typing import Any

import torch

from bench.contract import Batch, FeatureSchema, Field
from bench.registry import count_params, make_config
from mian.model import MIAN

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
    """A synthetic batch on ``schema``; ``full`` fills every history slot, else lengths are
    uniform in [0, T]."""
    g = torch.Generator().manual_seed(seed)
    T = schema.max_len

    def ids(fields, *shape):
        cols = [torch.randint(2, f.vocab_size, (*shape, 1), generator=g) for f in fields]
        return torch.cat(cols, -1) if cols else torch.zeros(*shape, 0, dtype=torch.long)

    lengths = torch.full((batch_size,), T) if full else torch.randint(0, T + 1, (batch_size,), generator=g)
    mask = torch.arange(T).unsqueeze(0) >= (T - lengths).unsqueeze(1)
    return Batch(
        item=ids(schema.item_fields, batch_size),
        hist=ids(schema.item_fields, batch_size, T) * mask.unsqueeze(-1),
        hist_mask=mask,
        user=ids(schema.user_fields, batch_size),
        context=ids(schema.context_fields, batch_size),
        label=torch.randint(0, 2, (batch_size,), generator=g).float(),
        user_index=torch.zeros(batch_size, dtype=torch.long),
    )


def time_training_step(
    params: dict[str, Any] | None = None,
    schema: FeatureSchema = ML100K_SCHEMA,
    batch_size: int = 256,
    steps: int = 30,
    warmup: int = 10,
    full: bool = True,
) -> dict[str, float]:
    """Median wall time (ms) of forward + BCE + backward + Adam step, and the parameter count."""
    torch.manual_seed(0)
    model = MIAN(schema, make_config(MIAN.Config, params or {}))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = random_batch(schema, batch_size, full=full)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch).logits, batch.label)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"ms_per_step": 1e3 * statistics.median(times), "params": float(count_params(model))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--partial", action="store_true", help="random history lengths, not all full")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="MIAN.Config overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    res = time_training_step(params, steps=args.steps, full=not args.partial)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info(
        "MIAN %s: %.1f ms per step (batch 256, T=50, %d threads), %d parameters",
        params or "defaults",
        res["ms_per_step"],
        args.threads,
        int(res["params"]),
    )


if __name__ == "__main__":
    main()
