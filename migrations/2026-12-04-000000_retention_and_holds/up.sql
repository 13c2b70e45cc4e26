-- Retention and legal hold (contract §9; docs/retention.md): `audit_records` partitioned by month of
-- `received_at` (UTC), idempotency kept across partitions by a table of content digests, legal
-- holds, the log's own entries (purges, holds, releases), and the one function through which
-- records are ever deleted.
--
-- In place: the existing table becomes the first partition (every month up to the end of the
-- current one), so no row is copied; its rows expire and are purged like any others.

-- Idempotency across partitions: a unique index of a partitioned table must hold the partition
-- key, so "the same content is one row" moves to its own table. The write inserts here first (ON
-- CONFLICT DO NOTHING decides between racing writers) and the record only for a digest it inserted;
-- `received_at` lets a replay read the original from its partition. Removed with the record.
CREATE TABLE audit_digests (
    content_digest bytea       PRIMARY KEY CHECK (octet_length(content_digest) = 32),
    record_id      bigint      NOT NULL,
    received_at    timestamptz NOT NULL
);
INSERT INTO audit_digests (content_digest, record_id, received_at)
SELECT content_digest, id, received_at FROM audit_records ORDER BY content_digest;

-- The existing table, renamed with its indexes, its triggers moved to the partitioned table.
DROP TRIGGER audit_records_append_only ON audit_records;
DROP TRIGGER audit_records_no_truncate ON audit_records;
DROP TRIGGER audit_records_enqueue ON audit_records;
ALTER TABLE audit_records RENAME TO audit_records_first;
ALTER INDEX audit_records_pkey RENAME TO audit_records_first_pkey;
ALTER INDEX audit_records_trail RENAME TO audit_records_first_trail;
ALTER INDEX audit_records_kind_namespace_created RENAME TO audit_records_first_kind_namespace_created;
ALTER INDEX audit_records_embedding_id RENAME TO audit_records_first_embedding_id;
ALTER INDEX audit_records_pending RENAME TO audit_records_first_pending;
ALTER INDEX audit_records_pending_age RENAME TO audit_records_first_pending_age;
-- Now in audit_digests.
DROP INDEX audit_records_content_digest;
-- The id sequence outlives any partition.
ALTER SEQUENCE audit_records_id_seq OWNED BY NONE;

-- The same columns, defaults and CHECK constraints, partitioned by month of `received_at`. Primary
-- keys of partitioned tables hold the partition key: (id, received_at), still unique by id (one
-- sequence), and a read by id alone uses it in every partition.
CREATE TABLE audit_records (LIKE audit_records_first INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                            INCLUDING STORAGE INCLUDING COMMENTS)
    PARTITION BY RANGE (received_at);
ALTER SEQUENCE audit_records_id_seq OWNED BY audit_records.id;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_pkey PRIMARY KEY (id, received_at);
ALTER TABLE audit_records ADD CONSTRAINT audit_records_embedding_id_fkey
    FOREIGN KEY (embedding_id) REFERENCES embeddings (id);
CREATE INDEX audit_records_trail ON audit_records (correlation_id, created_at, id);
CREATE INDEX audit_records_kind_namespace_created ON audit_records (kind, namespace, created_at);
CREATE INDEX audit_records_embedding_id ON audit_records (embedding_id);
CREATE INDEX audit_records_pending ON audit_records (embedding_digest) WHERE embedding_id IS NULL;
CREATE INDEX audit_records_pending_age ON audit_records (received_at) WHERE embedding_id IS NULL;
-- Records in the order they were received: the purge walks the expired ones (and the list API of
-- contract §10 pages through them, newest first).
CREATE INDEX audit_records_received ON audit_records (received_at, id);

-- The first partition: every `received_at` before the first day of next month (UTC), or of the
-- month after the latest stored one if a clock ran ahead. Its existing indexes and foreign key are
-- taken over as the partitioned table's; its primary key gains `received_at`.
DO $$
DECLARE
    upto timestamptz := greatest(
        date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month',
        (SELECT date_trunc('month', max(received_at) AT TIME ZONE 'UTC') + interval '1 month'
         FROM audit_records_first)) AT TIME ZONE 'UTC';
BEGIN
    ALTER TABLE audit_records_first DROP CONSTRAINT audit_records_first_pkey;
    ALTER TABLE audit_records_first ADD CONSTRAINT audit_records_first_pkey PRIMARY KEY (id, received_at);
    -- Proves the bound, so that attaching does not scan again.
    EXECUTE format('ALTER TABLE audit_records_first ADD CONSTRAINT audit_records_first_bound CHECK (received_at < %L)', upto);
    EXECUTE format('ALTER TABLE audit_records ATTACH PARTITION audit_records_first FOR VALUES FROM (MINVALUE) TO (%L)', upto);
    ALTER TABLE audit_records_first DROP CONSTRAINT audit_records_first_bound;
END
$$;

-- Legal holds (contract §9): a hold covers every record of its correlation id, written before or
-- after it was placed, until released. Nothing is deleted: a release sets who, when and why, once.
CREATE TABLE legal_holds (
    id             bigserial   PRIMARY KEY,
    correlation_id text        NOT NULL CHECK (correlation_id <> ''),
    reason         text        NOT NULL CHECK (reason <> ''),
    placed_by      text        NOT NULL,
    placed_at      timestamptz NOT NULL DEFAULT now(),
    released_by    text,
    released_at    timestamptz,
    release_reason text,
    CHECK ((released_at IS NULL) = (released_by IS NULL)
           AND (released_at IS NULL) = (release_reason IS NULL)),
    CHECK (release_reason <> '')
);
CREATE INDEX legal_holds_active ON legal_holds (correlation_id) WHERE released_at IS NULL;

CREATE FUNCTION legal_holds_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.released_at IS NULL
       AND (to_jsonb(NEW) - 'released_by' - 'released_at' - 'release_reason')
           = (to_jsonb(OLD) - 'released_by' - 'released_at' - 'release_reason') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'legal holds are append-only: a hold is released once and never deleted (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER legal_holds_append_only BEFORE UPDATE OR DELETE ON legal_holds
    FOR EACH ROW EXECUTE FUNCTION legal_holds_append_only();
CREATE TRIGGER legal_holds_no_truncate BEFORE TRUNCATE ON legal_holds
    FOR EACH STATEMENT EXECUTE FUNCTION legal_holds_append_only();

-- The log's own entries, leaves beside the records (contract §8, §9): a purge (what was removed, by
-- which policy, when), a hold placed, a hold released. Ids come from the records' sequence, so a
-- leaf's id names one record or one entry; queued for the sequencer like records.
CREATE TABLE log_entries (
    id         bigint      PRIMARY KEY DEFAULT nextval('audit_records_id_seq'),
    kind       text        NOT NULL CHECK (kind IN ('purge', 'hold', 'release')),
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER log_entries_append_only BEFORE UPDATE OR DELETE ON log_entries
    FOR EACH ROW EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER log_entries_no_truncate BEFORE TRUNCATE ON log_entries
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE FUNCTION log_entries_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- 32 zero bytes: the sequencer computes the leaf hash from the entry.
    INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
    SELECT min(id), array_agg(id), array_agg(kind),
           string_agg(decode(repeat('00', 32), 'hex'), ''::bytea)
    FROM inserted
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER log_entries_enqueue AFTER INSERT ON log_entries
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION log_entries_enqueue();

-- Records: append-only (the purge below excepted), queued for the log, on the partitioned table
-- (row triggers apply to every partition; TRUNCATE triggers are each partition's own).
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
    -- The retention purge, and only for a record no hold covers (audit_purge sets this).
    IF TG_OP = 'DELETE' AND current_setting('datastorage.purge', true) = 'on'
       AND NOT EXISTS (SELECT 1 FROM legal_holds h
                       WHERE h.correlation_id = OLD.correlation_id AND h.released_at IS NULL) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_first_no_truncate BEFORE TRUNCATE ON audit_records_first
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_enqueue AFTER INSERT ON audit_records
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tlog_enqueue();

-- The partitions of audit_records and their bounds as the catalog has them (`lo` NULL for
-- MINVALUE): one reading of the bounds for the functions below and the maintenance task.
CREATE FUNCTION audit_partitions() RETURNS TABLE (name text, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_records'::regclass
$$;

-- The month partition holding `at` (UTC), created if missing: by the maintenance task ahead of
-- time, and by a write that found none (a write never fails for want of a partition). Runs as the
-- tables' owner; the runtime role may call it, not create tables.
CREATE FUNCTION audit_partition_ensure(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name        text := format('audit_records_y%sm%s', to_char(at AT TIME ZONE 'UTC', 'YYYY'),
                               to_char(at AT TIME ZONE 'UTC', 'MM'));
    existing    text;
BEGIN
    -- Serialized: replicas creating the same month at once.
    PERFORM pg_advisory_xact_lock(7234893271234001);
    SELECT p.name INTO existing FROM audit_partitions() p
    WHERE at >= COALESCE(p.lo, '-infinity') AND at < p.hi;
    IF existing IS NOT NULL THEN
        RETURN existing;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_records FOR VALUES FROM (%L) TO (%L)',
                   name, month_start, month_start + interval '1 month');
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only()',
                   name || '_no_truncate', name);
    RETURN name;
END
$$;
REVOKE ALL ON FUNCTION audit_partition_ensure(timestamptz) FROM PUBLIC;

-- Purges logged and not yet carried out. A purge is logged first and carried out only once a
-- signed checkpoint covers its entry: an export reaches at least that checkpoint, so it holds the
-- entry that explains every record it finds gone (docs/retention.md, "Log first, delete after").
-- One row per purge entry: the record ids of a batch, or a partition to drop whole (entry NULL
-- for an empty partition: nothing of the log's goes).
CREATE TABLE purge_pending (
    id        bigserial PRIMARY KEY,
    entry_id  bigint UNIQUE,
    records   bigint[],
    partition text UNIQUE,
    CHECK ((records IS NULL) <> (partition IS NULL)),
    CHECK (records IS NULL OR entry_id IS NOT NULL)
);

-- The retention purge, the one way records are ever deleted, first step: one bounded batch
-- logged. Walks records in (received_at, id) order after the cursor (`after_at`, `after_id`) and
-- before the latest cutoff, at most `max_rows` of them, and names those received before their
-- kind's cutoff (`cutoffs`: kind -> timestamptz; a kind absent or null is kept forever) that no
-- hold covers, the log already holds and no pending purge names, in a purge entry (`policy`
-- recorded in it as given) and in purge_pending; audit_purge_apply deletes them once a checkpoint
-- covers the entry. Returns how many records it examined and named, and where the next batch
-- starts (NULL when it reached the end).
CREATE FUNCTION audit_purge(cutoffs jsonb, policy jsonb, after_at timestamptz, after_id bigint,
                            max_rows integer)
RETURNS TABLE (examined bigint, named bigint, next_at timestamptz, next_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET jit = off AS $$
DECLARE
    latest timestamptz := (SELECT max((value #>> '{}')::timestamptz)
                           FROM jsonb_each(cutoffs) WHERE jsonb_typeof(value) = 'string');
    last_at timestamptz;
    last_id bigint;
    ids     bigint[];
    entry   bigint;
BEGIN
    examined := 0;
    named := 0;
    IF latest IS NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    WITH walked AS MATERIALIZED (
        SELECT r.id, r.received_at, r.kind, r.correlation_id, r.tableoid
        FROM audit_records r
        WHERE (r.received_at, r.id) > (COALESCE(after_at, '-infinity'), COALESCE(after_id, 0))
          AND r.received_at < latest
        ORDER BY r.received_at, r.id
        LIMIT max_rows
    ), pending AS (
        SELECT unnest(p.records) AS id FROM purge_pending p WHERE p.records IS NOT NULL
    ), doomed AS (
        SELECT w.id FROM walked w
        WHERE w.received_at < (cutoffs ->> w.kind)::timestamptz
          AND NOT EXISTS (SELECT 1 FROM legal_holds h
                          WHERE h.correlation_id = w.correlation_id AND h.released_at IS NULL)
          -- Only a record the log holds: one removed before its leaf was appended would never
          -- be in the log (it goes at a later purge).
          AND EXISTS (SELECT 1 FROM tlog_leaves l WHERE l.record_id = w.id)
          -- Not twice: named by a batch, or in a partition to be dropped, not yet carried out.
          AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.id = w.id)
          AND NOT EXISTS (SELECT 1 FROM purge_pending p
                          WHERE p.partition IS NOT NULL AND to_regclass(p.partition) = w.tableoid)
    ), last AS (
        SELECT w.received_at, w.id FROM walked w ORDER BY w.received_at DESC, w.id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM walked),
           (SELECT array_agg(d.id ORDER BY d.id) FROM doomed d),
           (SELECT l.received_at FROM last l), (SELECT l.id FROM last l)
    INTO examined, ids, last_at, last_id;
    IF ids IS NOT NULL THEN
        INSERT INTO log_entries (kind, body)
        VALUES ('purge', jsonb_build_object(
                    'reason', 'retention', 'policy', policy, 'cutoffs', cutoffs,
                    'count', cardinality(ids), 'records', to_jsonb(ids)))
        RETURNING id INTO entry;
        INSERT INTO purge_pending (entry_id, records) VALUES (entry, ids);
        named := cardinality(ids);
    END IF;
    IF examined = max_rows THEN
        next_at := last_at;
        next_id := last_id;
    END IF;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION audit_purge(jsonb, jsonb, timestamptz, bigint, integer) FROM PUBLIC;

-- Placing a hold and carrying out a purge exclude each other (a transaction-scoped advisory lock).
CREATE FUNCTION audit_holds_lock() RETURNS void LANGUAGE sql AS
    $$ SELECT pg_advisory_xact_lock(7234893271234002) $$;

-- The month partition `name` logged for a drop, when every record in it is past its kind's cutoff,
-- the log holds each and no hold covers any: a purge entry (the partition's range, its records'
-- count and their ids as ranges) and a purge_pending row; audit_purge_apply drops it once a
-- checkpoint covers the entry. Returns the records it holds, or NULL when it is not to be dropped
-- (or already pending).
CREATE FUNCTION audit_purge_partition(name text, cutoffs jsonb, policy jsonb)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part      regclass;
    bounds    text;
    blocking  boolean;
    n         bigint;
    entry     bigint;
BEGIN
    SELECT c.oid, pg_get_expr(c.relpartbound, c.oid) INTO part, bounds
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_records'::regclass AND c.relname = name;
    IF part IS NULL OR EXISTS (SELECT 1 FROM purge_pending p WHERE p.partition = name) THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM %s r WHERE r.received_at >= COALESCE((%L::jsonb ->> r.kind)::timestamptz, ''-infinity'')
                        OR EXISTS (SELECT 1 FROM legal_holds h
                                   WHERE h.correlation_id = r.correlation_id AND h.released_at IS NULL)
                        OR NOT EXISTS (SELECT 1 FROM tlog_leaves l WHERE l.record_id = r.id))',
        part, cutoffs) INTO blocking;
    IF blocking THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', part) INTO n;
    -- Its records' ids as ranges: runs of consecutive ids, joined across gaps where no record
    -- of another partition lies (ids skipped by duplicates, the log's own entries), so that a
    -- range names exactly this partition's records among those stored.
    -- An empty partition goes without an entry: nothing of the log's is removed.
    IF n > 0 THEN
    EXECUTE format(
        'INSERT INTO log_entries (kind, body)
         WITH islands AS (
             SELECT min(id) AS lo, max(id) AS hi
             FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS run FROM %1$s) t
             GROUP BY run
         ), breaks AS (
             SELECT lo, hi,
                    (i.prev_hi IS NULL
                     OR EXISTS (SELECT 1 FROM audit_records r
                                WHERE r.id > i.prev_hi AND r.id < i.lo AND r.tableoid <> %2$s::oid))::int AS starts
             FROM (SELECT lo, hi, lag(hi) OVER (ORDER BY lo) AS prev_hi FROM islands) i
         ), ranges AS (
             SELECT min(lo) AS lo, max(hi) AS hi
             FROM (SELECT lo, hi, sum(starts) OVER (ORDER BY lo) AS grp FROM breaks) b
             GROUP BY grp
         )
         SELECT ''purge'', jsonb_build_object(
                    ''reason'', ''retention'', ''policy'', %3$L::jsonb, ''cutoffs'', %4$L::jsonb,
                    ''partition'', jsonb_build_object(''name'', %5$L, ''bounds'', %6$L),
                    ''count'', (SELECT count(*) FROM %1$s),
                    ''ranges'', COALESCE((SELECT jsonb_agg(jsonb_build_array(lo, hi) ORDER BY lo) FROM ranges), ''[]''::jsonb))
         RETURNING id',
        part, part::oid, policy, cutoffs, name, bounds) INTO entry;
    END IF;
    INSERT INTO purge_pending (entry_id, partition) VALUES (entry, name);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION audit_purge_partition(text, jsonb, jsonb) FROM PUBLIC;

-- The retention purge, second step: the oldest pending purge after `after_pending`, and not in
-- `skip`, whose entry a signed checkpoint covers, carried out. A batch: its records that no hold covers now are deleted
-- with their digests. A partition: dropped with its digests, unless a hold now covers one of its
-- records (then it is left, and its unheld records go by batches later); the drop waits at most
-- `lock_wait_ms` for the partitioned table's lock (writers wait behind it meanwhile), else it
-- stays pending (`deferred`). Returns no row when nothing pending is covered yet.
CREATE FUNCTION audit_purge_apply(after_pending bigint, skip bigint[], lock_wait_ms integer)
RETURNS TABLE (pending bigint, deleted bigint, dropped boolean, deferred boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET jit = off AS $$
DECLARE
    p        purge_pending;
    signed   bigint := (SELECT max(tree_size) FROM tlog_checkpoints);
    digests  bytea[];
    part     regclass;
    held     boolean;
BEGIN
    SELECT * INTO p FROM purge_pending q
    WHERE q.id > after_pending AND q.id <> ALL (skip)
      AND (q.entry_id IS NULL
           OR EXISTS (SELECT 1 FROM tlog_leaves l
                      WHERE l.record_id = q.entry_id AND l.log_index < signed))
    ORDER BY q.id LIMIT 1;
    IF p.id IS NULL THEN
        RETURN;
    END IF;
    pending := p.id;
    deleted := 0;
    dropped := false;
    deferred := false;
    PERFORM audit_holds_lock();
    IF p.records IS NOT NULL THEN
        PERFORM set_config('datastorage.purge', 'on', true);
        WITH gone AS (
            DELETE FROM audit_records r
            WHERE r.id = ANY (p.records)
              AND NOT EXISTS (SELECT 1 FROM legal_holds h
                              WHERE h.correlation_id = r.correlation_id AND h.released_at IS NULL)
            RETURNING r.content_digest
        )
        SELECT array_agg(g.content_digest) INTO digests FROM gone g;
        PERFORM set_config('datastorage.purge', 'off', true);
        -- By primary key (a join here planned a scan of every digest per batch).
        DELETE FROM audit_digests WHERE content_digest = ANY (digests);
        deleted := COALESCE(cardinality(digests), 0);
        DELETE FROM purge_pending WHERE id = p.id;
        RETURN NEXT;
        RETURN;
    END IF;
    part := to_regclass(p.partition);
    IF part IS NULL THEN
        DELETE FROM purge_pending WHERE id = p.id;
        RETURN NEXT;
        RETURN;
    END IF;
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM %s r JOIN legal_holds h ON h.correlation_id = r.correlation_id
                        WHERE h.released_at IS NULL)', part) INTO held;
    IF held THEN
        DELETE FROM purge_pending WHERE id = p.id;
        RETURN NEXT;
        RETURN;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', part) INTO deleted;
    PERFORM set_config('lock_timeout', lock_wait_ms || 'ms', true);
    BEGIN
        EXECUTE format('DELETE FROM audit_digests a USING %s r WHERE a.content_digest = r.content_digest', part);
        EXECUTE format('DROP TABLE %s', part);
        DELETE FROM purge_pending WHERE id = p.id;
        dropped := true;
    EXCEPTION WHEN lock_not_available THEN
        deleted := 0;
        deferred := true;
    END;
    PERFORM set_config('lock_timeout', '0', true);
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION audit_purge_apply(bigint, bigint[], integer) FROM PUBLIC;

-- This month and the next three (contract §9); the maintenance task keeps it so.
SELECT audit_partition_ensure(now() + make_interval(months => m)) FROM generate_series(0, 3) m;

-- The runtime role: records and digests read and appended; holds placed and released; entries
-- appended (by the functions that own them, and holds by the service); partitions ensured.
GRANT SELECT, INSERT ON audit_records, audit_digests, log_entries TO datastorage_runtime;
GRANT UPDATE (embedding_id, embedding_digest) ON audit_records TO datastorage_runtime;
GRANT SELECT, INSERT ON legal_holds TO datastorage_runtime;
GRANT SELECT ON purge_pending TO datastorage_runtime;
GRANT UPDATE (released_by, released_at, release_reason) ON legal_holds TO datastorage_runtime;
GRANT USAGE, SELECT ON SEQUENCE legal_holds_id_seq TO datastorage_runtime;
GRANT EXECUTE ON FUNCTION audit_partitions(),
                          audit_partition_ensure(timestamptz),
                          audit_purge(jsonb, jsonb, timestamptz, bigint, integer),
                          audit_purge_partition(text, jsonb, jsonb),
                          audit_purge_apply(bigint, bigint[], integer),
                          audit_holds_lock()
    TO datastorage_runtime;
