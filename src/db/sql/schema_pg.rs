//! The PostgreSQL tables of syncstorage-rs (SPEC 5.2) under the Rust names of `schema.rs`, so
//! the shared operations run on them unchanged. Timestamps are `TIMESTAMPTZ` (`Millis`).

use super::pg_types::Millis;

diesel::table! {
    use diesel::sql_types::*;
    collections (id) {
        #[sql_name = "collection_id"]
        id -> Integer,
        name -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Millis;
    user_collections (userid, collection) {
        #[sql_name = "user_id"]
        userid -> BigInt,
        #[sql_name = "collection_id"]
        collection -> Integer,
        #[sql_name = "modified"]
        last_modified -> Millis,
        /// BIGINT in the table; an INT bind is widened on assignment.
        count -> Nullable<Integer>,
        total_bytes -> Nullable<BigInt>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Millis;
    #[sql_name = "bsos"]
    bso (userid, collection, id) {
        #[sql_name = "user_id"]
        userid -> BigInt,
        #[sql_name = "collection_id"]
        collection -> Integer,
        #[sql_name = "bso_id"]
        id -> Text,
        sortindex -> Nullable<Integer>,
        payload -> Text,
        modified -> Millis,
        #[sql_name = "expiry"]
        ttl -> Millis,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Millis;
    batches (user_id, collection_id, batch_id) {
        user_id -> BigInt,
        collection_id -> Integer,
        batch_id -> Uuid,
        expiry -> Millis,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    batch_bsos (user_id, collection_id, batch_id, batch_bso_id) {
        user_id -> BigInt,
        collection_id -> Integer,
        batch_id -> Uuid,
        batch_bso_id -> Text,
        sortindex -> Nullable<Integer>,
        payload -> Nullable<Text>,
        ttl -> Nullable<BigInt>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    collections,
    user_collections,
    bso,
    batches,
    batch_bsos
);
