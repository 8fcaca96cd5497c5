"""Operator and developer tooling around the worker, never imported by it: the local stack
(``tools.stack``), the benchmarks, soak and table measurements (``tools.bench``), the cached
environment that exports backbones to ONNX (``tools.exportenv``), the generated document sections
(``tools.docs``) and their commands (``tools.cli``, joined to ``imgstream`` by entry point when
installed with the ``train`` and ``bench`` extras). ``tools.base`` holds what every tool uses."""
