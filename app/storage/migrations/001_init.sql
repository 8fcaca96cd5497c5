-- imgstream schema v1: one row per accepted image, one row per (image, classifier, model version).
CREATE TABLE IF NOT EXISTS images (
    image_id             uuid PRIMARY KEY,
    object_key           text,
    sha256               text,
    size                 integer,
    content_type         text,
    uploaded_at          timestamptz,
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed')),
    error                text,
    extract_started_at   timestamptz,
    extract_finished_at  timestamptz,
    extract_cached       boolean,
    bundle_version       text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS images_uploaded_at_idx ON images (uploaded_at DESC NULLS LAST);
CREATE INDEX IF NOT EXISTS images_sha256_idx ON images (sha256);

CREATE TABLE IF NOT EXISTS predictions (
    image_id       uuid NOT NULL,
    classifier     text NOT NULL,
    model_version  text NOT NULL,
    label          text NOT NULL,
    confidence     real NOT NULL,
    probabilities  real[] NOT NULL,
    latency_ms     real NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, classifier, model_version)
);
CREATE INDEX IF NOT EXISTS predictions_created_at_idx ON predictions (created_at DESC);
