"""The import contracts of pyproject.toml ([tool.importlinter]): the core's sub-packages
import only down the layers (base -> data -> model -> features -> lesions -> encoding ->
analysis -> results -> run), the core imports no GUI package, the widgets sit over the view
model and the layers, which sit over the core. Imports inside functions count.

Each contract is run on the package itself (kept), then on a copy of it with one planted
import that breaks it (broken, named in the report)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CONFIG = ROOT / "pyproject.toml"

LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))")


def lint(src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the package found in ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src), NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run([sys.executable, "-c", LINT, str(CONFIG)], env=env, cwd=src,
                          capture_output=True, text=True, timeout=300)


def copy_package(dest: Path) -> Path:
    """The package's Python files (not its data) under ``dest``."""
    def ignore(folder, names):
        return [n for n in names if n == "__pycache__" or
                not (n.endswith(".py") or (Path(folder) / n).is_dir())]

    shutil.copytree(SRC / "napari_lesion_align", dest / "napari_lesion_align", ignore=ignore)
    return dest


def test_the_package_keeps_its_import_contracts():
    out = lint(SRC)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and " kept" in out.stdout


def plant(root: Path, module: str, code: str) -> None:
    path = root / "napari_lesion_align" / module
    path.write_text(path.read_text() + "\n\n" + code + "\n")


# (module, planted code, the contract that must break)
PLANTS = [
    # an upward import inside a function: errors (base) asking the pipeline (run)
    ("core/base/errors.py",
     "def _planted():\n    from ..run import pipeline\n    return pipeline",
     "The core's sub-packages in the order the data flows"),
    # a data module reading the run's config at import time
    ("core/data/dataset.py", "from ..run.config import AnalysisConfig  # noqa",
     "The core's sub-packages in the order the data flows"),
    # the lesion vocabulary asking the plan (a circle inside lesions)
    ("core/lesions/vocabulary.py",
     "def _planted():\n    from .plan import LesionPlan\n    return LesionPlan",
     "The lesions: the plan over importance over masks over the vocabulary"),
    # the ridge's backends asking its cross-validation (a circle inside encoding)
    ("core/encoding/backends.py",
     "def _planted():\n    from .cross_validation import ridge_cv\n    return ridge_cv",
     "The encoding: cross-validation over solver over splits over backends"),
    # the folds reading the solver at import time
    ("core/encoding/splits.py", "from .solver import pearson_r  # noqa",
     "The encoding: cross-validation over solver over splits over backends"),
    # the core importing Qt inside a function
    ("core/analysis/display.py", "def _planted():\n    import qtpy\n    return qtpy",
     "The core imports no GUI package"),
    # the layers asking the widgets' session
    ("_layers.py", "def _planted():\n    from ._widgets import _state\n    return _state",
     "The package: the widgets over the view model and the layers over the core"),
    # the layer tuples asking the view model above them (a circle between the two)
    ("_layers.py", "def _planted():\n    from . import _view_model\n    return _view_model",
     "The package: the widgets over the view model and the layers over the core"),
    # the session asking a dock (the widgets' helpers below their docks)
    ("_widgets/_state.py", "def _planted():\n    from . import results\n    return results",
     "The widgets: docks over helpers over the session and the workers"),
]


@pytest.mark.parametrize("module,code,contract", PLANTS, ids=[p[0] for p in PLANTS])
def test_a_planted_upward_import_breaks_a_contract(tmp_path, module, code, contract):
    root = copy_package(tmp_path)
    assert lint(root).returncode == 0  # the copy keeps them before the plant
    plant(root, module, code)
    out = lint(root)
    assert out.returncode != 0, out.stdout
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, out.stdout


#: heavy or GUI packages whose imports inside functions also need a reason
LAZY_WITH_REASON = ("napari", "qtpy", "magicgui", "superqt", "dask", "distributed",
                    "matplotlib", "torch", "transformers")


def uncommented_function_imports(source: str, packages=()) -> list[int]:
    """Lines of ``source`` where a function imports one of the package's own modules (or
    one of ``packages``) with no comment (on the line or the line before) saying why it is
    not at the top."""
    import ast

    checked = {"napari_lesion_align", *packages}
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            own = (isinstance(node, ast.ImportFrom)
                   and (node.level > 0 or (node.module or "").split(".")[0] in checked)) or \
                  (isinstance(node, ast.Import)
                   and any(a.name.split(".")[0] in checked for a in node.names))
            if not own:
                continue
            line = lines[node.lineno - 1]
            before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if "#" not in line and not before.startswith("#"):
                found.append(node.lineno)
    return sorted(set(found))


PACKAGE = SRC / "napari_lesion_align"

#: modules whose function-level imports are not checked (none: every module is)
NOT_YET: set = set()


def checked_modules() -> list[Path]:
    """The core, the package's top-level modules (cli, reader, writer, sample data, layers,
    view model) and the widgets, less :data:`NOT_YET`."""
    paths = [*sorted((PACKAGE / "core").rglob("*.py")), *sorted(PACKAGE.glob("*.py")),
             *sorted((PACKAGE / "_widgets").glob("*.py"))]
    return [p for p in paths if p.relative_to(PACKAGE).as_posix() not in NOT_YET]


def test_the_package_imports_its_own_modules_at_the_top():
    paths = checked_modules()
    assert {"cli.py", "_reader.py", "_widgets/_state.py", "core/run/stages.py"} <= \
        {p.relative_to(PACKAGE).as_posix() for p in paths}
    offenders = []
    for path in paths:
        # napari, Qt, dask, matplotlib, torch and transformers imports inside functions say
        # why too (the core imports without them: a lazy import must have its reason)
        for line in uncommented_function_imports(path.read_text(encoding="utf-8"),
                                                 LAZY_WITH_REASON):
            offenders.append(f"{path.relative_to(SRC)}:{line}")
    assert offenders == [], ("imports inside functions (of the package's own modules, or of "
                             "napari / Qt / dask / matplotlib / torch) with "
                             "no comment giving the reason: " + ", ".join(offenders))


def test_an_uncommented_import_inside_a_function_is_found():
    planted = ("import numpy as np\n\n\ndef f():\n    from .stages import fit_jobs\n"
               "    return fit_jobs\n\n\ndef g():\n    # reason: a cycle\n"
               "    from napari_lesion_align.core import run\n"
               "    import napari_lesion_align.cli  # reason: start-up time\n"
               "    import dask  # an optional package: not the package's own\n"
               "    return run\n\n\ndef h():\n    import napari_lesion_align.core\n")
    assert uncommented_function_imports(planted) == [5, 18]
    heavy = ("def f():\n    from qtpy.QtCore import QTimer\n    import numpy\n\n\n"
             "def g():\n    import torch  # torch: for one backend\n    return torch\n")
    assert uncommented_function_imports(heavy) == []
    assert uncommented_function_imports(heavy, LAZY_WITH_REASON) == [2]
