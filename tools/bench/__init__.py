"""``imgstream bench``: measured, side by side, in one run (see ``tools.bench.runner``)."""
