"""imgstream's worker, one folder per stage of the data's path:

``app/http``     1. an upload comes in (views, typed contracts, the DataPlane every view calls)
``app/storage``  2. the image goes to S3, its row to PostgreSQL (and the crop to a local cache)
``app/stream``   3. a small event goes through Kafka (the Faust app, topics, messages, producing,
                    the error policy, the version-guarded Faust fixes, the worker's resources)
``agents/``      4. extract (S3 -> ONNX -> descriptors) and 5. classify (-> PostgreSQL)
``tables/``         the descriptor table the extractor keeps per image content
``app/bundles``     the model bundles a worker serves: registry, deployment, shadows, drift
``models/``         pure model math, no I/O
``app/core``        what every stage shares: settings, errors, metrics, logs, security

``app/worker.py`` assembles one worker from those parts for the roles it runs; ``app/ops`` holds
the operator's commands (``imgstream``: worker, replay, models). Imports only point down this
list's layers (tests/unit/test_layering.py states them).

``app.app`` is the Faust application (built on first access, so importing ``app.core.settings``
or the CLI does not build it); ``faust -A app worker`` and ``python -m app worker`` both find it.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "app":
        from app.worker import get_app

        return get_app()
    raise AttributeError(name)
