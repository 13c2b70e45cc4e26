DROP TABLE idempotency_keys;
DROP TABLE audit_records;
DROP TABLE embeddings;
