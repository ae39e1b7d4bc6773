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


# PEP 562: a dock's module (Qt) loads when napari asks for its class, so that the Qt-free
# helpers of this package (_state, _viewer: the reader's and the sample data's) import
# headless; each import below is such a lazy one
def __getattr__(name):
    if name == "LesionAlignPanel":
        from .panel import LesionAlignPanel  # (see above)
        return LesionAlignPanel
    if name == "DataWidget":
        from .data import DataWidget  # (see above)
        return DataWidget
    if name == "ModelLesionWidget":
        from .model import ModelLesionWidget  # (see above)
        return ModelLesionWidget
    if name == "RunWidget":
        from .run import RunWidget  # (see above)
        return RunWidget
    if name == "ResultsWidget":
        from .results import ResultsWidget  # (see above)
        return ResultsWidget
    if name == "InspectorWidget":
        from .inspector import InspectorWidget  # (see above)
        return InspectorWidget
    raise AttributeError(name)
