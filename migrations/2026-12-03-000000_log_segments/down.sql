-- Back to a row per leaf and per stored hash.
CREATE TABLE tlog_old_leaves (
    log_index     bigint      PRIMARY KEY CHECK (log_index >= 0),
    record_id     bigint      NOT NULL UNIQUE,
    kind          text        NOT NULL,
    leaf_hash     bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    integrated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tlog_hashes (
    idx  bigint PRIMARY KEY CHECK (idx >= 0),
    hash bytea  NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO tlog_old_leaves (log_index, record_id, kind, leaf_hash, integrated_at)
SELECT n, s.record_ids[j], s.kinds[j],
       substring(s.hashes FROM ((2 * n - bit_count(n::bit(64)) - s.first_hash) * 32 + 1)::integer FOR 32),
       s.integrated_at
FROM tlog_segments s
CROSS JOIN LATERAL generate_series(1, s.leaves) AS j
CROSS JOIN LATERAL (SELECT s.first_leaf + j - 1 AS n) AS leaf;
INSERT INTO tlog_hashes (idx, hash)
SELECT s.first_hash + k, substring(s.hashes FROM (k * 32 + 1)::integer FOR 32)
FROM tlog_segments s
CROSS JOIN LATERAL generate_series(0, octet_length(s.hashes) / 32 - 1) AS k
WHERE NOT EXISTS (
    SELECT 1 FROM tlog_old_leaves l
    WHERE 2 * l.log_index - bit_count(l.log_index::bit(64)) = s.first_hash + k);
DROP TABLE tlog_segments;
DROP TABLE tlog_leaves;
ALTER TABLE tlog_old_leaves RENAME TO tlog_leaves;
ALTER INDEX tlog_old_leaves_pkey RENAME TO tlog_leaves_pkey;
ALTER TABLE tlog_leaves RENAME CONSTRAINT tlog_old_leaves_record_id_key TO tlog_leaves_record_id_key;
ALTER TABLE tlog_leaves RENAME CONSTRAINT tlog_old_leaves_log_index_check TO tlog_leaves_log_index_check;
ALTER TABLE tlog_leaves RENAME CONSTRAINT tlog_old_leaves_leaf_hash_check TO tlog_leaves_leaf_hash_check;
CREATE TRIGGER tlog_leaves_append_only BEFORE UPDATE OR DELETE ON tlog_leaves
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_hashes_append_only BEFORE UPDATE OR DELETE ON tlog_hashes
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_leaves_no_truncate BEFORE TRUNCATE ON tlog_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_hashes_no_truncate BEFORE TRUNCATE ON tlog_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
GRANT SELECT, INSERT ON tlog_leaves, tlog_hashes TO datastorage_runtime;

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
ALTER TABLE tlog_queue DROP CONSTRAINT tlog_queue_shape;
DROP INDEX tlog_queue_first_id;
ALTER TABLE tlog_queue ADD COLUMN unpacked bytea[];
UPDATE tlog_queue q SET
    (first_id, record_ids, kinds, unpacked) = (
        SELECT min(id), array_agg(id ORDER BY id), array_agg(kind ORDER BY id),
               array_agg(NULLIF(h, decode(repeat('00', 32), 'hex')) ORDER BY id)
        FROM unnest(q.record_ids, q.kinds) WITH ORDINALITY AS u(id, kind, o)
        CROSS JOIN LATERAL (SELECT substring(q.leaf_hashes FROM ((u.o - 1) * 32 + 1)::integer FOR 32) AS h) x);
ALTER TABLE tlog_queue DROP COLUMN leaf_hashes;
ALTER TABLE tlog_queue RENAME COLUMN unpacked TO leaf_hashes;
ALTER TABLE tlog_queue ALTER COLUMN leaf_hashes SET NOT NULL;
ALTER TABLE tlog_queue ADD CONSTRAINT tlog_queue_check CHECK (cardinality(record_ids) > 0
           AND first_id = record_ids[1]
           AND cardinality(kinds) = cardinality(record_ids)
           AND cardinality(leaf_hashes) = cardinality(record_ids));
