-- Reserved so that custom collections get ids from 101, as upstream.
INSERT IGNORE INTO `collections` (`id`, `name`) VALUES (100, '');
