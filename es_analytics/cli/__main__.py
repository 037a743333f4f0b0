"""``python -m es_analytics.cli``: the same as the ``es-analytics`` script."""

from __future__ import annotations

from . import main

main()
