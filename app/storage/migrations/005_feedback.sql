-- Labels sent back for images (POST /feedback/{image_id}): one per image, the last one wins.
CREATE TABLE IF NOT EXISTS feedback (
    image_id     uuid PRIMARY KEY REFERENCES images (image_id) ON DELETE CASCADE,
    label        text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    updates      integer NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS feedback_received_at_idx ON feedback (received_at DESC);
