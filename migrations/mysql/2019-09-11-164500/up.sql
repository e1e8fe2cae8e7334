-- Upstream's schema change of this version is part of the init migration here.
SELECT 1;
