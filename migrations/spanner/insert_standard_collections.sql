-- The standard collections with the ids every syncstorage database uses; custom collections
-- get ids from 101.
INSERT INTO collections (collection_id, name) VALUES
  (1, 'clients'), (2, 'crypto'), (3, 'forms'), (4, 'history'), (5, 'keys'), (6, 'meta'),
  (7, 'bookmarks'), (8, 'prefs'), (9, 'tabs'), (10, 'passwords'), (11, 'addons'),
  (12, 'addresses'), (13, 'creditcards')
