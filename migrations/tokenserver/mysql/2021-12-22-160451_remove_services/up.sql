-- Upstream dropped its seeded rows here; the next migration seeds sync-1.5 again.
DELETE FROM services WHERE id = 1 OR id = 2;
