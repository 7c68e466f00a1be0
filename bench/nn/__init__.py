"""The models' library: everything MIAN and the baselines are built from, importing only torch,
the standard library and ``bench.nn`` itself (never the harness; tests/test_architecture.py).

| module | purpose |
|---|---|
| :mod:`bench.nn.contract` | the input contract: feature schema, :class:`Batch` (and whole splits), :class:`ModelOutput` |
| :mod:`bench.nn.config` | the base of every model's ``Config`` and its one range check |
| :mod:`bench.nn.embedding` | per-field embedding tables (Eq. 1-2) and the non-sequence models' field matrix |
| :mod:`bench.nn.mlp` | the DNN tower and its activations (ReLU, PReLU, Dice) |
| :mod:`bench.nn.pooling` | masked mean over the real behaviours |
| :mod:`bench.nn.interaction` | linear part, FM pairwise term, DCN's cross network, xDeepFM's CIN |
| :mod:`bench.nn.attention` | DIN's target attention and the masked softmax |
| :mod:`bench.nn.sequence` | re-alignment of left-padded histories, fused GRU / AUGRU |

Like ``fuxictr.pytorch.layers`` or ``torch_rechub.basic.layers``: one library every model
imports, the trainer apart. MIAN's own modules (IBIM, IUIM, ICIM, GIM) are in :mod:`mian.layers`.
"""
