-- Which deployment (app id / bucket / input topic) accepted an image, and where its upload event
-- sits on the input topic: the sweeper re-sends only its own deployment's images, and only those
-- whose offset the extractor's group has already committed past (an image still queued is not lost).
ALTER TABLE images ADD COLUMN IF NOT EXISTS deployment text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS input_partition integer;
ALTER TABLE images ADD COLUMN IF NOT EXISTS input_offset bigint;
DROP INDEX IF EXISTS images_pending_idx;
CREATE INDEX IF NOT EXISTS images_pending_deployment_idx ON images (deployment, accepted_at) WHERE status = 'pending';
-- How many times a classifier ran for one (image, classifier, model version): the primary key keeps
-- one row, this counts the redeliveries that the row absorbed.
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 1;
