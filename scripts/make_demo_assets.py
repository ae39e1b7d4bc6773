"""Build the small demo assets shipped in src/napari_lesion_align/data/demo/.

Run from the repository root with the real data next to it (../shared/data):

    python scripts/make_demo_assets.py [--shared ../shared/data]

* word annotations: the first RUN_SECONDS of LPP sections 1-3 in EN (TextGrid, UTF-8),
  FR (TextGrid, UTF-16 big-endian like the originals) and ZH (one multi-run TSV), CC0
  (OpenNeuro ds003643);
* the brain mask: nilearn's shipped MNI152 brain mask resampled (nearest) to the 4 mm LPP
  grid (37 x 46 x 38, origin (-72, -106, -64)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_lesion_align.core.data.stimuli import read_words  # noqa: E402
from napari_lesion_align.core.data.demo import (DEMO_DIR, RUN_SECONDS, N_RUNS, LAST_WORD_S,
                                                GRID_AFFINE, GRID_SHAPE)


def crop(words, last_offset):
    keep = words.offsets <= last_offset
    return [(float(a), float(b), w) for a, b, w, k in
            zip(words.onsets, words.offsets, words.words, keep) if k]


def write_textgrid(path: Path, tier: str, items, xmax: float, encoding: str):
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    tg = textgrid.Textgrid()
    tg.addTier(textgrid.IntervalTier(tier, [Interval(a, b, w) for a, b, w in items], 0, xmax))
    tmp = path.with_suffix(".tmp")
    tg.save(str(tmp), format="long_textgrid", includeBlankSpaces=True)
    text = tmp.read_text(encoding="utf-8")
    tmp.unlink()
    if encoding == "utf-16-be":
        path.write_bytes(b"\xfe\xff" + text.encode("utf-16-be"))
    else:
        path.write_bytes(text.encode("utf-8"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    lpp = Path(args.shared) / "lpp_annotations"
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    for run in range(1, N_RUNS + 1):
        en = read_words(lpp / "EN" / f"lppEN_section{run}.TextGrid")
        write_textgrid(DEMO_DIR / f"EN_run-{run}.TextGrid", "TokensAlign", crop(en, LAST_WORD_S),
                       RUN_SECONDS, "utf-8")
        fr = read_words(lpp / "FR" / f"lppFR_section{run}.TextGrid")
        write_textgrid(DEMO_DIR / f"FR_run-{run}.TextGrid", "text words", crop(fr, LAST_WORD_S),
                       RUN_SECONDS, "utf-16-be")
    rows = ["section\tonset\toffset\tword\tsentence_id"]
    for run in range(1, N_RUNS + 1):
        zh = read_words(lpp / "CN" / "lppCN_word_information_sent_info.csv", run=run)
        keep = zh.offsets <= LAST_WORD_S
        for a, b, w, s, k in zip(zh.onsets, zh.offsets, zh.words, zh.sentence_ids, keep):
            if k:
                rows.append(f"{run}\t{a:.3f}\t{b:.3f}\t{w}\t{int(s)}")
    (DEMO_DIR / "ZH_runs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mask = load_mni152_brain_mask(resolution=2)
    res = resample_img(mask, target_affine=GRID_AFFINE, target_shape=GRID_SHAPE,
                       interpolation="nearest", force_resample=True, copy_header=True)
    data = (np.asarray(res.dataobj) > 0).astype(np.uint8)
    img = nib.Nifti1Image(data, GRID_AFFINE)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(DEMO_DIR / "mask_mni152_4mm.nii.gz"))
    print(f"mask voxels: {int(data.sum())}; files in {DEMO_DIR}")


if __name__ == "__main__":
    main()
