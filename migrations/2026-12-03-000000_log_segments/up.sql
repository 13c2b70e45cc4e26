-- The transparency log stored in segments (docs/integrity.md, "What is stored"; docs/performance.md,
-- "The transparency log"): a sequencer run writes one row per 1,024 leaves instead of a row per leaf
-- and about one per stored hash, and the queue's trigger packs leaf hashes into one string.

-- The queue: the leaf hashes of a row's records as one string of 32-byte hashes, in the order of
-- `record_ids` (32 zero bytes where the insert did not compute one: no SHA-256 output is that).
ALTER TABLE tlog_queue ADD COLUMN packed bytea;
UPDATE tlog_queue q SET packed = (
    SELECT string_agg(COALESCE(h, decode(repeat('00', 32), 'hex')), ''::bytea ORDER BY o)
    FROM unnest(q.leaf_hashes) WITH ORDINALITY AS u(h, o));
ALTER TABLE tlog_queue DROP CONSTRAINT tlog_queue_check;
ALTER TABLE tlog_queue DROP COLUMN leaf_hashes;
ALTER TABLE tlog_queue RENAME COLUMN packed TO leaf_hashes;
-- Hashes do not compress: stored as they are, without trying.
ALTER TABLE tlog_queue ALTER COLUMN leaf_hashes SET NOT NULL,
                       ALTER COLUMN leaf_hashes SET STORAGE EXTERNAL;
-- `first_id` is the least of `record_ids` (the sweep stays below the least queued id); the arrays
-- are in the order the statement inserted.
ALTER TABLE tlog_queue ADD CONSTRAINT tlog_queue_shape CHECK (
    cardinality(record_ids) > 0
    AND cardinality(kinds) = cardinality(record_ids)
    AND octet_length(leaf_hashes) = 32 * cardinality(record_ids));

-- The sweep of every sequencer run stays below the least queued id: found by this index rather than
-- by reading the whole queue (a heap that churns a row per inserting statement).
CREATE INDEX tlog_queue_first_id ON tlog_queue (first_id);

-- One queue row per inserting statement and per 10,000 ids of it, without sorting: a group
-- commit's statement is one row, a COPY of millions becomes rows a sequencer run can take.
CREATE OR REPLACE FUNCTION tlog_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
    SELECT min(id), array_agg(id), array_agg(kind),
           string_agg(COALESCE(leaf_hash, decode(repeat('00', 32), 'hex')), ''::bytea)
    FROM inserted
    GROUP BY id / 10000;
    RETURN NULL;
END
$$;

-- The log in segments: consecutive leaves appended by one sequencer run, at most 1,024 per row.
-- Appending leaves [a, b) creates the stored hashes with linear indexes [SI(a), SI(b)) (SI(n) =
-- 2n - popcount(n), the index of leaf n's own hash; Go's sumdb/tlog layout): a segment holds them
-- all, in index order, 32 bytes each (`first_hash` = SI(first_leaf)). A proof reads each hash it
-- needs as a 32-byte slice of one segment (found by primary key; `hashes` is stored uncompressed,
-- so a slice reads one TOAST chunk).
CREATE TABLE tlog_segments (
    first_leaf    bigint      PRIMARY KEY CHECK (first_leaf >= 0),
    leaves        integer     NOT NULL CHECK (leaves BETWEEN 1 AND 1024),
    first_hash    bigint      NOT NULL,
    hashes        bytea       NOT NULL,
    record_ids    bigint[]    NOT NULL,
    kinds         text[]      NOT NULL,
    integrated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (first_hash = 2 * first_leaf - bit_count(first_leaf::bit(64))),
    CHECK (octet_length(hashes) = 32 * (2 * (first_leaf + leaves)
           - bit_count((first_leaf + leaves)::bit(64)) - first_hash)),
    CHECK (cardinality(record_ids) = leaves AND cardinality(kinds) = leaves)
);
ALTER TABLE tlog_segments ALTER COLUMN hashes SET STORAGE EXTERNAL;

-- The existing log, in segments of 1,024 aligned leaves. Stored hash i belongs to segment k when
-- SI(1024k) <= i < SI(1024(k+1)), SI(1024k) = 2048k - popcount(k).
INSERT INTO tlog_segments (first_leaf, leaves, first_hash, hashes, record_ids, kinds, integrated_at)
WITH stored AS (
    SELECT 2 * log_index - bit_count(log_index::bit(64)) AS idx, leaf_hash AS hash FROM tlog_leaves
    UNION ALL
    SELECT idx, hash FROM tlog_hashes
), placed AS (
    SELECT idx, hash,
           CASE WHEN 2048 * (idx / 2048 + 1) - bit_count((idx / 2048 + 1)::bit(64)) <= idx
                THEN idx / 2048 + 1 ELSE idx / 2048 END AS seg
    FROM stored
), hashes AS (
    SELECT seg, string_agg(hash, ''::bytea ORDER BY idx) AS hashes FROM placed GROUP BY seg
), leaves AS (
    SELECT log_index / 1024 AS seg, min(log_index) AS first_leaf, count(*)::integer AS leaves,
           array_agg(record_id ORDER BY log_index) AS record_ids,
           array_agg(kind ORDER BY log_index) AS kinds, max(integrated_at) AS integrated_at
    FROM tlog_leaves GROUP BY 1
)
SELECT l.first_leaf, l.leaves, 2 * l.first_leaf - bit_count(l.first_leaf::bit(64)), h.hashes,
       l.record_ids, l.kinds, l.integrated_at
FROM leaves l JOIN hashes h USING (seg)
ORDER BY l.first_leaf;

-- The leaf of each record (reads show it as `logIndex`; a proof starts from it). The primary key
-- also makes a second leaf for a record impossible.
CREATE TABLE tlog_record_leaves (
    record_id bigint PRIMARY KEY,
    log_index bigint NOT NULL CHECK (log_index >= 0)
);
INSERT INTO tlog_record_leaves (record_id, log_index)
SELECT record_id, log_index FROM tlog_leaves ORDER BY record_id;

DO $$
DECLARE
    n_leaves bigint := (SELECT count(*) FROM tlog_leaves);
    n_size   bigint := (SELECT COALESCE(max(s.first_leaf + s.leaves), 0) FROM tlog_segments s);
    n_held   bigint := (SELECT COALESCE(sum(s.leaves), 0) FROM tlog_segments s);
BEGIN
    IF n_size <> n_leaves OR n_held <> n_leaves THEN
        RAISE EXCEPTION 'the transparency log has % leaves but they make % leaves in segments up to size %: a gap in tlog_leaves',
            n_leaves, n_held, n_size;
    END IF;
END
$$;

DROP TABLE tlog_leaves;
DROP TABLE tlog_hashes;
ALTER TABLE tlog_record_leaves RENAME TO tlog_leaves;
ALTER INDEX tlog_record_leaves_pkey RENAME TO tlog_leaves_pkey;

CREATE TRIGGER tlog_segments_append_only BEFORE UPDATE OR DELETE ON tlog_segments
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_segments_no_truncate BEFORE TRUNCATE ON tlog_segments
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_leaves_append_only BEFORE UPDATE OR DELETE ON tlog_leaves
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_leaves_no_truncate BEFORE TRUNCATE ON tlog_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();

GRANT SELECT, INSERT ON tlog_segments, tlog_leaves TO datastorage_runtime;
