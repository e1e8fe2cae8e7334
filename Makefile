.PHONY: run run_mysql run_postgres run_spanner test lint fmt build ci fuzz bench check-arm64

MYSQL_URL ?= mysql://root@127.0.0.1:3306/syncstorage
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/syncstorage
SPANNER_URL ?= spanner://projects/test-project/instances/test-instance/databases/syncstorage
SPANNER_EMULATOR_HOST ?= 127.0.0.1:9010
SPANNER_EMULATOR_REST ?= http://127.0.0.1:9020

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

# The Cloud Spanner emulator (started here unless it already answers); the server creates
# the database and its schema at start-up.
run_spanner:
	curl -sf $(SPANNER_EMULATOR_REST)/v1/projects/test-project/instances >/dev/null \
	  || { (cd /usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator && nohup ./gateway_main \
	        --hostname 127.0.0.1 --grpc_port 9010 --http_port 9020 >/tmp/spanner-emulator.log 2>&1 &); sleep 3; }
	curl -s -X POST $(SPANNER_EMULATOR_REST)/v1/projects/test-project/instances \
	  -d '{"instanceId":"test-instance","instance":{"config":"emulator-config","displayName":"test","nodeCount":1}}' >/dev/null
	SYNC_SYNCSTORAGE__DATABASE_URL=$(SPANNER_URL) SYNC_SYNCSTORAGE__SPANNER_EMULATOR_HOST=$(SPANNER_EMULATOR_HOST) \
	  cargo run --release

test:
	cargo test

# The binary builds for 64-bit ARM (Raspberry Pi 4/5, ARM VPS): a cross check, no ARM machine
# needed. Needs Debian's gcc-aarch64-linux-gnu (bundled SQLite and ring compile C).
check-arm64:
	rustup target add aarch64-unknown-linux-gnu
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	  cargo check --release --locked --target aarch64-unknown-linux-gnu --bin syncserver

# The parser fuzz targets (tests/fuzz.rs) with 100x the cases `cargo test` runs.
fuzz:
	SYNC_FUZZ_CASES=2000000 cargo test --release --test fuzz

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt

build:
	cargo build --release

ci:
	.ci/run

# The load benchmark (bench/README.md): builds the release server and bench, then runs the
# workloads on a fresh database of BACKEND (sqlite, mysql, postgres). BASELINE=path/to/another
# syncserver binary runs it and this tree's server interleaved (A B A B) and prints the ratio.
BACKEND ?= sqlite
WORKLOAD ?= all
BASELINE ?=
BENCH_ARGS ?=
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BENCH_JSON ?= $(TARGET_DIR)/bench.json

bench:
	cargo build --release --bin syncserver --bin bench
	$(TARGET_DIR)/release/bench --backend $(BACKEND) --workload $(WORKLOAD) --json $(BENCH_JSON) \
	  $(if $(BASELINE),--server-bin $(BASELINE) --compare-bin $(TARGET_DIR)/release/syncserver,--server-bin $(TARGET_DIR)/release/syncserver) \
	  $(BENCH_ARGS)
