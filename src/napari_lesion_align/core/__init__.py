"""The engine of napari-lesion-align: pure Python, numpy and torch (no Qt, no napari).

Sub-packages in the order the data flows; a module imports only from its own
sub-package or from those above it in this list (checked by the import contracts in
``pyproject.toml``, ``[tool.importlinter]``):

``base``      errors, the config schema's building blocks, file io
``data``      languages, stimuli, BOLD, BIDS, the file dataset, the data options, the demo's data
``model``     the built-in model, loading, anatomy
``features``  word features of a (lesioned) model
``lesions``   the lesion vocabulary, masks, importance, the lesion plan
``encoding``  the ridge solver and its cross-validation
``analysis``  statistics, controls, how each statistic is shown, plausibility
``results``   the result folder, the QC figure
``run``       config, engine, data sources, stages, store, pre-run checks, executors, pipeline
"""
