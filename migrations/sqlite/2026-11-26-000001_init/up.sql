-- Storage tables in the MySQL layout of syncstorage-rs (SPEC 5.1): integer ms timestamps,
-- `ttl` holds the absolute expiry in ms, collection id 0 in user_collections is the tombstone
-- that keeps the storage timestamp from going backwards after a collection delete.
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY NOT NULL,
    name VARCHAR(32) NOT NULL UNIQUE
);

INSERT OR IGNORE INTO collections (id, name) VALUES
    (1, 'clients'), (2, 'crypto'), (3, 'forms'), (4, 'history'), (5, 'keys'), (6, 'meta'),
    (7, 'bookmarks'), (8, 'prefs'), (9, 'tabs'), (10, 'passwords'), (11, 'addons'),
    (12, 'addresses'), (13, 'creditcards'),
    -- Reserved so that custom collections get ids from 101, as upstream.
    (100, '');

CREATE TABLE IF NOT EXISTS user_collections (
    userid BIGINT NOT NULL,
    collection INTEGER NOT NULL,
    last_modified BIGINT NOT NULL,
    count INTEGER,
    total_bytes BIGINT,
    PRIMARY KEY (userid, collection)
);

CREATE TABLE IF NOT EXISTS bso (
    userid BIGINT NOT NULL,
    collection INTEGER NOT NULL,
    id VARCHAR(64) NOT NULL,
    sortindex INTEGER,
    payload TEXT NOT NULL,
    payload_size INTEGER NOT NULL DEFAULT 0,
    modified BIGINT NOT NULL,
    ttl BIGINT NOT NULL,
    PRIMARY KEY (userid, collection, id)
);

CREATE INDEX IF NOT EXISTS bso_ttl_idx ON bso (ttl);
CREATE INDEX IF NOT EXISTS bso_usr_col_mod_idx ON bso (userid, collection, modified);

CREATE TABLE IF NOT EXISTS batch_uploads (
    batch BIGINT NOT NULL,
    userid BIGINT NOT NULL,
    collection INTEGER NOT NULL,
    PRIMARY KEY (batch, userid)
);

CREATE TABLE IF NOT EXISTS batch_upload_items (
    batch BIGINT NOT NULL,
    userid BIGINT NOT NULL,
    id VARCHAR(64) NOT NULL,
    sortindex INTEGER,
    payload TEXT,
    payload_size INTEGER,
    ttl_offset INTEGER,
    PRIMARY KEY (batch, userid, id)
);
