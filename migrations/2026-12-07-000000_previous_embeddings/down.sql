-- Records keep their current link only: replicas on an earlier model no longer find records
-- re-pointed at another one.
REVOKE DELETE ON embeddings FROM datastorage_runtime;
DROP TABLE previous_embeddings;
