"""The KWS commands' progress bar: compression's one bar (``compression.progress``)."""

from edgepack.compression.progress import progress_bar

__all__ = ["progress_bar"]
