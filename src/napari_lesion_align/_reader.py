"""npe2 reader: NIfTI maps and napari-lesion-align result folders.

* ``*.nii`` / ``*.nii.gz``: one layer (:func:`._layers.nifti_layer`); a
  ``..._categories.nii.gz`` file (or ``mask.nii.gz``) becomes a labels layer;
* a folder with our ``result.json`` (volume results): :func:`read_result_folder`;
* anything else (including region results, which have no volume): ``None``, so napari
  asks another reader.

A file that looks like NIfTI but cannot be read raises
:class:`~.core.base.errors.LesionAlignError` naming the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from .core.base.errors import LesionAlignError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def napari_get_reader(path):
    """Return a reader function for ``path`` or ``None`` when it is not ours."""
    if isinstance(path, (list, tuple)):
        if not path or not all(_kind(p) == "nifti" for p in path):
            return None
        return read_paths
    kind = _kind(path)
    if kind == "nifti":
        return read_paths
    if kind == "result":
        return read_result_folder
    return None


def _kind(path) -> str | None:
    p = Path(str(path))
    if p.is_dir():
        return "result" if _is_volume_result(p) else None
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return "nifti"
    return None


def _is_volume_result(folder: Path) -> bool:
    meta = folder / "result.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return True  # ours but broken: AlignmentResult.load gives the clear error
    return isinstance(doc, dict) and (doc.get("space") or {}).get("kind", "volume") == "volume"


def read_paths(path) -> list[tuple]:
    """Layer tuples of one or more NIfTI files."""
    # napari asks napari_get_reader about every path it opens: the layers, the view model
    # and the viewer hooks (about 2 s of imports) load only when a path is ours
    from ._layers import nifti_layer  # (see above)
    from ._widgets._viewer import attach_current  # (see above)

    paths = path if isinstance(path, (list, tuple)) else [path]
    layers = [nifti_layer(p) for p in paths]
    attach_current()  # MNI status bar, orientation letters, template kept at the bottom
    return layers


def read_result_folder(path) -> list[tuple]:
    """Layer tuples of a result folder: the MNI template (unless the viewer has one), the
    result's default map at its statistic's default threshold (a group t map at the
    group test's corrected significance) and its category overlays
    (:func:`.._view_model.result_tuples`, the same as every other way a result opens).
    Each carries ``metadata["result_folder"]``: in napari they join the viewer's registry
    of open results with the folder's label as their names' suffix (:mod:`._widgets._viewer`)."""
    # loaded only for our folders (see read_paths)
    from ._view_model import result_layers
    from ._widgets._viewer import attach_current, without_duplicate_template  # (see above)

    layers = result_layers(path, template=True)
    if not any(kw["metadata"].get("stat") != "template" for _, kw, _ in layers):
        raise LesionAlignError(f"{path}: this result has no maps to show")
    layers = without_duplicate_template(layers)
    attach_current()  # the Results / Inspector widgets see this result (metadata)
    return layers
