//! The diesel schema of the storage tables (MySQL layout, SPEC 5.1). One schema for every
//! SQL backend that uses this layout.

diesel::table! {
    collections (id) {
        id -> Integer,
        name -> Text,
    }
}

diesel::table! {
    user_collections (userid, collection) {
        userid -> BigInt,
        collection -> Integer,
        last_modified -> BigInt,
        count -> Nullable<Integer>,
        total_bytes -> Nullable<BigInt>,
    }
}

diesel::table! {
    bso (userid, collection, id) {
        userid -> BigInt,
        collection -> Integer,
        id -> Text,
        sortindex -> Nullable<Integer>,
        payload -> Text,
        payload_size -> Integer,
        modified -> BigInt,
        /// Absolute expiry in milliseconds.
        ttl -> BigInt,
    }
}

diesel::table! {
    batch_uploads (batch, userid) {
        batch -> BigInt,
        userid -> BigInt,
        collection -> Integer,
    }
}

diesel::table! {
    batch_upload_items (batch, userid, id) {
        batch -> BigInt,
        userid -> BigInt,
        id -> Text,
        sortindex -> Nullable<Integer>,
        payload -> Nullable<Text>,
        payload_size -> Nullable<Integer>,
        /// Seconds, relative to the commit.
        ttl_offset -> Nullable<Integer>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    collections,
    user_collections,
    bso,
    batch_uploads,
    batch_upload_items
);
