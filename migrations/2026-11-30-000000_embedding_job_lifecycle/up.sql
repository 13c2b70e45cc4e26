-- The embedding job lifecycle.
--
-- A job is open until its vector is stored (done) or it failed `max_attempts` times (parked: kept,
-- listed and re-queued by `datastorage jobs`). A worker claims open jobs with a lease (no transaction
-- is held across the provider call): a worker that dies leaves them to the next once the lease ends.
-- A failed job waits `next_attempt_at` (exponential backoff) and keeps its last error.
ALTER TABLE embedding_jobs
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN leased_until    timestamptz,
    ADD COLUMN last_error      text,
    ADD COLUMN parked_at       timestamptz,
    -- A finished job is not deleted with its batch: it is marked done and kept for a grace period
    -- longer than any write transaction can last, then retired (deleted) after one more link of its
    -- records. A writer whose statement saw the job (and so queued none of its own) but committed
    -- after the worker linked the batch is linked by the sweep or at the latest by the retirement: no
    -- committed record is left without its vector or a job for it, whatever the interleaving.
    ADD COLUMN done_at         timestamptz;
-- Claims: the open jobs of a model by the time they may run.
CREATE INDEX embedding_jobs_claim ON embedding_jobs (model, next_attempt_at)
    WHERE done_at IS NULL AND parked_at IS NULL;
-- Retirement: done jobs by age.
CREATE INDEX embedding_jobs_done ON embedding_jobs (done_at) WHERE done_at IS NOT NULL;
-- Parked jobs (listed, counted, re-queued).
CREATE INDEX embedding_jobs_parked ON embedding_jobs (parked_at) WHERE parked_at IS NOT NULL;
-- The age of the oldest record still waiting for its vector (a gauge and an alert), in O(log n).
CREATE INDEX audit_records_pending_age ON audit_records (received_at) WHERE embedding_id IS NULL;
