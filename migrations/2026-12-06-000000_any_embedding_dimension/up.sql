-- The vector column takes any dimension: the dimension is the deployment's (`embedding.dimension`),
-- and while the service moves to another model (`datastorage reembed`) the vectors of both models,
-- of whatever dimensions, live side by side.
--
-- An HNSW index needs one dimension, so each dimension in use has its own partial expression index,
-- `embeddings_hnsw_<dimension>` over `embedding::vector(<dimension>)` for the rows of that dimension.
-- `datastorage migrate` (and start-up with `database.migrate_on_start`) makes the one of the
-- configured dimension after the migrations (ds_store_pg::ensure_vector_index); searches name the
-- same expression and predicate.
DROP INDEX embeddings_embedding_hnsw;
ALTER TABLE embeddings ALTER COLUMN embedding TYPE vector;
