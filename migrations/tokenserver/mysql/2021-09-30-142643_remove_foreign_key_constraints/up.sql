-- Operators edit these tables by hand; the rows reference each other by convention only.
ALTER TABLE nodes DROP FOREIGN KEY nodes_ibfk_1;
ALTER TABLE users DROP FOREIGN KEY users_ibfk_1;
