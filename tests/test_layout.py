"""The package's layout: each stage a sub-package that imports only from the stages before it, with empty
``__init__.py`` files; modules and functions of a readable length; the repository found by its marker file."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from kaggle_utils.core import paths

PACKAGE = Path(__file__).resolve().parent.parent / "kaggle_utils"
STAGES = ("core", "io", "preprocessing", "models", "inference", "evaluation", "training")
"""The sub-packages in import order; ``dev`` (never shipped) may import any of them."""
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``kaggle_utils`` import of a file, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kaggle_utils"):
            if node.module == "kaggle_utils":
                found += [(node.lineno, f"kaggle_utils.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("kaggle_utils")]
    return found


def test_every_module_lives_in_a_stage_and_imports_only_from_the_stages_before_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) == 1:
            assert parts[0] == "__init__.py", f"{path}: a module outside the stage folders"
            continue
        stage = parts[0]
        if stage == "dev":
            continue
        assert stage in STAGES, f"{path}: {stage}/ is not a stage ({', '.join(STAGES)})"
        for line, module in _imports(path):
            if module == "kaggle_utils":  # the package itself holds only its version
                continue
            target = module.split(".")[1]
            if target not in STAGES or STAGES.index(target) > STAGES.index(stage):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({stage}) imports {module}")
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_modules_and_functions_stay_short_enough_to_read() -> None:
    """A module longer than a sitting's read splits along its concerns; a function longer than a screen, too."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent)
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            long.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in functions:
            if (lines := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                long.append(f"{name}:{node.lineno} {node.name}: {lines} lines (at most {MAX_FUNCTION_LINES})")
    assert not long, "too long:\n" + "\n".join(long)


def test_the_sub_packages_init_files_hold_their_docstring_only() -> None:
    """No re-exports: importing a stage must not load torch or cv2 into every worker that needs one module of it."""
    for stage in (*STAGES, "dev"):
        init = PACKAGE / stage / "__init__.py"
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init} should hold its docstring only"


def test_the_repository_is_found_by_its_marker_from_a_checkout_only(tmp_path: Path) -> None:
    assert paths.find_repo_root() == PACKAGE.parent
    dataset = tmp_path / "input" / "rsna24-kaggle-utils"  # the uploaded code dataset: the package, no marker
    shutil.copytree(PACKAGE, dataset / "kaggle_utils", ignore=shutil.ignore_patterns("__pycache__", "dev"))
    assert paths.find_repo_root(dataset / "kaggle_utils" / "core" / "paths.py") is None
    site = tmp_path / "site-packages"  # an installed copy
    shutil.copytree(PACKAGE, site / "kaggle_utils", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from kaggle_utils.core import paths; print(paths.find_repo_root(), paths.REPO_ROOT)"
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(site)},
    ).stdout.split()
    assert found == ["None", str(tmp_path)]  # the defaults go under the working folder
    checkout = tmp_path / "checkout"
    shutil.copytree(site / "kaggle_utils", checkout / "kaggle_utils")
    (checkout / paths.ROOT_MARKER).write_text("[project]\n")
    assert paths.find_repo_root(checkout / "kaggle_utils" / "core" / "paths.py") == checkout
