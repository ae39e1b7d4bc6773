"""Checks run by .ci/wheel-check.sh in a fresh environment where the wheel was installed
(never from the repository: run it from another folder).

    python hub_smoke.py reader DEMO_OUT   the plugin's reader on a demo output, headless;
                                          result.json's provenance (libraries, device)
    python hub_smoke.py napari DEMO_OUT   napari (needs a Qt binding and a display): every
                                          widget of the manifest docks, File > Open Sample
                                          opens the shipped result without computing, the
                                          reader opens DEMO_OUT
Exit status 0 when every check holds; a failed check raises (status 1).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def check(cond, what: str) -> None:
    if not cond:
        raise SystemExit(f"hub_smoke: FAILED: {what}")
    print(f"hub_smoke: ok: {what}")


def installed_here() -> None:
    import napari_lesion_align

    where = Path(napari_lesion_align.__file__).resolve()
    check("site-packages" in where.parts, f"the package is the installed wheel ({where})")


def reader(folder: Path) -> None:
    from napari_lesion_align._reader import napari_get_reader

    installed_here()
    read = napari_get_reader(str(folder))
    check(read is not None, f"the reader takes {folder}")
    layers = read(str(folder))
    names = [t[1]["name"] for t in layers]
    check(len(layers) >= 2, f"the reader gives layers ({', '.join(names)})")
    doc = json.loads((folder / "result.json").read_text())
    libs = doc.get("libraries") or {}
    check(all(libs.get(k) for k in ("napari-lesion-align", "torch", "transformers", "numpy",
                                    "scipy", "nilearn", "nibabel")),
          f"result.json records the libraries' versions {libs}")
    check((doc.get("compute") or {}).get("device") and (doc.get("compute") or {}).get("dtype"),
          f"result.json records the device and dtype {doc.get('compute')}")
    check("git_commit" not in doc, "no git commit for a wheel install")


def napari_session(folder: Path) -> None:
    import napari
    from napari.utils.notifications import notification_manager
    from npe2 import PluginManager

    from napari_lesion_align import _sample_data

    installed_here()
    pm = PluginManager.instance()
    pm.discover()  # (napari does it when its first viewer opens)
    manifest = pm.get_manifest("napari-lesion-align")
    widgets = [w.display_name for w in manifest.contributions.widgets or []]
    check(len(widgets) == 6 and "Lesion Align" in widgets,
          f"the manifest lists the panel and the five widgets ({widgets})")
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    try:
        for name in widgets:
            dock, widget = viewer.window.add_plugin_dock_widget("napari-lesion-align", name)
            check(widget is not None and dock is not None, f"widget {name!r} docks")
        notes = []
        notification_manager.notification_ready.connect(notes.append)
        viewer.open_sample("napari-lesion-align", "demo")
        names = [layer.name for layer in viewer.layers]
        check(any(n.startswith("categories lesion") for n in names),
              f"the sample opens the shipped result ({names})")
        check(not _sample_data.demo_cache_folder().exists(),
              "the sample did not compute the demo")
        check(any(_sample_data.COMPUTE_ACTION in [a[0] for a in n.actions] for n in notes),
              "its notification offers to compute the whole demo")
        n = len(viewer.layers)
        viewer.open(str(folder), plugin="napari-lesion-align")
        check(len(viewer.layers) > n, "the reader opens the demo output in napari")
    finally:
        viewer.close()


def main(argv) -> int:
    mode, folder = argv[1], Path(argv[2]).resolve()
    check(Path.cwd().resolve() != Path(__file__).resolve().parents[1],
          "run outside the repository")
    os.environ.setdefault("NAPARI_LESION_ALIGN_CACHE", str(folder.parent / "cache"))
    {"reader": reader, "napari": napari_session}[mode](folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
