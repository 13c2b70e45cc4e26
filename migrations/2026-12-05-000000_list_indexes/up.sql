-- The list of contract §10 (newest first, keyset on (received_at, id)): an index for each filter
-- that narrows it, each ending in (received_at, id) so that a page is one ordered index range in
-- every month partition whatever its depth (docs/api.md, "List records"; docs/scaling.md, what
-- each costs a write). No filter, or a time range only: audit_records_received (received_at, id).
-- Two filters: the index of the one, the other checked on the rows it reads; kind and namespace
-- together have their own index (an operator's usual question).
-- (kind, namespace, created_at) served nothing that (kind, namespace, received_at, id) does not.
DROP INDEX audit_records_kind_namespace_created;
CREATE INDEX audit_records_list_kind_namespace ON audit_records (kind, namespace, received_at, id);
CREATE INDEX audit_records_list_namespace ON audit_records (namespace, received_at, id);
CREATE INDEX audit_records_list_kind ON audit_records (kind, received_at, id);
CREATE INDEX audit_records_list_phase ON audit_records (phase, received_at, id);
CREATE INDEX audit_records_list_correlation ON audit_records (correlation_id, received_at, id);
