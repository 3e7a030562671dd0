"""The layout's rules, checked: import-linter's contracts (pyproject.toml), the old module paths a study started
before the move pickled, one definition of the row vocabulary, no import hidden in a function without its reason."""

import ast
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """posesplat/, study/ and pyproject.toml copied aside, where a back-import can be planted."""
    root = tmp_path_factory.mktemp("layout")
    for name in ("posesplat", "study"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


def test_the_import_contracts_hold():
    r = lint(ROOT)
    assert r.returncode == 0 and "4 kept, 0 broken" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("where,line,broken", [
    ("study/base/planted.py", "import study.runner.run\n", "study's layers"),
    ("study/analysis/planted.py", "from study.runner import sink\n", "study's layers"),
    ("study/analysis/planted.py", "import ray\n", "never import Ray"),
    ("posesplat/planted.py", "from study.base import storage\n", "posesplat is the model library"),
])
def test_a_planted_back_import_breaks_a_contract(tree_copy, where, line, broken):
    planted = tree_copy / where
    planted.write_text(line)
    try:
        r = lint(tree_copy)
    finally:
        planted.unlink()
    assert r.returncode != 0 and f"{broken}" in r.stdout and "BROKEN" in r.stdout, r.stdout + r.stderr


def test_the_decision_loads_no_torch():
    """The rule, its simulation and its replay on a bank import without torch (or the renderer)."""
    code = ("import sys, study.analysis.decide, study.analysis.simulate, study.analysis.replay, study.analysis.confirm;"
            " print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('posesplat.render')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_torch_import_in_the_decision_breaks_its_contract(tree_copy):
    """The contract names the pure modules: one import of the training loop in one of them breaks it."""
    looks = tree_copy / "study/analysis/looks.py"
    kept = looks.read_text()
    looks.write_text(kept + "\nfrom posesplat.train import evaluate  # noqa: E402\n")
    try:
        r = lint(tree_copy)
    finally:
        looks.write_text(kept)
    assert r.returncode != 0 and "the decision is pure" in r.stdout and "BROKEN" in r.stdout, r.stdout + r.stderr


def test_old_module_paths_resolve_to_the_moved_modules():
    """A study interrupted before the move holds Ray pickles naming study.sink, study.search, study.trainable."""
    from study.runner.search import PlannedSearcher
    from study.runner.sink import ParquetSink
    from study.runner.trainable import run_trial

    for obj, old in ((ParquetSink, b"study.sink"), (PlannedSearcher, b"study.search"), (run_trial, b"study.trainable")):
        new = obj.__module__.encode()
        blob = pickle.dumps(obj, protocol=0)
        assert new in blob
        assert pickle.loads(blob.replace(new, old)) is obj
    import study.resources
    import study.runner.resources

    assert study.resources.gpu_fraction is study.runner.resources.gpu_fraction


def test_the_selection_keys_are_recorded_with_the_selected_epoch():
    from study.base.rows import ENDED, SELECT, SELECTED, STATUSES

    assert SELECTED[0] == SELECT[0] and set(SELECT) <= set(SELECTED) and set(ENDED) < set(STATUSES)


DEFERRED = ("# deferred:", "# private:")  # the comment an import inside a function carries, saying why


def test_imports_inside_functions_say_why():
    hidden = []
    for path in sorted(p for root in ("posesplat", "study", "bench") for p in (ROOT / root).rglob("*.py")):
        lines = path.read_text().splitlines()
        for f in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for n in ast.walk(f):
                    if isinstance(n, (ast.Import, ast.ImportFrom)) and not any(
                            d in lines[n.lineno - 1] for d in DEFERRED):
                        hidden.append(f"{path.relative_to(ROOT)}:{n.lineno}")
    assert not hidden, hidden


def test_no_file_over_500_lines_and_no_function_over_60():
    """Split by job: a module that grows past 500 lines, or a function past 60, holds more than one."""
    long = []
    for path in sorted(p for root in ("posesplat", "study") for p in (ROOT / root).rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for f in ast.walk(ast.parse(text)):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 60:
                long.append(f"{path.relative_to(ROOT)}:{f.lineno} {f.name}: {f.end_lineno - f.lineno + 1} lines")
    assert not long, long


def test_no_module_imports_the_package_that_holds_it():
    """A package's __init__ imports its modules; a module that imports names back from its own package's __init__
    makes a cycle that only a deferred import hides (posesplat.render and its gsplat backend did)."""
    back = []
    for path in sorted(p for root in ("posesplat", "study") for p in (ROOT / root).rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):  # __main__: run as a command, never imported by __init__
            continue
        package = ".".join(path.relative_to(ROOT).parent.parts)
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module == package:
                names = [a.name for a in n.names if not (path.parent / f"{a.name}.py").exists()
                         and not (path.parent / a.name).is_dir()]
                if names:
                    back.append(f"{path.relative_to(ROOT)}:{n.lineno} imports {', '.join(names)} from {package}")
    assert not back, back
