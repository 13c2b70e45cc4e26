-- Integrity (contract §8): records are append-only, enforced by PostgreSQL, and every record is a leaf
-- of one transparency log (an RFC 6962 Merkle tree) whose signed checkpoints an auditor verifies.

-- The runtime role. The service runs as a login role that is a member of it; migrations run as the
-- tables' owner. Roles belong to the cluster: a migration runner that may not create roles needs it
-- created beforehand (deploy/README.md, "Database roles").
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'datastorage_runtime') THEN
        CREATE ROLE datastorage_runtime NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'the role datastorage_runtime does not exist and % may not create it: create it first (deploy/README.md, "Database roles")', current_user;
END
$$;

-- Records not yet in the log. Filled by a trigger on every insert, whoever inserts (an insert that
-- bypasses the service is logged too, and shows in the log where it was inserted); emptied by the
-- sequencer in the transaction that appends their leaves, so each record is appended exactly once.
CREATE TABLE tlog_pending (
    record_id bigint PRIMARY KEY
);
INSERT INTO tlog_pending (record_id) SELECT id FROM audit_records;

-- The log's leaves in log order: which record each one is, and its leaf hash (the tree's level 0).
CREATE TABLE tlog_leaves (
    log_index     bigint      PRIMARY KEY CHECK (log_index >= 0),
    record_id     bigint      NOT NULL UNIQUE,
    kind          text        NOT NULL,
    leaf_hash     bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    integrated_at timestamptz NOT NULL DEFAULT now()
);

-- The hash of every complete subtree above the leaves, at its linear index (Go's sumdb/tlog layout,
-- ~1 per leaf; level 0 is tlog_leaves.leaf_hash): a root or a proof reads O(log n) of them by
-- primary key.
CREATE TABLE tlog_hashes (
    idx  bigint PRIMARY KEY CHECK (idx >= 0),
    hash bytea  NOT NULL CHECK (octet_length(hash) = 32)
);

-- Every signed checkpoint, kept.
CREATE TABLE tlog_checkpoints (
    tree_size  bigint      PRIMARY KEY CHECK (tree_size >= 0),
    root_hash  bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    note       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION tlog_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tlog_pending (record_id) SELECT id FROM inserted;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_records_enqueue AFTER INSERT ON audit_records
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tlog_enqueue();

-- Content never changes: an UPDATE may set only the derived embedding link (embedding_id, and
-- embedding_digest when `datastorage reembed` moves a record to another model). Every other column,
-- including ones added later, is content.
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (to_jsonb(NEW) - 'embedding_id' - 'embedding_digest')
           IS DISTINCT FROM (to_jsonb(OLD) - 'embedding_id' - 'embedding_digest') THEN
            RAISE EXCEPTION 'audit records are append-only: the content of record % cannot be changed', OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit records are append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();

-- The log itself is append-only too.
CREATE FUNCTION tlog_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the transparency log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER tlog_leaves_append_only BEFORE UPDATE OR DELETE ON tlog_leaves
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_hashes_append_only BEFORE UPDATE OR DELETE ON tlog_hashes
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_checkpoints_append_only BEFORE UPDATE OR DELETE ON tlog_checkpoints
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_leaves_no_truncate BEFORE TRUNCATE ON tlog_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_hashes_no_truncate BEFORE TRUNCATE ON tlog_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_checkpoints_no_truncate BEFORE TRUNCATE ON tlog_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();

-- What the runtime role may do: read and append records, set their derived embedding link, keep the
-- derived tables (vectors, jobs, idempotency keys), append to the log and empty its queue. Nothing
-- else: no UPDATE of content, no DELETE of records or of the log, no DDL.
GRANT USAGE ON SCHEMA public TO datastorage_runtime;
GRANT SELECT, INSERT ON audit_records, embeddings, tlog_leaves, tlog_hashes, tlog_checkpoints
    TO datastorage_runtime;
GRANT UPDATE (embedding_id, embedding_digest) ON audit_records TO datastorage_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON embedding_jobs, idempotency_keys TO datastorage_runtime;
GRANT SELECT, INSERT, DELETE ON tlog_pending TO datastorage_runtime;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO datastorage_runtime;
GRANT SELECT ON __diesel_schema_migrations TO datastorage_runtime;
