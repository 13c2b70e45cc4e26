DROP INDEX audit_records_pending_age;
DROP INDEX embedding_jobs_parked;
DROP INDEX embedding_jobs_done;
DROP INDEX embedding_jobs_claim;
DELETE FROM embedding_jobs WHERE done_at IS NOT NULL;
ALTER TABLE embedding_jobs
    DROP COLUMN done_at,
    DROP COLUMN parked_at,
    DROP COLUMN last_error,
    DROP COLUMN leased_until,
    DROP COLUMN next_attempt_at;
