-- A classifier's batch in one round trip: the images' progress upsert and the predictions insert,
-- which were four (BEGIN, the upsert, the insert, COMMIT). Each statement of a VOLATILE PL/pgSQL
-- function takes its own snapshot under READ COMMITTED, so the insert sees the bundle that the
-- upsert (or another classifier's committed write, once the upsert holds the image row's lock)
-- recorded for the image, as the two statements of the old transaction did.
--
-- Arguments are column arrays. The rows' probabilities come flat, each row's slice given by its
-- first and last index (1-based). Callers pass each image once and each (image, classifier,
-- model_version) once: a multi-row ON CONFLICT DO UPDATE cannot touch one row twice.
-- Returns how many prediction rows were inserted (a redelivered one only counts an attempt).
CREATE OR REPLACE FUNCTION imgstream_write_predictions(
    p_image_id uuid[], p_uploaded_at timestamptz[], p_extract_started_at timestamptz[],
    p_extract_finished_at timestamptz[], p_extract_cached boolean[], p_bundle_version text[],
    r_image_id uuid[], r_classifier text[], r_model_version text[], r_label text[], r_confidence real[],
    r_probabilities real[], r_first integer[], r_last integer[], r_latency_ms real[],
    first_answer_only boolean
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
BEGIN
    IF cardinality(p_image_id) > 0 THEN
        -- in the callers' order (sorted by image_id): one lock order across the classifiers
        INSERT INTO images AS i (image_id, uploaded_at, extract_started_at, extract_finished_at, extract_cached,
                                 bundle_version)
        SELECT p.image_id, p.uploaded_at, p.extract_started_at, p.extract_finished_at, p.extract_cached,
               p.bundle_version
        FROM unnest(p_image_id, p_uploaded_at, p_extract_started_at, p_extract_finished_at, p_extract_cached,
                    p_bundle_version) WITH ORDINALITY
             AS p(image_id, uploaded_at, extract_started_at, extract_finished_at, extract_cached, bundle_version, n)
        ORDER BY p.n
        ON CONFLICT (image_id) DO UPDATE SET
            uploaded_at = COALESCE(i.uploaded_at, EXCLUDED.uploaded_at),
            extract_started_at = COALESCE(i.extract_started_at, EXCLUDED.extract_started_at),
            extract_finished_at = COALESCE(i.extract_finished_at, EXCLUDED.extract_finished_at),
            extract_cached = COALESCE(i.extract_cached, EXCLUDED.extract_cached),
            bundle_version = COALESCE(i.bundle_version, EXCLUDED.bundle_version)
        WHERE i.bundle_version IS NULL OR i.extract_started_at IS NULL;
    END IF;
    IF cardinality(r_image_id) = 0 THEN
        RETURN 0;
    END IF;
    WITH written AS (
        INSERT INTO predictions AS pr (image_id, classifier, model_version, label, confidence, probabilities,
                                       latency_ms)
        SELECT v.image_id, v.classifier, v.model_version, v.label, v.confidence,
               r_probabilities[v.first:v.last], v.latency_ms
        FROM unnest(r_image_id, r_classifier, r_model_version, r_label, r_confidence, r_first, r_last, r_latency_ms)
             AS v(image_id, classifier, model_version, label, confidence, first, last, latency_ms)
        -- the image's bundle is set once, by the first progress write: every classifier answers
        -- with that bundle, whichever message came first
        WHERE NOT first_answer_only
           OR v.model_version = (SELECT im.bundle_version FROM images im WHERE im.image_id = v.image_id)
        ON CONFLICT (image_id, classifier, model_version) DO UPDATE SET attempts = pr.attempts + 1
        RETURNING (xmax = 0) AS fresh
    )
    SELECT count(*) FILTER (WHERE fresh) INTO inserted FROM written;
    RETURN inserted;
END
$$;
