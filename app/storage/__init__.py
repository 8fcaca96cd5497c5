"""I/O with the two stores on the data's path: S3 (raw images, model bundles) and PostgreSQL (predictions)."""
