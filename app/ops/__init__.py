"""The operator's side: the ``imgstream`` CLI (worker, replay, models) and its helpers."""
