-- The sweeper re-publishes accepted images that never got predictions; it records when.
ALTER TABLE images ADD COLUMN IF NOT EXISTS resent_at timestamptz;
ALTER TABLE images ADD COLUMN IF NOT EXISTS resent_count integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS images_pending_idx ON images (accepted_at) WHERE status = 'pending';
