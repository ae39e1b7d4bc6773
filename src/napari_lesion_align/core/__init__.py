"""Pure-Python core of napari-lesion-align (no Qt, no napari imports)."""
