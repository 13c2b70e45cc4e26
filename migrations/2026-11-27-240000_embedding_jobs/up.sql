-- Durable embedding jobs: a record committed without its vector (mode `deferred`, or policy `defer`
-- when the provider failed) has embedding_id NULL and a job for its embedding text, committed in the
-- same transaction. Jobs are content-addressed like the vectors: one job per distinct text and model.
CREATE TABLE embedding_jobs (
    digest     bytea       PRIMARY KEY CHECK (octet_length(digest) = 32), -- SHA-256(model, NUL, text)
    model      text        NOT NULL,
    text       text        NOT NULL,
    attempts   integer     NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The records a finished job links to its vector.
CREATE INDEX audit_records_pending ON audit_records (embedding_digest) WHERE embedding_id IS NULL;
