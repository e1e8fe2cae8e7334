-- The storage tables as syncstorage-rs's MySQL migrations leave them (SPEC 5.1), created in
-- one step. The migration versions match upstream's, so a database syncstorage-rs created is
-- recognised as fully migrated and left alone; the later versions are no-ops here.
-- BSO ids are VARBINARY: case-sensitive and without trailing-space padding ("a" != "a ").
CREATE TABLE IF NOT EXISTS `bso` (
    `userid` BIGINT NOT NULL,
    `collection` INT NOT NULL,
    `id` VARBINARY(64) NOT NULL,
    `sortindex` INT,
    `payload` MEDIUMTEXT NOT NULL,
    `payload_size` INT DEFAULT 0,
    -- last modified time in milliseconds since epoch
    `modified` BIGINT NOT NULL,
    -- expiry in milliseconds since epoch
    `ttl` BIGINT NOT NULL,
    PRIMARY KEY (`userid`, `collection`, `id`),
    KEY `bso_expiry_idx` (`ttl`),
    KEY `bso_usr_col_mod_idx` (`userid`, `collection`, `modified`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS `collections` (
    `id` INT PRIMARY KEY NOT NULL AUTO_INCREMENT,
    `name` VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin UNIQUE NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT IGNORE INTO `collections` (`id`, `name`) VALUES
    (1, 'clients'), (2, 'crypto'), (3, 'forms'), (4, 'history'), (5, 'keys'), (6, 'meta'),
    (7, 'bookmarks'), (8, 'prefs'), (9, 'tabs'), (10, 'passwords'), (11, 'addons'),
    (12, 'addresses'), (13, 'creditcards');

CREATE TABLE IF NOT EXISTS `user_collections` (
    `userid` BIGINT NOT NULL,
    `collection` INT NOT NULL,
    -- last modified time in milliseconds since epoch
    `last_modified` BIGINT NOT NULL,
    `total_bytes` BIGINT,
    `count` INT,
    PRIMARY KEY (`userid`, `collection`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS `batch_uploads` (
    `batch` BIGINT NOT NULL,
    `userid` BIGINT NOT NULL,
    `collection` INT NOT NULL,
    PRIMARY KEY (`batch`, `userid`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS `batch_upload_items` (
    `batch` BIGINT NOT NULL,
    `userid` BIGINT NOT NULL,
    `id` VARBINARY(64) NOT NULL,
    `sortindex` INT DEFAULT NULL,
    `payload` MEDIUMTEXT,
    `payload_size` INT DEFAULT NULL,
    `ttl_offset` INT DEFAULT NULL,
    PRIMARY KEY (`batch`, `userid`, `id`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
