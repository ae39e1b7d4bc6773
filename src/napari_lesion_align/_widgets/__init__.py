"""The napari dock widgets (one module each; thin over :mod:`napari_lesion_align.core`).

:class:`~.panel.LesionAlignPanel` (**Lesion Align**) holds the five as tabs of one dock;
each is also a dock of its own:

* :class:`~.data.DataWidget` -- the demo, your files or a config file; what was found;
* :class:`~.model.ModelLesionWidget` -- model, layer, lesion and its size; lesion files;
* :class:`~.run.RunWidget` -- run / cancel with progress; save the result;
* :class:`~.results.ResultsWidget` -- which map, threshold, category overlay, legend, exports;
* :class:`~.inspector.InspectorWidget` -- click a voxel: MNI, atlas label, r per condition.

They share one :class:`~._state.Session` per viewer (:func:`~._state.session_for`).
napari builds them from the manifest (``napari.yaml``) with ``napari_viewer``.
"""

__all__ = ["LesionAlignPanel", "DataWidget", "ModelLesionWidget", "RunWidget",
           "ResultsWidget", "InspectorWidget"]


def __getattr__(name):
    if name == "LesionAlignPanel":
        from .panel import LesionAlignPanel
        return LesionAlignPanel
    if name == "DataWidget":
        from .data import DataWidget
        return DataWidget
    if name == "ModelLesionWidget":
        from .model import ModelLesionWidget
        return ModelLesionWidget
    if name == "RunWidget":
        from .run import RunWidget
        return RunWidget
    if name == "ResultsWidget":
        from .results import ResultsWidget
        return ResultsWidget
    if name == "InspectorWidget":
        from .inspector import InspectorWidget
        return InspectorWidget
    raise AttributeError(name)
