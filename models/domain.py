"""The domain's names and sizes, defined once: the model code, the worker's settings and roles,
the CLI and the bench all read them from here."""

# The three classifiers, in the order they are reported.
CLASSIFIERS = ("fast", "balanced", "accurate")
# Descriptors per image: the design's 20, and the sweep `models train` measures beside it.
DEFAULT_K = 20
K_SWEEP = (10, 20, 50)
