-- Tokenserver tables as syncstorage-rs's first MySQL migration created them (SPEC 3.8); the
-- migrations after it repeat upstream's steps under upstream's version names, so a database
-- syncstorage-rs created at any point of its history is recognised and completed.
CREATE TABLE IF NOT EXISTS services (
    id INT NOT NULL AUTO_INCREMENT,
    service VARCHAR(30) DEFAULT NULL,
    pattern VARCHAR(128) DEFAULT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY service (service)
);

CREATE TABLE IF NOT EXISTS nodes (
    id BIGINT NOT NULL AUTO_INCREMENT,
    service INT NOT NULL,
    node VARCHAR(64) NOT NULL,
    available INT NOT NULL DEFAULT 0,
    current_load INT NOT NULL DEFAULT 0,
    capacity INT NOT NULL DEFAULT 0,
    downed INT NOT NULL DEFAULT 0,
    backoff INT NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    KEY service (service),
    CONSTRAINT nodes_ibfk_1 FOREIGN KEY (service) REFERENCES services (id)
);

CREATE TABLE IF NOT EXISTS users (
    uid BIGINT NOT NULL AUTO_INCREMENT,
    service INT NOT NULL,
    email VARCHAR(255) NOT NULL,
    generation BIGINT NOT NULL,
    client_state VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL,
    replaced_at BIGINT DEFAULT NULL,
    nodeid BIGINT NOT NULL,
    keys_changed_at BIGINT DEFAULT NULL,
    PRIMARY KEY (uid),
    KEY nodeid (nodeid),
    CONSTRAINT users_ibfk_1 FOREIGN KEY (nodeid) REFERENCES nodes (id)
) DEFAULT CHARSET = utf8;
