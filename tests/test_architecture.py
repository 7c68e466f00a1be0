"""The shape of the code: the models' library (bench/nn/) and the models (baselines/, mian/) never
import the harness, and the registry takes every model from its own module (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from bench.training import registry

ROOT = Path(__file__).resolve().parents[1]
#: folder -> the top-level packages its modules may import besides the standard library
ALLOWED = {
    "bench/nn": {"torch", "bench.nn"},
    "baselines": {"torch", "bench.nn", "baselines"},
    "mian": {"torch", "bench.nn", "mian"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement of the file at ``path``."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((node.lineno, name))
    return out


def allowed(name: str, packages: set[str]) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_models_and_their_library_import_only_torch_the_standard_library_and_bench_nn(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}"
           for p in files for line, name in imported_modules(p) if not allowed(name, ALLOWED[folder])]
    assert not bad, "\n".join(bad)


#: the harness's rooms, lowest first: a room imports only the rooms below it (and bench.io /
#: bench.metrics, two leaf utilities); cli.py imports any
ROOMS = ("nn", "data", "training", "report", "perf")


@pytest.mark.parametrize("room", ROOMS)
def test_the_harness_rooms_import_only_downward(room):
    below = {f"bench.{r}" for r in ROOMS[: ROOMS.index(room) + 1]} | {"bench.io", "bench.metrics"}
    third_party = {"torch", "numpy", "pandas", "scipy", "sklearn", "pyarrow", "matplotlib", "seaborn", "tabulate",
                   "tqdm", "click", "tomli", "deepctr_torch", "ray", "optuna"}
    files = sorted((ROOT / "bench" / room).rglob("*.py"))
    assert files, room
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in files for line, name in imported_modules(p)
           if not allowed(name, below | third_party)]
    assert not bad, "\n".join(bad)


def test_the_leaf_utilities_import_nothing_of_the_harness():
    bad = [f"{p.name}:{line} imports {name}" for p in (ROOT / "bench" / "io.py", ROOT / "bench" / "metrics.py")
           for line, name in imported_modules(p) if name.startswith("bench")]
    assert not bad, bad
    assert sorted(p.name for p in (ROOT / "bench").glob("*.py")) == ["__init__.py", "io.py", "metrics.py"]


def test_the_import_check_sees_a_harness_import(tmp_path, monkeypatch):
    pkg = tmp_path / "baselines"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import torch\nfrom bench.training.train import train_run\nfrom . import layers\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = [n for _, n in imported_modules(pkg / "bad.py")]
    assert names == ["torch", "bench.training.train", "baselines"]
    assert [allowed(n, ALLOWED["baselines"]) for n in names] == [True, False, True]


def test_the_registry_takes_names_labels_and_classes_from_the_model_modules():
    paper = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien", "mian")  # Table 2's order
    assert [m for m in registry.MODEL_NAMES if m in paper] == list(paper)  # a new model may stand anywhere
    assert list(registry.MODEL_LABELS) == list(registry.MODEL_NAMES)
    for path in registry.MODEL_MODULES:
        module = sys.modules[path]
        assert registry.model_class(module.NAME) is module.MODEL
        assert registry.MODEL_LABELS[module.NAME] == module.LABEL
    from bench.report import MODEL_LABELS, model_label

    assert MODEL_LABELS["dcn"] == model_label("dcn") == "Deep&Cross" and model_label("other") == "other"


def test_a_new_model_is_one_module_and_one_line(tmp_path, monkeypatch):
    (tmp_path / "toy_model.py").write_text(
        "from baselines.lr import LR\n\nclass Toy(LR):\n    pass\n\nNAME, LABEL, MODEL = 'toy', 'Toy', Toy\n")
    (tmp_path / "no_entry.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "MODEL_MODULES", registry.MODEL_MODULES + ("toy_model",))
    entries = registry._entries()
    assert list(entries)[-1] == "toy" and entries["toy"].LABEL == "Toy"
    monkeypatch.setattr(registry, "MODEL_MODULES", registry.MODEL_MODULES + ("no_entry",))
    with pytest.raises(ValueError, match="no_entry lacks its registry entry NAME, LABEL, MODEL"):
        registry._entries()


def test_every_dataset_comes_from_its_reader_module_and_has_a_config():
    from bench.data import DATASETS, SOURCES, _FAMILY
    from bench.training.config import config_path

    assert list(DATASETS) == [name for source in SOURCES for name in source.DATASETS]
    for name in DATASETS:
        assert name in _FAMILY[name].DATASETS
        assert config_path(name).is_file(), f"{name} has no config file {config_path(name)}"
