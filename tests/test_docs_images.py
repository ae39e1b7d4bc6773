"""The docs' screenshots: every image a page of docs/ links exists and is a PNG of a
reasonable size; every PNG in docs/images is linked from a page and made by
scripts/make_screenshots.py (no stale screenshot left behind, none made by hand)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
IMAGES = DOCS / "images"
LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _links():
    """``(page, alt text, target)`` of every image link of docs/*.md."""
    for page in sorted(DOCS.glob("*.md")):
        for alt, target in LINK.findall(page.read_text(encoding="utf-8")):
            yield page, alt, target


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_every_linked_image_exists_is_a_small_png_and_says_what_it_shows():
    links = [(p, a, t) for p, a, t in _links() if not t.startswith(("http:", "https:"))]
    assert links, "the docs show screenshots"
    for page, alt, target in links:
        path = (page.parent / target).resolve()
        assert path.is_file(), f"{page.name} links {target}: no such file"
        width, height = _png_size(path)
        # a screenshot of a 1,366 x 768 window, a crop of it, a figure made from it, or a
        # tab's whole form (a run's closing summary makes the Run tab tall)
        assert 100 <= width <= 1400 and 100 <= height <= 2000, (target, width, height)
        assert path.stat().st_size < 400_000, f"{target}: keep screenshots small"
        assert len(alt.split()) >= 3, f"{page.name}: {target} needs a caption (alt text)"


def test_every_screenshot_is_linked_and_made_by_the_script():
    """napari's screenshots by scripts/make_screenshots.py, the report's by the report test
    (``NLA_REPORT_SCREENSHOT=1 pytest tests/test_report.py -k docs_screenshot``)."""
    linked = {(page.parent / t).resolve() for page, _, t in _links()}
    script = (REPO / "scripts" / "make_screenshots.py").read_text(encoding="utf-8")
    made = set(re.findall(r"napari-[a-z0-9-]+\.png", script))
    report_test = (REPO / "tests" / "test_report.py").read_text(encoding="utf-8")
    made |= set(re.findall(r"docs/images/(report[a-z0-9-]*\.png)", report_test))
    shipped = {p.name for p in IMAGES.glob("*.png")}
    assert shipped, "docs/images holds the screenshots"
    for name in sorted(shipped):
        assert (IMAGES / name).resolve() in linked, f"{name} is linked from no page of docs/"
        assert name in made, f"{name} is not made by scripts/make_screenshots.py"
    assert made <= shipped, f"the script makes images docs/images lacks: {made - shipped}"
