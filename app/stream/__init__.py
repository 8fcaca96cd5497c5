"""Stage 3, the stream: the Faust app, topics, messages, producing, the error policy, the version-guarded Faust fixes, and the worker's resources (Runtime)."""
