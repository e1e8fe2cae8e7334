INSERT INTO services (id, service, pattern) VALUES
    (1, 'sync-1.1', '{node}/1.1/{uid}'),
    (2, 'sync-1.5', '{node}/1.5/{uid}');
