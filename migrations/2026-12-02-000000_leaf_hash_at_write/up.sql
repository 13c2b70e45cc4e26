-- The write path's share of the transparency log made small (docs/performance.md, "The
-- transparency log"): the insert computes each record's leaf hash, and the queue holds one row per
-- inserting statement instead of one per record.

-- The leaf hash of a record, computed by the statement that inserts it (contract §8's leaf:
-- SHA-256 of 0x00 and the canonical form with id, kind and receivedAt; the service sends the
-- record's canonical form), so that the sequencer appends leaves without reading and re-serializing
-- content. NULL when the writer did not compute it (another writer, or a record whose numbers
-- PostgreSQL would print back differently, see ds-store-pg's tlog.rs): the sequencer then computes
-- it from the stored content. Content like any other column: the append-only trigger refuses to
-- change it.
ALTER TABLE audit_records ADD COLUMN leaf_hash bytea
    CONSTRAINT audit_records_leaf_hash_length CHECK (octet_length(leaf_hash) = 32);

-- Records not yet in the log: one row per inserting statement and per 10,000 of its records (a
-- group commit inserts many records in one statement; a COPY of millions becomes rows a sequencer
-- run can take), with each record's kind and leaf hash (NULL when unknown), ids in order
-- (`first_id` is the first). Filled by the statement-level trigger on every insert, whoever inserts;
-- emptied by the sequencer in the transaction that appends the leaves, so each record is appended
-- exactly once.
CREATE TABLE tlog_queue (
    batch       bigserial   PRIMARY KEY,
    first_id    bigint      NOT NULL,
    record_ids  bigint[]    NOT NULL,
    kinds       text[]      NOT NULL,
    leaf_hashes bytea[]     NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(record_ids) > 0
           AND first_id = record_ids[1]
           AND cardinality(kinds) = cardinality(record_ids)
           AND cardinality(leaf_hashes) = cardinality(record_ids))
);
INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
SELECT min(p.record_id), array_agg(p.record_id ORDER BY p.record_id),
       array_agg(r.kind ORDER BY p.record_id), array_agg(NULL::bytea ORDER BY p.record_id)
FROM (SELECT record_id, (row_number() OVER (ORDER BY record_id) - 1) / 10000 AS chunk
      FROM tlog_pending) p
JOIN audit_records r ON r.id = p.record_id
GROUP BY p.chunk
ORDER BY p.chunk;
DROP TABLE tlog_pending;

CREATE OR REPLACE FUNCTION tlog_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
    SELECT min(id), array_agg(id ORDER BY id), array_agg(kind ORDER BY id),
           array_agg(leaf_hash ORDER BY id)
    FROM (SELECT id, kind, leaf_hash, (row_number() OVER (ORDER BY id) - 1) / 10000 AS chunk
          FROM inserted) c
    GROUP BY chunk
    ORDER BY chunk;
    RETURN NULL;
END
$$;

GRANT SELECT, INSERT, DELETE ON tlog_queue TO datastorage_runtime;
GRANT USAGE ON SEQUENCE tlog_queue_batch_seq TO datastorage_runtime;
