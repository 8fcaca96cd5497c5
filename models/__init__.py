"""Pure model math, apart from I/O: preprocessing, the ONNX backbone, the descriptor reduction,
the three LightGBM classifiers with calibration, metrics, and bundles on disk.

Nothing here talks to Kafka, S3 or PostgreSQL; agents and views call into it. ``models.export`` is
the one module that needs torch, and it runs in its own environment (``imgstream models export``).
"""
