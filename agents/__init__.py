"""Faust agents, one module per stage on the data's path:

``extractor``   images-input-stream -> (S3 fetch, decode, ONNX, reduce) -> image-features-stream
``classifiers`` image-features-stream -> fast / balanced / accurate LightGBM -> PostgreSQL
``dead_letter`` images-dead-letter -> image status 'failed' in PostgreSQL

Each module has ``register(app, runtime, ...)``; ``app.stream.faust_app`` calls those for the roles
this worker runs.
"""
