-- Back to one unpartitioned table (rows copied), without holds and the log's own entries. The
-- entries' leaves stay in the log: a log that holds them does not verify with the previous
-- version's verifier (docs/operations.md, "Migrations that are not additive").
DROP FUNCTION audit_purge_apply(bigint, bigint[], integer);
DROP FUNCTION audit_purge_partition(text, jsonb, jsonb);
DROP TABLE purge_pending;
DROP FUNCTION audit_purge(jsonb, jsonb, timestamptz, bigint, integer);
DROP FUNCTION audit_holds_lock();
DROP FUNCTION audit_partition_ensure(timestamptz);
DROP FUNCTION audit_partitions();
DROP TABLE log_entries;
DROP FUNCTION log_entries_enqueue();
DROP TABLE legal_holds;
DROP FUNCTION legal_holds_append_only();

ALTER TABLE audit_records RENAME TO audit_records_partitioned;
ALTER INDEX audit_records_pkey RENAME TO audit_records_partitioned_pkey;
ALTER INDEX audit_records_trail RENAME TO audit_records_partitioned_trail;
ALTER INDEX audit_records_kind_namespace_created RENAME TO audit_records_partitioned_kind_namespace_created;
ALTER INDEX audit_records_embedding_id RENAME TO audit_records_partitioned_embedding_id;
ALTER INDEX audit_records_pending RENAME TO audit_records_partitioned_pending;
ALTER INDEX audit_records_pending_age RENAME TO audit_records_partitioned_pending_age;
ALTER TABLE audit_records_partitioned RENAME CONSTRAINT audit_records_embedding_id_fkey
    TO audit_records_partitioned_embedding_id_fkey;
ALTER SEQUENCE audit_records_id_seq OWNED BY NONE;

CREATE TABLE audit_records (LIKE audit_records_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                            INCLUDING STORAGE INCLUDING COMMENTS);
ALTER SEQUENCE audit_records_id_seq OWNED BY audit_records.id;
INSERT INTO audit_records SELECT * FROM audit_records_partitioned ORDER BY id;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_pkey PRIMARY KEY (id);
ALTER TABLE audit_records ADD CONSTRAINT audit_records_embedding_id_fkey
    FOREIGN KEY (embedding_id) REFERENCES embeddings (id);
CREATE UNIQUE INDEX audit_records_content_digest ON audit_records (content_digest);
CREATE INDEX audit_records_trail ON audit_records (correlation_id, created_at, id);
CREATE INDEX audit_records_kind_namespace_created ON audit_records (kind, namespace, created_at);
CREATE INDEX audit_records_embedding_id ON audit_records (embedding_id);
CREATE INDEX audit_records_pending ON audit_records (embedding_digest) WHERE embedding_id IS NULL;
CREATE INDEX audit_records_pending_age ON audit_records (received_at) WHERE embedding_id IS NULL;
DROP TABLE audit_records_partitioned;
DROP TABLE audit_digests;

CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE TRIGGER audit_records_enqueue AFTER INSERT ON audit_records
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tlog_enqueue();

GRANT SELECT, INSERT ON audit_records TO datastorage_runtime;
GRANT UPDATE (embedding_id, embedding_digest) ON audit_records TO datastorage_runtime;
