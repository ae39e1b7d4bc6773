"""napari-lesion-align: computational lesions of multilingual language models and brain alignment."""

__version__ = "0.1.0"
