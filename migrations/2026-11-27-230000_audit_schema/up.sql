-- The audit store: records of every kind in one table, embeddings content-addressed in their own.
CREATE EXTENSION IF NOT EXISTS vector;

-- One row per distinct (model, embedding text): records whose embedding text is identical share it.
CREATE TABLE embeddings (
    id         bigserial   PRIMARY KEY,
    digest     bytea       NOT NULL UNIQUE CHECK (octet_length(digest) = 32), -- SHA-256(model, NUL, text)
    model      text        NOT NULL,                                         -- model identity
    embedding  vector(384) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX embeddings_embedding_hnsw ON embeddings USING hnsw (embedding vector_cosine_ops);

-- Append-only: the service never updates nor deletes a record (embedding_id is filled once, by the
-- deferred embedding worker, when a record was written before its embedding).
CREATE TABLE audit_records (
    id               bigserial   PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('remediation', 'aianalysis', 'workflow', 'execution')),
    name             text        NOT NULL,
    namespace        text        NOT NULL,
    phase            text        NOT NULL CHECK (phase IN ('Pending', 'Processing', 'Completed', 'Failed')),
    correlation_id   text        NOT NULL,
    message          text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    received_at      timestamptz NOT NULL DEFAULT now(),
    content_digest   bytea       NOT NULL CHECK (octet_length(content_digest) = 32),
    details          jsonb       NOT NULL,
    unknown_fields   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    embedding_digest bytea       NOT NULL CHECK (octet_length(embedding_digest) = 32),
    embedding_id     bigint      REFERENCES embeddings (id)
);
-- Idempotency without a key: the same content is one row, even when two writers race.
CREATE UNIQUE INDEX audit_records_content_digest ON audit_records (content_digest);
-- The trail of a remediation, in its stable order.
CREATE INDEX audit_records_trail ON audit_records (correlation_id, created_at, id);
CREATE INDEX audit_records_kind_namespace_created ON audit_records (kind, namespace, created_at);
CREATE INDEX audit_records_embedding_id ON audit_records (embedding_id);

-- Idempotency with a key: one row per (caller identity, key), holding what the first request answered.
CREATE TABLE idempotency_keys (
    caller         text        NOT NULL,
    key            text        NOT NULL,
    request_digest bytea       NOT NULL CHECK (octet_length(request_digest) = 32),
    outcomes       jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
