ALTER TABLE users DROP KEY nodeid;
