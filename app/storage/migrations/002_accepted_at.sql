-- When the upload was answered 202 (object written and Kafka produce confirmed); uploaded_at is
-- when the request was received.
ALTER TABLE images ADD COLUMN IF NOT EXISTS accepted_at timestamptz;
