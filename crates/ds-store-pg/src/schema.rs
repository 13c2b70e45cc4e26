//! diesel's view of the tables of `migrations/`.

diesel::table! {
    use diesel::sql_types::*;
    use crate::pgv::Vector;

    embeddings (id) {
        id -> Int8,
        digest -> Bytea,
        model -> Text,
        embedding -> Vector,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    audit_records (id) {
        id -> Int8,
        kind -> Text,
        name -> Text,
        namespace -> Text,
        phase -> Text,
        correlation_id -> Text,
        message -> Nullable<Text>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        received_at -> Timestamptz,
        content_digest -> Bytea,
        details -> Jsonb,
        unknown_fields -> Jsonb,
        embedding_digest -> Bytea,
        embedding_id -> Nullable<Int8>,
        leaf_hash -> Nullable<Bytea>,
    }
}

diesel::table! {
    idempotency_keys (caller, key) {
        caller -> Text,
        key -> Text,
        request_digest -> Bytea,
        outcomes -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(audit_records -> embeddings (embedding_id));
diesel::allow_tables_to_appear_in_same_query!(
    audit_records,
    embeddings,
    idempotency_keys,
    embedding_jobs
);

diesel::table! {
    embedding_jobs (digest) {
        digest -> Bytea,
        model -> Text,
        text -> Text,
        attempts -> Int4,
        created_at -> Timestamptz,
        next_attempt_at -> Timestamptz,
        leased_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        parked_at -> Nullable<Timestamptz>,
        done_at -> Nullable<Timestamptz>,
    }
}
