"""The MIAN paper's own numbers: the one place the tables and the claims report take them from.

Every figure is copied from ../shared/paper/MIAN.md (the section is named at each); they come
from the paper's datasets (Amazon Books / Electronics, a commercial set) and are shown beside
ours for orientation only, never compared as values to match.
"""
from __future__ import annotations

# MIAN.md 6.1 (Table 2): model -> AUC on (Books, Electronics, Commercial)
PAPER_TABLE2 = {
    "lr": (0.7876, 0.8214, 0.7584),
    "wide_deep": (0.7932, 0.8385, 0.7611),
    "dcn": (0.7995, 0.8540, 0.7646),
    "deepfm": (0.8067, 0.8636, 0.7609),
    "xdeepfm": (0.8089, 0.8683, 0.7610),
    "din": (0.8145, 0.8807, 0.7612),
    "dien": (0.8159, 0.8836, 0.7634),
    "mian": (0.8209, 0.8913, 0.7674),
}
# MIAN.md 6.1 (Table 2): model -> logloss on (Books, Electronics, Commercial)
PAPER_TABLE2_LOGLOSS = {
    "lr": (0.4401, 0.2116, 0.3334),
    "wide_deep": (0.4228, 0.2033, 0.3299),
    "dcn": (0.4236, 0.1824, 0.3197),
    "deepfm": (0.4188, 0.1708, 0.3297),
    "xdeepfm": (0.4174, 0.1662, 0.3301),
    "din": (0.4113, 0.1273, 0.3205),
    "dien": (0.4100, 0.1225, 0.3151),
    "mian": (0.4018, 0.1136, 0.3097),
}
#: the datasets of the columns of PAPER_TABLE2 and PAPER_TABLE2_LOGLOSS
PAPER_TABLE2_DATASETS = ("Books", "Electronics", "Commercial")

# MIAN.md 6.3 (Table 3): variant -> (Books AUC, Books logloss, Electronics AUC, Electronics logloss)
PAPER_TABLE3 = {
    "default": (0.8209, 0.4018, 0.8913, 0.1136),
    "no_iuim": (0.8187, 0.4066, 0.8875, 0.1197),
    "no_icim": (0.8194, 0.4058, 0.8902, 0.1141),
    "no_ibim": (0.8154, 0.4104, 0.8843, 0.1214),
    "no_gim": (0.8189, 0.4060, 0.8872, 0.1186),
    "no_iuim_icim": (0.8166, 0.4079, 0.8846, 0.1220),
    "best_baseline": (0.8159, 0.4100, 0.8836, 0.1225),
}
PAPER_TABLE3_COLUMNS = ("books_auc", "books_logloss", "electronics_auc", "electronics_logloss")

# MIAN.md 6.4 (Table 4, commercial dataset): variant -> (AUC, logloss)
PAPER_TABLE4 = {
    "default": (0.7674, 0.3097),
    "post_ln": (0.7662, 0.3103),
    "no_transformer": (0.7612, 0.3205),
}
PAPER_TABLE4_COLUMNS = ("commercial_auc", "commercial_logloss")

# MIAN.md 6.4 (Figure 5, commercial dataset): the chart's only reading of convergence speed
PAPER_FIGURE5 = "Pre-LN rises fastest (about 0.765 by 500-700 steps; others slower)"

# MIAN.md 6.6 (Figure 6): of PAPER_FIGURE6_CASES cases, in how many the interactive
# representation has the larger GIM weight than its original one
PAPER_FIGURE6 = {"R_ibim>e_b": 14, "R_iuim>e_u": 14, "R_icim>e_c": 13}
PAPER_FIGURE6_CASES = 14


def paper_best_baseline(table: dict[str, tuple[float, ...]], column: int, higher: bool, proposed: str = "mian") -> str:
    """The baseline of ``table`` (PAPER_TABLE2 or PAPER_TABLE2_LOGLOSS) with the best value in
    ``column`` (the highest when ``higher``, else the lowest): the paper's underlined cell."""
    pick = max if higher else min
    return pick((m for m in table if m != proposed), key=lambda m: table[m][column])
