-- Back to vectors of 384 dimensions and the one index over the column. Refused (the ALTER fails)
-- while vectors of another dimension are stored: delete them first, or stay on this version.
DO $$
DECLARE i record;
BEGIN
    FOR i IN SELECT c.relname FROM pg_index x
             JOIN pg_class c ON c.oid = x.indexrelid
             JOIN pg_class t ON t.oid = x.indrelid
             WHERE t.oid = 'embeddings'::regclass AND c.relname ~ '^embeddings_hnsw_[0-9]+$'
    LOOP
        EXECUTE format('DROP INDEX %I', i.relname);
    END LOOP;
END $$;
ALTER TABLE embeddings ALTER COLUMN embedding TYPE vector(384);
CREATE INDEX embeddings_embedding_hnsw ON embeddings USING hnsw (embedding vector_cosine_ops);
