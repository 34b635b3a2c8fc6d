#!/usr/bin/env bash
# Fuzzes the JSON API against its own OpenAPI document (issue 16): schemathesis generates requests
# from /api/openapi.json, valid and invalid ones, and fails on any 5xx and on any response whose
# status code, content type, headers or body the document does not describe.
#
# The server is a fresh one on a free loopback port with a throw-away data directory, requiring
# tokens; its trainer executable is /bin/false, so every run it launches fails at once (the fuzzer
# tests the API, not training). The never-ending SSE streams (`…/events`) are skipped.
#
# Environment: CRT_SERVER_BIN (default target/debug/crt-server, built if missing),
# CRT_FUZZ_SECONDS (time budget of the main pass, default 90), CRT_FUZZ_SEED (default 16),
# CRT_FUZZ_DATABASE_URL (an empty database to use instead of the throw-away SQLite file, e.g. a
# fresh Postgres database; it is filled by the fuzzer).
# Prints the number of requests sent; exits non-zero on any failure or when fewer than 2,000
# requests were sent. Reports (JUnit, NDJSON) are left in target/fuzz-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

venv=$root/target/py-venv

server_bin=${CRT_SERVER_BIN:-$root/target/debug/crt-server}
seconds=${CRT_FUZZ_SECONDS:-90}
seed=${CRT_FUZZ_SEED:-16}
min_requests=2000
report=$root/target/fuzz-report
database_url=${CRT_FUZZ_DATABASE_URL:-}

# One venv for the project's Python test tools (scripts/py-venv.sh).
"$root/scripts/py-venv.sh" >/dev/null
[ -x "$server_bin" ] || cargo build -p crt-server --bin crt-server

work=$(mktemp -d)
db_flags=()
[ -n "$database_url" ] && db_flags=(--database-url "$database_url")
server_pid=""
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ] && [ -f "$work/server.log" ]; then
    echo "--- last lines of the server log"
    tail -n 30 "$work/server.log" || true
  fi
  rm -rf "$work"
  return "$rc"
}
trap cleanup EXIT

# Tokens, when this server has them: a write token for the whole API (the token routes answer it
# 403), an admin token for a second pass over the token routes.
auth_flags=()
write_header=()
admin_token=""
if "$server_bin" --help | grep -qE '^\s+token\s'; then
  mk_token() { "$server_bin" token create --scope "$1" --name "fuzz-$1" --data-dir "$work/data" "${db_flags[@]}"; }
  write_header=(-H "Authorization: Bearer $(mk_token write)")
  admin_token=$(mk_token admin)
  auth_flags=(--require-auth)
else
  echo "note: this crt-server has no tokens yet; fuzzing without authentication"
fi

"$server_bin" --bind 127.0.0.1:0 --data-dir "$work/data" "${db_flags[@]}" --trainer-bin /bin/false "${auth_flags[@]}" \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
addr=""
for _ in $(seq 300); do
  addr=$(sed -n 's/^crt-server listening on http:\/\/\(.*\)$/\1/p' "$work/server.out" | head -1)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "crt-server exited before listening"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "crt-server did not print its address within 30 s"; exit 1; }
base=http://$addr
echo "crt-server on $base (data in $work/data)"

# Something to find, so that id 1 exists for every resource: a CRT study (experiment 1 with its
# runs, which fail at once), a plain experiment and a run in it.
seed_auth=${write_header[1]:-}
seed_api() {
  "$venv/bin/python" - "$base$1" "$2" "${seed_auth#Authorization: }" <<'PY'
import sys, urllib.request
url, body, auth = sys.argv[1:4]
headers = {"Content-Type": "application/json"}
if auth:
    headers["Authorization"] = auth
urllib.request.urlopen(urllib.request.Request(url, data=body.encode(), headers=headers), timeout=30).read()
PY
}
seed_api /api/v1/studies '{"name": "fuzz study", "teacher": {"arch": "mlp", "method": {"name": "gaussian", "sigma": 0.25},
  "epochs": 1}, "students": ["linear"], "train_subset": 100, "test_subset": 100, "certify": {"n0": 10, "n": 100, "max": 5}}'
seed_api /api/v1/experiments '{"name": "fuzz", "description": "seeded by scripts/fuzz.sh", "tags": ["fuzz"]}'
seed_api /api/v1/runs '{"experiment_id": 2, "config": {"kind": "train", "arch": "mlp",
  "data": {"dataset": "mnist", "train_subset": 100, "test_subset": 100},
  "method": {"name": "gaussian", "sigma": 0.25}, "optim": {"epochs": 1}}}'

rm -rf "$report"
mkdir -p "$report"
st() {
  local name=$1
  shift
  # From the throw-away directory: hypothesis and schemathesis leave caches in the working directory.
  (cd "$work" && "$venv/bin/schemathesis" run "$base/api/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --exclude-path-regex '/events$' \
    --seed "$seed" --generation-database none --max-response-time 15 --request-timeout 30 \
    --no-color --report junit,ndjson --report-junit-path "$report/$name.xml" --report-ndjson-path "$report/$name.ndjson" \
    "$@")
}

# Requests actually sent: the interactions the NDJSON report recorded.
count_requests() {
  "$venv/bin/python" - "$@" <<'EOF'
import json, sys
n = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if finished:
                n += len(finished.get("recorder", {}).get("interactions", {}))
print(n)
EOF
}

t0=$SECONDS
rc=0
echo "== schemathesis: the API with a write token (${seconds} s)"
st api --max-examples 200 --max-time "$seconds" "${write_header[@]}" || rc=$?
reports=("$report/api.ndjson")
if [ -n "$admin_token" ]; then
  echo "== schemathesis: the token routes with an admin token"
  st tokens --include-path-regex '^/api/v1/tokens' --max-examples 100 --max-time 20 \
    -H "Authorization: Bearer $admin_token" || rc=$?
  reports+=("$report/tokens.ndjson")
fi
requests=$(count_requests "${reports[@]}")
echo "API fuzz: $requests generated requests in $((SECONDS - t0)) s (seed $seed); reports in $report"
if [ "$rc" != 0 ]; then
  echo "API fuzz FAILED: see the failures above"
  exit "$rc"
fi
if [ "$requests" -lt "$min_requests" ]; then
  echo "API fuzz FAILED: only $requests requests (at least $min_requests wanted)"
  exit 1
fi
echo "API fuzz passed: no 5xx, every response as documented"
