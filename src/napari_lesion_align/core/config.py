"""The analysis configuration: one object that the CLI, the GUI and the cluster runner build.

A config is a TOML (or JSON) file; relative paths are resolved against the file's folder.
See docs/configuration.md for every key. Unknown keys are errors (a typo must not be
silently ignored).
"""

from __future__ import annotations

import dataclasses
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bold import CleaningOptions
from .errors import LesionAlignError
from .features import FeatureOptions

BUILTIN_MODEL = "builtin:multilingual-e5-small-q4"
SPACELESS_LANGS = {"zh", "cn", "ja", "jp", "th", "lo", "km", "my", "bo"}


@dataclass(frozen=True)
class ModelConfig:
    name: str = BUILTIN_MODEL
    layer: int = -1
    offline: bool = True
    device: str = "auto"


@dataclass(frozen=True)
class EncodingConfig:
    delays: tuple = (1, 2, 3, 4)
    alphas: tuple = tuple(np.logspace(0, 19, 20).tolist())
    downsample: str = "floor"
    inner_cv: str = "runs"  # "runs" (leave one training run out) or "blocks"
    n_blocks: int = 5  # outer/inner contiguous blocks when a language has one run
    score: str = "r2"
    dtype: str = "float32"
    backend: str = "auto"
    stack_mb: float = 1024.0  # subjects with the same runs are fitted together up to this

    def __post_init__(self):
        if not self.stack_mb >= 0:
            raise LesionAlignError(f"encoding.stack_mb = {self.stack_mb}; use a size in MiB "
                                   ">= 0 (0 fits one subject at a time)")
        if self.downsample not in ("floor", "lanczos"):
            raise LesionAlignError(
                f"encoding.downsample = {self.downsample!r}; use 'floor' (paper) or 'lanczos'"
            )
        if self.inner_cv not in ("runs", "blocks"):
            raise LesionAlignError(f"encoding.inner_cv = {self.inner_cv!r}; use 'runs' or 'blocks'")
        if self.score not in ("r2", "r"):
            raise LesionAlignError(f"encoding.score = {self.score!r}; use 'r2' or 'r'")
        if self.dtype not in ("float32", "float64"):
            raise LesionAlignError(f"encoding.dtype = {self.dtype!r}; use 'float32' or 'float64'")
        if not self.delays or any(int(d) < 0 for d in self.delays):
            raise LesionAlignError(f"encoding.delays = {list(self.delays)}; use volumes >= 0")
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise LesionAlignError(f"encoding.alphas must be positive numbers, got {self.alphas}")
        if self.n_blocks < 2:
            raise LesionAlignError(f"encoding.n_blocks = {self.n_blocks}; use at least 2")


@dataclass(frozen=True)
class LanguageData:
    """Stimuli and BOLD files of one language."""

    code: str
    annotations: tuple  # one path per run (or a single multi-run table repeated)
    runs: tuple  # run labels
    bold: dict  # subject -> tuple of paths (one per run)
    text_language: str = ""
    tier: str | None = None
    confounds: dict | None = None  # subject -> tuple of paths
    bold_start_s: float = 0.0

    @property
    def spaceless(self) -> bool:
        return (self.text_language or self.code).lower() in SPACELESS_LANGS


@dataclass(frozen=True)
class DemoConfig:
    n_subjects: int = 5
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    kind: str = "volume"  # "volume", "regions" or "demo"
    tr: float = 2.0
    mask: str | None = None
    roi_names: tuple | None = None
    languages: tuple = ()
    subjects: tuple = ()
    length_tolerance_trs: int = 10
    confounds_skip_rows: int = 0
    bold_skip_rows: int = 0
    demo: DemoConfig | None = None


@dataclass(frozen=True)
class LesionConfig:
    """Which lesions to run next to the intact model (none when ``enabled`` is false)."""

    enabled: bool = False
    element: str = "weights"  # weights | neurons | heads | hidden | layers
    method: str = "auto"  # auto | wanda | gradxweight | lape
    k_percent: float = 1.0
    selections: tuple = ()  # default: shared + one specific per language
    random_control: bool = True
    mode: str = "zero"  # zero | mean
    text: dict | None = None  # {language: text file}; default: the stimulus words
    max_tokens: int = 20000  # of importance text per language
    files: tuple = ()  # saved lesions (.json) to run as well
    sweep: bool = False  # a layer sweep: the manual lesion below, on each block in turn
    sweep_element: str = "hidden"
    sweep_indices: tuple = ()  # unit indices (default every 10th unit)
    alpha: float = 0.05
    correction: str = "fdr"  # fdr | none
    min_relative_drop: float = 0.0  # categories: a drop must also be >= this relative drop

    def __post_init__(self):
        from .lesions import ELEMENTS, MODES

        if self.element not in ELEMENTS:
            raise LesionAlignError(f"[lesions].element = {self.element!r}; use one of {ELEMENTS}")
        if self.method not in ("auto", "wanda", "gradxweight", "lape"):
            raise LesionAlignError(
                f"[lesions].method = {self.method!r}; use 'auto', 'wanda', 'gradxweight' or 'lape'"
            )
        if self.method == "lape" and self.element != "neurons":
            raise LesionAlignError("[lesions].method = 'lape' selects FFN neurons: set "
                                   "element = 'neurons'")
        if self.mode not in MODES:
            raise LesionAlignError(f"[lesions].mode = {self.mode!r}; use 'zero' or 'mean'")
        if not 0 < self.k_percent <= 100:
            raise LesionAlignError(f"[lesions].k_percent = {self.k_percent}; use 0 < k <= 100")
        if self.sweep_element not in ("neurons", "heads", "hidden", "layers"):
            raise LesionAlignError(
                f"[lesions].sweep_element = {self.sweep_element!r}; a layer sweep lesions "
                "'neurons', 'heads', 'hidden' or 'layers'")
        if not 0 < self.alpha < 1:
            raise LesionAlignError(f"[lesions].alpha = {self.alpha}; use a level in (0, 1), "
                                   "e.g. 0.05")
        if not 0 <= self.min_relative_drop < 1:
            raise LesionAlignError(f"[lesions].min_relative_drop = {self.min_relative_drop}; use "
                                   "a fraction in [0, 1), e.g. 0.1 (a drop of at least 10 %)")
        if self.correction not in ("fdr", "none"):
            raise LesionAlignError(f"[lesions].correction = {self.correction!r}; use 'fdr' or 'none'")
        for sel in self.selections:
            if sel != "shared" and not str(sel).startswith("specific:"):
                raise LesionAlignError(
                    f"[lesions].selections: {sel!r}; use 'shared' or 'specific:<LANGUAGE>'"
                )


@dataclass(frozen=True)
class AnalysisConfig:
    data: DataConfig
    model: ModelConfig = ModelConfig()
    features: FeatureOptions = FeatureOptions()
    encoding: EncodingConfig = EncodingConfig()
    cleaning: CleaningOptions = CleaningOptions()
    lesions: LesionConfig = LesionConfig()
    seed: int = 0
    name: str = "analysis"
    source: str | None = None  # the config file, for provenance

    def to_dict(self) -> dict:
        """A JSON-serialisable description (for result.json)."""
        return _jsonable(dataclasses.asdict(self))

    @property
    def languages(self) -> list[str]:
        return [lang.code for lang in self.data.languages]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


# --------------------------------------------------------------------------- parsing
def _take(section: dict, cls, where: str, **extra):
    """Build dataclass ``cls`` from a TOML table, refusing unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(section) - names
    if unknown:
        raise LesionAlignError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names - set(extra))}"
        )
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in section:
            v = section[f.name]
            if isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
    kw.update(extra)
    try:
        return cls(**kw)
    except TypeError as err:
        raise LesionAlignError(f"{where}: {err}") from err


def _alphas(v, where):
    if isinstance(v, dict):
        if set(v) != {"logspace"} or len(v["logspace"]) != 3:
            raise LesionAlignError(
                f"{where}: write alphas as a list or as {{logspace = [start, stop, num]}}"
            )
        a, b, n = v["logspace"]
        return tuple(np.logspace(a, b, int(n)).tolist())
    return tuple(float(a) for a in v)


def _resolve(path: str, base: Path) -> str:
    p = Path(str(path)).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _expand(template: str, base: Path, where: str, **fields) -> str:
    try:
        pattern = _resolve(str(template).format(**fields), base)
    except KeyError as err:
        raise LesionAlignError(
            f"{where}: unknown placeholder {err} in {template!r}; use {{subject}} and {{run}}"
        ) from err
    if any(ch in pattern for ch in "*?["):
        hits = sorted(glob.glob(pattern))
        if len(hits) != 1:
            raise LesionAlignError(
                f"{where}: the pattern {pattern!r} matches {len(hits)} files; it must match one"
            )
        return hits[0]
    return pattern


def _per_subject_runs(value, subjects, runs, base, where) -> dict:
    """BOLD / confounds given as a template string or a {subject: [paths]} table."""
    if isinstance(value, str):
        return {s: tuple(_expand(value, base, where, subject=s, run=r) for r in runs)
                for s in subjects}
    if isinstance(value, dict):
        out = {}
        for s, paths in value.items():
            if isinstance(paths, str):
                paths = [paths]
            if len(paths) != len(runs):
                raise LesionAlignError(
                    f"{where}.{s}: {len(paths)} files for {len(runs)} runs; give one per run"
                )
            out[str(s)] = tuple(_resolve(p, base) for p in paths)
        return out
    raise LesionAlignError(f"{where}: give a path template with {{subject}} and {{run}} or a table")


def config_from_dict(d: dict, base: Path | str = ".", source: str | None = None) -> AnalysisConfig:
    """Build and validate an :class:`AnalysisConfig` from a parsed TOML/JSON mapping."""
    base = Path(base)
    d = dict(d)
    allowed = {"name", "seed", "data", "model", "features", "encoding", "cleaning", "languages",
               "lesions"}
    unknown = set(d) - allowed
    if unknown:
        raise LesionAlignError(f"config: unknown section(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    model = _take(d.get("model", {}), ModelConfig, "[model]")
    features = _take(d.get("features", {}), FeatureOptions, "[features]")
    enc = dict(d.get("encoding", {}))
    if "alphas" in enc:
        enc["alphas"] = _alphas(enc["alphas"], "[encoding].alphas")
    encoding = _take(enc, EncodingConfig, "[encoding]")
    cleaning = _take(d.get("cleaning", {}), CleaningOptions, "[cleaning]")
    les = dict(d.get("lesions", {}))
    if les:
        les.setdefault("enabled", True)
        if isinstance(les.get("text"), dict):
            les["text"] = {k: _resolve(v, base) for k, v in les["text"].items()}
        if les.get("files"):
            les["files"] = [_resolve(f, base) for f in les["files"]]
    lesions = _take(les, LesionConfig, "[lesions]")

    data_d = dict(d.get("data", {}))
    kind = data_d.get("kind", "volume")
    if kind not in ("volume", "regions", "demo"):
        raise LesionAlignError(f"[data].kind = {kind!r}; use 'volume', 'regions' or 'demo'")
    demo = None
    if kind == "demo":
        demo = _take(data_d.pop("demo", {}), DemoConfig, "[data.demo]")
    subjects = tuple(str(s) for s in data_d.pop("subjects", ()))
    languages = []
    for code, ld in (d.get("languages") or {}).items():
        where = f"[languages.{code}]"
        ld = dict(ld)
        allowed_l = {"annotations", "runs", "bold", "text_language", "tier", "confounds",
                     "bold_start_s"}
        bad = set(ld) - allowed_l
        if bad:
            raise LesionAlignError(f"{where}: unknown key(s) {sorted(bad)}; allowed: {sorted(allowed_l)}")
        if "annotations" not in ld:
            raise LesionAlignError(f"{where}: 'annotations' is required (one file per run)")
        ann = ld["annotations"]
        runs = tuple(ld.get("runs", ()))
        if isinstance(ann, str):
            if not runs:
                raise LesionAlignError(
                    f"{where}: one annotation table for several runs needs 'runs = [...]'"
                )
            ann = [ann] * len(runs)
        if not runs:
            runs = tuple(range(1, len(ann) + 1))
        if len(runs) != len(ann):
            raise LesionAlignError(f"{where}: {len(ann)} annotation files for {len(runs)} runs")
        ann = tuple(_resolve(a, base) for a in ann)
        bold = {}
        if kind != "demo":
            if "bold" not in ld:
                raise LesionAlignError(f"{where}: 'bold' is required (template or table)")
            if isinstance(ld["bold"], str) and not subjects:
                raise LesionAlignError(f"{where}: a bold template needs [data].subjects")
            bold = _per_subject_runs(ld["bold"], subjects, runs, base, f"{where}.bold")
        conf = None
        if ld.get("confounds"):
            conf = _per_subject_runs(ld["confounds"], tuple(bold) or subjects, runs, base,
                                     f"{where}.confounds")
        languages.append(LanguageData(
            code=str(code), annotations=ann, runs=runs, bold=bold,
            text_language=str(ld.get("text_language", "")), tier=ld.get("tier"),
            confounds=conf, bold_start_s=float(ld.get("bold_start_s", 0.0)),
        ))
    if kind != "demo" and not languages:
        raise LesionAlignError("config: no [languages.<CODE>] section; add one per language")
    if not subjects:
        subjects = tuple(dict.fromkeys(s for lang in languages for s in lang.bold))
    if "mask" in data_d and data_d["mask"]:
        data_d["mask"] = _resolve(data_d["mask"], base)
    if kind == "volume" and not data_d.get("mask"):
        raise LesionAlignError("[data].mask is required for NIfTI input (kind = 'volume')")
    data = _take(data_d, DataConfig, "[data]", languages=tuple(languages), subjects=subjects,
                 demo=demo)
    if not data.tr > 0:
        raise LesionAlignError(f"[data].tr = {data.tr}; give the repetition time in seconds")
    for sel in lesions.selections:
        code = sel.split(":", 1)[1] if sel.startswith("specific:") else None
        if code is not None and languages and code not in [lang.code for lang in languages]:
            raise LesionAlignError(f"[lesions].selections: {sel!r} names no configured language; "
                                   f"languages are {[lang.code for lang in languages]}")
    return AnalysisConfig(data=data, model=model, features=features, encoding=encoding,
                          cleaning=cleaning, lesions=lesions, seed=int(d.get("seed", 0)),
                          name=str(d.get("name", "analysis")), source=source)


def load_config(path) -> AnalysisConfig:
    """Read a TOML or JSON config file."""
    path = Path(path)
    if not path.exists():
        raise LesionAlignError(f"{path}: config file not found")
    text = path.read_bytes()
    try:
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import tomllib

            d = tomllib.loads(text.decode("utf-8"))
    except Exception as err:
        raise LesionAlignError(f"{path}: cannot parse the config ({err})") from err
    return config_from_dict(d, base=path.parent.resolve(), source=str(path))


#: the demo's category rule: a drop must be significant and at least 15 % of the intact r
#: (its simulated subjects share stimuli and model: a random control's few-% drop is the
#: same in every subject, hence "significant"; docs/method.md)
DEMO_MIN_RELATIVE_DROP = 0.15


def demo_config(n_subjects: int = 5, seed: int = 0, lesions: bool | dict = False,
                **overrides: Any) -> AnalysisConfig:
    """The built-in demo's configuration.

    With ``lesions`` (True, or a dict of ``[lesions]`` keys that replace the demo's
    recipe key by key): the shared lesion, one specific lesion per language and their
    random controls (top 1 % of weights per tensor by Wanda importance). Features are read
    in windows of 500 context tokens + 256 new ones (half the passes of the default), and
    alphas run from 1 to 1e12 in steps of 10^1.5 (9 values; the paper: 1 to 1e19 in steps
    of 10).
    """
    d = {"name": "demo", "seed": seed,
         "data": {"kind": "demo", "tr": 2.0, "demo": {"n_subjects": n_subjects, "seed": seed}},
         "features": {"stride_tokens": 256},
         # the paper's grid stops at 1e19; on the demo's data every alpha above 1e12 (1e6 x the
         # largest kernel eigenvalue) predicts the same up to scale, i.e. the same r
         "encoding": {"alphas": {"logspace": [0, 12, 9]}}}
    if lesions:
        d["lesions"] = {"element": "weights", "method": "wanda", "k_percent": 1.0,
                        "min_relative_drop": DEMO_MIN_RELATIVE_DROP}
        if isinstance(lesions, dict):
            d["lesions"].update(lesions)
    for key, val in overrides.items():
        d.setdefault(key, {}).update(val)
    return config_from_dict(d)
