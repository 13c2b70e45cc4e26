-- A finished job is not deleted with its batch: it is marked done and kept for a grace period longer
-- than any write transaction can last, then retired (deleted) after one more link of its records. A
-- writer whose statement saw the job (and so queued none of its own) but committed after the worker
-- linked the batch is linked by the sweep or at the latest by the retirement: no committed record is
-- left without its vector or a job for it, whatever the interleaving.
ALTER TABLE embedding_jobs ADD COLUMN done_at timestamptz;
-- Claims: the open jobs of a model, oldest first.
CREATE INDEX embedding_jobs_claim ON embedding_jobs (model, created_at) WHERE done_at IS NULL;
-- Retirement: done jobs by age.
CREATE INDEX embedding_jobs_done ON embedding_jobs (done_at) WHERE done_at IS NOT NULL;
-- The age of the oldest record still waiting for its vector (a gauge and an alert), in O(log n).
CREATE INDEX audit_records_pending_age ON audit_records (received_at) WHERE embedding_id IS NULL;
