"""A pip constraint file that pins every dependency of pyproject.toml at its floor.

    python floors_constraints.py pyproject.toml TORCH_VERSION   > floors.txt
    python floors_constraints.py --check floors.txt              (in the floors venv)

``name>=X`` becomes ``name==X`` (``==`` pins stay), for the base dependencies and the
extras the tests use (``test``: scikit-learn, pytest). torch is the exception: it is
pinned at TORCH_VERSION (setup.sh's), because its floor's wheels on PyPI are CUDA builds
(several GB) and PyTorch's CPU index is not reachable from every CI machine. ``--check``
verifies that the installed versions are the pinned ones.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

EXTRAS = ("test",)
# GUI test tools, the import contracts (tests/test_architecture.py) and the report's browser
# driver (tests/test_report.py): not in the core job
SKIP = {"pytest-qt", "pytest-xvfb", "npe2", "import-linter", "selenium"}


def floors(pyproject: Path, torch_version: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    lines, seen = [], set()
    for req in reqs:
        spec = req.split(";")[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(>=|==)\s*([^,\s]+)", spec)
        if m is None:
            raise SystemExit(f"floors_constraints: cannot read the floor of {req!r}")
        name, _, _, floor = m.groups()
        key = name.lower().replace("_", "-")
        if key in seen or key in SKIP:
            continue
        seen.add(key)
        if key == "torch":
            lines.append(f"# torch's floor is {floor}; pinned at setup.sh's version "
                         f"(see floors_constraints.py)")
            floor = torch_version
        lines.append(f"{name}=={floor}")
    return lines


def _release(v: str) -> tuple:
    """``1.24`` and ``1.24.0`` alike; a local label (``+cpu``) dropped."""
    parts = [int(p) for p in re.findall(r"\d+", v.split("+")[0])]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check(constraints: Path) -> int:
    bad = []
    for line in constraints.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, want = line.split("==")
        have = version(name)
        if _release(have) != _release(want):
            bad.append(f"{name} {have} (want {want})")
    if bad:
        raise SystemExit("floors_constraints: not at the floors: " + ", ".join(bad))
    print("floors_constraints: every dependency is at its floor")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        sys.exit(check(Path(sys.argv[2])))
    print("\n".join(floors(Path(sys.argv[1]), sys.argv[2])))
