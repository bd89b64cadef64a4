"""Matplotlib figures as PNG data for the self-contained HTML reports (the audit's and `preftune eval`'s)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def png_data_uri(figure: Figure, dpi: int, path: Path | None = None) -> str:
    """`figure` rendered as PNG (tight bounding box) and returned as a "data:image/png;base64,..." URI for
    an <img> tag; with `path`, the same PNG bytes are also written there."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
