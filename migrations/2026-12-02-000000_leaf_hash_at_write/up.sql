-- The leaf hash of a record, computed by the statement that inserts it (contract §8's leaf:
-- SHA-256(0x00 ‖ canonical form with id, kind and receivedAt), the record's canonical form sent by
-- the service), so that the sequencer appends leaves without reading and re-serializing content.
-- NULL when the writer did not compute it (another writer, or a record whose numbers PostgreSQL
-- would print differently, see ds-store-pg's write.rs): the sequencer then computes it from the
-- stored content, as before. Content like any other column: the append-only trigger refuses to
-- change it.
ALTER TABLE audit_records ADD COLUMN leaf_hash bytea
    CONSTRAINT audit_records_leaf_hash_length CHECK (octet_length(leaf_hash) = 32);

-- The queue carries what the sequencer appends: the record's kind and its leaf hash when known.
ALTER TABLE tlog_pending ADD COLUMN kind text, ADD COLUMN leaf_hash bytea;

CREATE OR REPLACE FUNCTION tlog_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tlog_pending (record_id, kind, leaf_hash) SELECT id, kind, leaf_hash FROM inserted;
    RETURN NULL;
END
$$;
