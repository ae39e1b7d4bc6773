"""Write the demo result the package ships (src/napari_lesion_align/data/sample/).

File > Open Sample > "Demo result" opens that folder at once. It is the output of
``napari-lesion-align demo`` less all subjects' maps but the first's (the group maps, the
category maps, the summary and the provenance are kept): see
``napari_lesion_align._sample_data.sample_of``. Run it from the repository root after a
change of the demo (its generator, recipe or the analysis):

    napari-lesion-align demo --out demo-out
    python scripts/make_sample_result.py demo-out

tests/test_sample_result.py checks that the shipped folder matches what the demo computes.
The folder is written through the result's own writer (AlignmentResult.save: a manifest of
every file in result.json, replaced atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_lesion_align._sample_data import SAMPLE_FOLDER, sample_of  # noqa: E402
from napari_lesion_align.core.results.result import AlignmentResult  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_out", help="the output folder of napari-lesion-align demo")
    ap.add_argument("--out", default=str(SAMPLE_FOLDER),
                    help="where to write the sample (default: the package's data/sample)")
    args = ap.parse_args(argv)
    result = AlignmentResult.load(args.demo_out)  # checks the folder against its manifest
    if result.provenance.get("config", {}).get("data", {}).get("kind") != "demo":
        ap.error(f"{args.demo_out} is not an output of napari-lesion-align demo")
    files = sample_of(result).save(args.out)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"wrote {args.out}: {len(files)} tables, {size / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
