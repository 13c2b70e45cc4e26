REVOKE ALL ON __diesel_schema_migrations FROM datastorage_runtime;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM datastorage_runtime;
REVOKE ALL ON audit_records, embeddings, embedding_jobs, idempotency_keys FROM datastorage_runtime;
REVOKE USAGE ON SCHEMA public FROM datastorage_runtime;
DROP TRIGGER audit_records_no_truncate ON audit_records;
DROP TRIGGER audit_records_append_only ON audit_records;
DROP TRIGGER audit_records_enqueue ON audit_records;
DROP FUNCTION audit_records_append_only();
DROP FUNCTION tlog_enqueue();
DROP TABLE tlog_checkpoints, tlog_hashes, tlog_leaves, tlog_pending;
DROP FUNCTION tlog_append_only();
-- The role belongs to the cluster and may serve other databases: it stays.
