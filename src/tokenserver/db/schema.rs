//! The tokenserver tables (SPEC 3.8), one diesel schema for every engine: the column types are
//! the same on SQLite, MySQL and PostgreSQL.

diesel::table! {
    services (id) {
        id -> Integer,
        service -> Nullable<Text>,
        pattern -> Nullable<Text>,
    }
}

diesel::table! {
    nodes (id) {
        id -> BigInt,
        service -> Integer,
        node -> Text,
        available -> Integer,
        current_load -> Integer,
        capacity -> Integer,
        downed -> Integer,
        backoff -> Integer,
    }
}

diesel::table! {
    users (uid) {
        uid -> BigInt,
        service -> Integer,
        email -> Text,
        generation -> BigInt,
        client_state -> Text,
        created_at -> BigInt,
        replaced_at -> Nullable<BigInt>,
        nodeid -> BigInt,
        keys_changed_at -> Nullable<BigInt>,
    }
}
