DROP INDEX audit_records_pending;
DROP TABLE embedding_jobs;
