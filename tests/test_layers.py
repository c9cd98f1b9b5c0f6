"""The package's layers, held for every module at once (docs/design.md, "Layout"): each module of src/wam is
assigned a layer below, and its imports (at the top or inside a function, read with `ast`) may reach only its own
layer, a layer of its rank that names it as allowed, or a layer of a lower rank. The core never imports
training, evaluation or serving. A new module needs a row here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# (rank, layer, modules): a module may import its own layer and any layer of a lower rank; layers of the same rank
# are peers that never import each other. A name ending in ".*" covers a package and all of its modules.
LAYERS = [
    (0, "base", ["wam", "wam.errors", "wam.config", "wam.atomic", "wam.flow", "wam.samplers", "wam.stats"]),
    (1, "formats", ["wam.data.*", "wam.envs.*", "wam.text"]),  # files, simulators, task text: no model
    (2, "network", ["wam.model", "wam.tokenizer", "wam.adapters", "wam.inference.*"]),
    (3, "sampling", ["wam.modes", "wam.checkpoint"]),
    (4, "episodes", ["wam.episodes"]),  # datasets in memory and as the tokenizer's latents
    (5, "acting", ["wam.policy", "wam.critic", "wam.collect"]),
    (6, "training", ["wam.train", "wam.finetune", "wam.distributed", "wam.synthetic"]),
    (6, "evaluation", ["wam.evaluate", "wam.imagine", "wam.rollout", "wam.report"]),
    (6, "serving", ["wam.serve", "wam.client", "wam.protocol", "wam.export", "wam.runtime"]),
    (7, "drivers", ["wam.cli", "wam.quickstart", "wam.bench", "wam.bench_onnx", "wam.recipe"]),
]
CORE = {"base", "formats", "network", "sampling"}
NEVER_FROM_CORE = {"training", "evaluation", "serving", "drivers"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "wam").rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str] | None:
    for rank, name, members in LAYERS:
        for m in members:
            if module == m or (m.endswith(".*") and (module == m[:-2] or module.startswith(m[:-1]))):
                return rank, name
    return None


def wam_imports(source: str, module: str, known: set[str], is_package: bool = False) -> set[str]:
    """The wam modules that the source of `module` imports, anywhere in it (inside functions too)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from wam import modes` imports wam.modes; `from wam import MODES`, wam
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m == "wam" or m.startswith("wam.")}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    return wam_imports(path.read_text(), module, known, path.name == "__init__.py")


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_no_module_imports_one_above_its_layer():
    known = set(modules())
    wrong = []
    for module, path in modules().items():
        rank, layer = layer_of(module)
        for dep in sorted(imports_of(module, path, known)):
            dep_rank, dep_layer = layer_of(dep) or (None, None)
            if dep_rank is None:
                wrong.append(f"{module} imports {dep}, which is not a module of the package")
            elif dep_rank > rank or (dep_rank == rank and dep_layer != layer):
                wrong.append(f"{module} ({layer}) imports {dep} ({dep_layer})")
    assert not wrong, "\n".join(wrong)


def test_the_core_never_imports_training_evaluation_or_serving():
    known = set(modules())
    wrong = [
        f"{module} imports {dep}"
        for module, path in modules().items()
        if layer_of(module)[1] in CORE
        for dep in imports_of(module, path, known)
        if (layer_of(dep) or (0, ""))[1] in NEVER_FROM_CORE
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def late():\n    from wam.train import fit\n", "wam.train"),
        ("from wam import modes\n", "wam.modes"),
        ("from wam import MODES\n", "wam"),
        ("import wam.evaluate as ev\n", "wam.evaluate"),
        ("from .windows import resize_frames\n", "wam.data.windows"),
        ("from ..inference import taylor\n", "wam.inference.taylor"),
    ],
)
def test_the_import_reader_sees_what_a_module_imports(source, expected):
    """The checks above would pass vacuously if the reader missed imports: it finds them in function bodies, as
    modules named in `from wam import ...`, and relative to the module (here as if in wam.data.video)."""
    assert wam_imports(source, "wam.data.video", set(modules())) == {expected}
