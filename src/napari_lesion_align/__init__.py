"""napari-lesion-align: computational lesions of multilingual language models and brain alignment."""

from importlib.metadata import PackageNotFoundError, version

try:  # the version is written once, in pyproject.toml
    __version__ = version("napari-lesion-align")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
