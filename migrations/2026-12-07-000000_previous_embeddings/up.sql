-- Both models searchable until the switch (docs/embeddings.md, "Changing the model").
--
-- `datastorage reembed` points each record at the new model (embedding_digest, embedding_id NULL
-- until the new vector is stored) and keeps its link to the vector of the model it came from here,
-- so that replicas still running the old model find it while the new one is rolled out and its
-- workers embed the backlog. `datastorage reembed --finish`, once every replica runs the new model,
-- drops these links and the vectors no record links any more.
--
-- At most one per record, and never of the model the record points at: a record re-pointed twice
-- before the switch keeps the link it had last (its newest vector), and one pointed back at the
-- model of its kept link loses the kept link, which is its current one again.
CREATE TABLE previous_embeddings (
    record_id    bigint      PRIMARY KEY,
    -- The record's partition key: a search reads the record by (id, received_at), one partition.
    received_at  timestamptz NOT NULL,
    embedding_id bigint      NOT NULL REFERENCES embeddings (id)
);
-- A search walks vectors nearest first and finds the records linked to each: through
-- audit_records_embedding_id, and here.
CREATE INDEX previous_embeddings_embedding ON previous_embeddings (embedding_id);

-- The runtime role keeps these links, and deletes vectors of a model no longer in use that no
-- record links (the foreign keys refuse the deletion of any other).
GRANT SELECT, INSERT, UPDATE, DELETE ON previous_embeddings TO datastorage_runtime;
GRANT DELETE ON embeddings TO datastorage_runtime;
