.PHONY: run test lint fmt build ci

run:
	cargo run --release

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
