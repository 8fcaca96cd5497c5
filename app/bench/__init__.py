"""``imgstream bench``: measured, side by side, in one run (see ``app.bench.runner``)."""
