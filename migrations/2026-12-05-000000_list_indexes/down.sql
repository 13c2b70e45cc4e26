DROP INDEX audit_records_list_correlation;
DROP INDEX audit_records_list_phase;
DROP INDEX audit_records_list_kind;
DROP INDEX audit_records_list_namespace;
DROP INDEX audit_records_list_kind_namespace;
CREATE INDEX audit_records_kind_namespace_created ON audit_records (kind, namespace, created_at);
