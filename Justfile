# proxflow task runner. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

tools := justfile_directory() / ".tools"
export NATS_SERVER_BIN := env("NATS_SERVER_BIN", tools / "bin" / "nats-server")
export PATH := tools / "bin" + ":" + env("PATH")

# Run the whole pipeline locally: embedded nats-server and every service.
up *args: (_tools "nats")
    cargo run --release -p proxflow -- dev {{args}}

# Run every test (format, lints, unit, service and end-to-end tests).
test: (_tools "test")
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace

# Print the benchmark figures (runtime vs raw JetStream, workflow engine vs bare KV CAS, Proxmox simulator and client, ZFS replication, patching, lifecycle jobs, ...).
bench: (_tools "bench")
    cargo bench -p proxflow-e2e --bench bus
    cargo bench -p proxflow-pve --bench pve
    cargo bench -p proxflow-e2e --bench provision
    cargo bench -p proxflow-e2e --bench capacity
    cargo bench -p proxflow-e2e --bench replication
    cargo bench -p proxflow-e2e --bench workflow
    cargo bench -p proxflow-e2e --bench edge
    cargo bench -p proxflow-e2e --bench sim
    cargo bench -p proxflow-e2e --bench patch
    cargo bench -p proxflow-e2e --bench lifecycle
    cargo bench -p proxflow-e2e --bench console

# Regenerate schemas/json from the wire types.
schemas:
    cargo run -q -p proxflow -- schemas --out schemas/json

# Regenerate deploy/nats/accounts.conf (users and permissions) from the consumer table and subjects.
nats-accounts:
    cargo run -q -p proxflow -- nats-accounts --out deploy/nats/accounts.conf

# Format the code.
fmt:
    cargo fmt --all

# Lints only.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Install the tools a recipe needs into .tools/ (nats | zfs | test | bench | just).
tools what="test": (_tools what)

_tools what:
    deploy/dev/install-tools.sh {{what}}
