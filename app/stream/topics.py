"""The three topics on the data's path, as the Faust app declares them."""

from __future__ import annotations

import faust

from app.core.settings import Settings


class Topics:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        kw = {"partitions": settings.topic_partitions, "key_serializer": "raw", "value_serializer": "raw"}
        self.input = app.topic(settings.input_topic, **kw)
        self.features = app.topic(settings.features_topic, **kw)
        self.dead_letter = app.topic(settings.dead_letter_topic, **kw)
