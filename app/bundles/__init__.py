"""The model bundles a worker serves: the registry in S3, deployment and shadows, drift of the live descriptors, predictions as rows."""
