"""The package layout as a rule: which folder may import which, and small modules.

docs/architecture.md draws the same graph.  Imports are read with ``ast``, so
nothing is imported (and no TensorFlow loaded) to check them.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cln_textgen"
MAX_LINES = 400

BOTTOM = {"config", "errors", "backend", "strict_yaml"}
BASE = {"model", "data", "runs"} | BOTTOM
# What each part of the package may import besides itself.  "root" is
# cln_textgen/__init__.py (its public names load lazily, by name, not by import).
ALLOWED = {
    "backend": {"errors"},  # a missing package is a UserError
    "errors": set(),
    "strict_yaml": {"errors"},  # the one safe YAML reader of config and runs
    "config": {"errors", "strict_yaml"},
    "pretrain_config": {"config", "errors", "strict_yaml"},
    "options": {"errors"},
    # model and data sit side by side; the run folder checks its files with both
    "model": BOTTOM,
    "data": BOTTOM,
    "runs": BOTTOM | {"model", "data", "pretrain_config"},
    "generation": BASE,
    "training": BASE,  # the loop knows no task: no labels, no texts, no sampling
    "evaluation": BASE | {"generation"},  # generated texts judged; perplexity is its own
    # the conditional LM, the classifier and pretraining: what each learns, trained by
    # training/'s loop, evaluated with evaluation/'s figures, sampled with generation/
    "tasks": BASE | {"training", "evaluation", "generation", "pretrain_config"},
    "serving": BASE | {"generation"},  # HTTP in front of a loaded generator
    # the decoder's forward pass and choices in a SavedModel; the root for __version__
    "export": BASE | {"generation", "root"},
    "commands": BASE | {"generation", "training", "evaluation", "serving", "export", "tasks",
                        "pretrain_config"},
    "cli": {"root", "errors", "commands"},
    "__main__": {"cli"},
    "root": set(),
}
# Modules of plain data that any part may read: they import nothing from the
# package but errors.  (The table of generation options is one: config's
# generate section is derived from it.)
LEAVES = {"options", "training.interrupts"}  # the CLI makes SIGTERM act as Ctrl-C


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def dotted(path):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part(name):
    """``model.layers`` -> ``model``; the package itself -> ``root``."""
    return name.split(".")[0] if name else "root"


def package_imports(path):
    """The package modules that ``path`` imports, as dotted names below cln_textgen."""
    own = dotted(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                module = "cln_textgen" + ("." + module if module else "")
            else:
                module = node.module
            # `from cln_textgen.data import batching` imports the module batching
            names = [f"{module}.{alias.name}" for alias in node.names]
            names = [n if _is_module(n) else module for n in names]
        else:
            continue
        for name in names:
            if name == "cln_textgen" or name.startswith("cln_textgen."):
                found.add(name.removeprefix("cln_textgen").lstrip("."))
    return found


def _is_module(name):
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def test_every_part_of_the_package_has_a_rule():
    parts = {part(dotted(p)) for p in modules()}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to ALLOWED and the docs"


def backward_imports(name, targets):
    """The imports of module ``name`` that its part may not make."""
    return sorted(t for t in targets if part(t) != part(name) and t not in LEAVES
                  and part(t) not in ALLOWED[part(name)])


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    name = dotted(path)
    wrong = backward_imports(name, package_imports(path))
    assert not wrong, (f"cln_textgen.{name} imports {wrong}: {part(name)}/ may import only "
                       f"{sorted(ALLOWED[part(name)])} (see docs/architecture.md)")


def test_leaves_import_nothing_but_errors():
    for leaf in LEAVES:
        path = PACKAGE / (leaf.replace(".", "/") + ".py")
        if path.is_file():
            assert package_imports(path) <= {"errors"}, leaf


def test_the_checker_sees_imports_and_refuses_backward_ones():
    assert {"training.distribute", "backend"} <= package_imports(PACKAGE / "training" / "step.py")
    assert {"data.batching", "evaluation.perplexity", "model.modeling"} <= \
        package_imports(PACKAGE / "tasks" / "lm.py")
    # __version__ from the root; SIGTERM as Ctrl-C for every command
    assert package_imports(PACKAGE / "cli.py") == {"", "errors", "training.interrupts"}
    assert backward_imports("model.modeling", {"training.step", "backend"}) == ["training.step"]
    assert backward_imports("generation.generate", {"training.trainer"}) == ["training.trainer"]
    assert backward_imports("data.batching", {"model.tokenization"}) == ["model.tokenization"]
    assert backward_imports("training.trainer", {"generation.generate"}) == ["generation.generate"]
    assert backward_imports("evaluation.evaluate", {"training.step"}) == ["training.step"]
    assert backward_imports("tasks.lm", {"generation.generate", "training.trainer"}) == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_passes_400_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it by job"
