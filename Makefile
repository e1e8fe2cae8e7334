.PHONY: run run_mysql run_postgres test lint fmt build ci

MYSQL_URL ?= mysql://root@127.0.0.1:3306/syncstorage
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/syncstorage

run:
	cargo run --release

# A local MySQL/MariaDB server (root, no password) with a `syncstorage` database.
run_mysql:
	mysql --protocol=tcp -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS syncstorage"
	SYNC_SYNCSTORAGE__DATABASE_URL=$(MYSQL_URL) cargo run --release

# A local PostgreSQL server (postgres, trust auth) with a `syncstorage` database.
run_postgres:
	psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'syncstorage'" | grep -q 1 \
	  || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE syncstorage"
	SYNC_SYNCSTORAGE__DATABASE_URL=$(POSTGRES_URL) cargo run --release

test:
	cargo test

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt

build:
	cargo build --release

ci:
	.ci/run
