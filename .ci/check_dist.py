"""What the built sdist and wheel must hold (run by .ci/wheel-check.sh on its dist folder):
the npe2 manifest as a real file identical to the repository's, the shipped sample result
complete, the licence, the metadata the napari hub shows (license expression, project
URLs, classifiers, Python floor), and nothing of the repository's that a user need not
have (tests, CI, virtual environments)."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "napari_lesion_align"


def fail(msg: str) -> None:
    raise SystemExit(f"check_dist: FAILED: {msg}")


def main(dist: Path) -> int:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest = zf.read(f"{PKG}/napari.yaml").decode()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            fail(f"{wheel.name} has no LICENSE in its .dist-info/licenses")
        sample = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"{PKG}/data/sample/")}
    if manifest != (REPO / "src" / PKG / "napari.yaml").read_text():
        fail(f"{wheel.name}: napari.yaml differs from src/{PKG}/napari.yaml")
    shipped = {p.name for p in (REPO / "src" / PKG / "data" / "sample").iterdir()
               if p.is_file() and p.name != "__init__.py"}
    if "result.json" not in sample or not shipped <= sample:
        fail(f"{wheel.name}: the shipped sample lacks {sorted(shipped - sample)[:5]}")
    if any(n.startswith(("tests/", ".ci/", "scripts/")) for n in names):
        fail(f"{wheel.name} holds files of the repository's tests or CI")
    if meta["License-Expression"] != "BSD-3-Clause":
        fail(f"METADATA License-Expression is {meta['License-Expression']!r}")
    urls = {u.split(",")[0].strip().lower() for u in meta.get_all("Project-URL") or []}
    for need in ("source code", "bug tracker", "user support", "documentation"):
        if need not in urls:
            fail(f"METADATA has no Project-URL {need!r} ({sorted(urls)})")
    classifiers = meta.get_all("Classifier") or []
    for need in ("Framework :: napari", "Development Status :: 3 - Alpha",
                 "Programming Language :: Python :: 3.11"):
        if need not in classifiers:
            fail(f"METADATA lacks the classifier {need!r}")
    if not meta["Requires-Python"]:
        fail("METADATA has no Requires-Python")
    with tarfile.open(sdist) as tf:
        members = tf.getnames()
    top = members[0].split("/")[0]
    for need in ("LICENSE", "README.md", "pyproject.toml", f"src/{PKG}/napari.yaml",
                 f"src/{PKG}/data/sample/result.json"):
        if f"{top}/{need}" not in members:
            fail(f"{sdist.name} lacks {need}")
    if any("/.venv/" in m for m in members):
        fail(f"{sdist.name} holds a virtual environment")
    print(f"check_dist: ok: {wheel.name} ({len(names)} files), {sdist.name} "
          f"({len(members)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
