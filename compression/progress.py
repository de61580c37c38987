"""The one rich progress bar of long work (training, encoding, data generation, stream evaluation)."""

from __future__ import annotations


def progress_bar(console=None, enabled: bool = True):
    """A transient bar: description, bar, done/total, time left; ``enabled=False`` keeps the calls
    but draws nothing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not enabled)
