#!/usr/bin/env bash
# Keyward's one test command: installs what the tests need (idempotently), then runs every test.
#
#   scripts/test.sh
#
# What it does, in order:
#   1. system packages the suites use (PostgreSQL server, SoftHSM2, Chromium for the panel), via apt;
#   2. a Python virtual environment in .venv with the interop and API test requirements;
#   3. cargo fmt --check and cargo clippy -D warnings over the whole workspace;
#   4. every Rust test (SQLite and, through scripts/with-postgres.sh, a real PostgreSQL server);
#   5. the Python suites: python-fido2 against `keyward softkey` over UDP, schemathesis against the API.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

# --- 1. System packages ------------------------------------------------------------------------
need_pkgs=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v softhsm2-util >/dev/null 2>&1 || need_pkgs+=(softhsm2)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "Installing system packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# --- 2. Python test environment -----------------------------------------------------------------
step "Python test environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
reqs=()
for r in tests/*/requirements.txt; do [ -f "$r" ] && reqs+=(-r "$r"); done
if [ ${#reqs[@]} -gt 0 ]; then
  stamp=.venv/.requirements.sha256
  sum=$(cat tests/*/requirements.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    .venv/bin/pip install -q --disable-pip-version-check "${reqs[@]}"
    echo "$sum" > "$stamp"
  fi
fi

# --- 3. Formatting and lints --------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# --- 4. Rust tests (SQLite + real PostgreSQL) ---------------------------------------------------
step "Building binaries"
cargo build --workspace --bins --quiet
target_dir=${CARGO_TARGET_DIR:-$root/target}
export KEYWARD_BIN="$target_dir/debug/keyward"
export KEYWARD_PAIR_BIN="$target_dir/debug/keyward-pair"
export KEYWARD_GRAPH_SIM_BIN="$target_dir/debug/keyward-graph-sim"

step "Rust tests (SQLite and PostgreSQL)"
scripts/with-postgres.sh cargo test --workspace --quiet

# --- 5. Python suites against the real binaries -------------------------------------------------
# Each suite runs in its own pytest process: they have their own conftest and helper modules.
suites=()
for d in tests/*/; do
  ls "$d"test_*.py >/dev/null 2>&1 && suites+=("${d%/}")
done
if [ ${#suites[@]} -gt 0 ]; then
  step "Python suites: ${suites[*]}"
  scripts/with-postgres.sh bash -c '
    set -e
    for suite in "$@"; do
      printf "\n--- %s\n" "$suite"
      .venv/bin/python -m pytest -q -p no:cacheprovider "$suite"
    done' _ "${suites[@]}"
fi

step "All tests passed"
