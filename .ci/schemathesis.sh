#!/usr/bin/env bash
# Checks the REST API against its OpenAPI document (src/api/rest/openapi.json):
#  1. openapi-spec-validator validates the document as written and as the hub serves it;
#  2. schemathesis generates requests from the served document against a running hub (the debug
#     binary `cargo test` built, a fresh SQLite database, free ports) and fails on any 5xx, any status
#     the document does not list and any response body that does not match its schema.
# The tools are pinned in .ci/requirements-schemathesis.txt and installed into a venv under
# $HOME/.cache/hivehub (rebuilt when the pins change). The whole step is bounded by `timeout`.
# For a longer local hunt: SCHEMATHESIS_MAX_EXAMPLES=200 SCHEMATHESIS_TIMEOUT=1200 bash .ci/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/hivehub/target}"
hub_bin="$target/debug/hivehub"
# `cargo test` has built it; build only when it is missing or older than the sources.
if [ ! -x "$hub_bin" ] || [ -n "$(find src migrations -newer "$hub_bin" -print -quit)" ]; then
    cargo build --locked
fi
venv="$HOME/.cache/hivehub/venv-schemathesis"
requirements=.ci/requirements-schemathesis.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2> /dev/null; then
    rm -rf "$venv"
    # Debian's python3 needs python3-venv for this; pyenv's and most others have it built in.
    python3 -m venv "$venv" || {
        rm -rf "$venv"
        apt-get install -y --no-install-recommends python3-venv > /dev/null && python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi

echo "-- openapi-spec-validator src/api/rest/openapi.json"
"$venv/bin/openapi-spec-validator" src/api/rest/openapi.json

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port/api/rest"
password="schemathesis-$RANDOM$RANDOM"
# Long polls answer at once unless asked to wait, and wait at most 1 s, so generated requests stay fast.
env HIVEHUB__HTTP__LISTEN="127.0.0.1:$port" \
    HIVEHUB__DATABASE__URL="sqlite://$work/hub.db" \
    HIVEHUB__MQTT__ENABLED=false \
    HIVEHUB__AUTH__ADMIN_PASSWORD="$password" \
    HIVEHUB__LIMITS__DEFAULT_WAIT_TIMEOUT_SECS=0 \
    HIVEHUB__LIMITS__MAX_WAIT_TIMEOUT_SECS=1 \
    bash -c 'cd "$1" && exec "$2" serve' hub "$work" "$hub_bin" > "$work/hub.log" 2>&1 &
hub_pid=$!
stop_hub() {
    kill "$hub_pid" 2> /dev/null || true
    wait "$hub_pid" 2> /dev/null || true
    rm -rf "$work"
}
trap stop_hub EXIT

# Waits for the hub, checks the served document, creates the objects .ci/schemathesis.toml names, and
# prints an admin access token.
token="$("$venv/bin/python" - "$base" "$password" "$work/served.json" <<'PY'
import json, sys, time, urllib.error, urllib.request

base, password, served_path = sys.argv[1:4]

def call(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
        return json.loads(text) if text else None

deadline = time.monotonic() + 60
while True:
    try:
        served = call("GET", "/openapi.json")
        break
    except (urllib.error.URLError, ConnectionError) as e:
        if time.monotonic() > deadline:
            sys.exit(f"the hub did not answer GET /openapi.json ({e}); its log:")
        time.sleep(0.1)
if served["servers"] != [{"url": base}]:
    sys.exit(f"served document names servers {served['servers']}, expected {base}")
with open(served_path, "w") as f:
    json.dump(served, f)

admin = call("POST", "/token", {"login": "dhadmin", "password": password})["accessToken"]
call("POST", "/network", {"name": "schemathesis network", "description": "second network"}, admin)
call("POST", "/devicetype", {"name": "schemathesis type"}, admin)
call("POST", "/user", {"login": "schemathesis-client", "password": "client-password", "role": 1}, admin)
call("PUT", "/user/2/network/1", None, admin)
call("PUT", "/configuration/schemathesis.entry", {"value": "seeded"}, admin)
for device in ["schemathesis-1", "schemathesis-2"]:
    call("PUT", f"/device/{device}", {"name": device, "networkId": 1, "deviceTypeId": 1, "data": {"k": 1}}, admin)
for device in ["e50d6085-2aba-48e9-b1c3-73c673e414be", "schemathesis-1"]:
    for i in range(3):
        call("POST", f"/device/{device}/notification", {"notification": f"n{i}", "parameters": {"i": i}}, admin)
        call("POST", f"/device/{device}/command", {"command": f"c{i}", "parameters": {"i": i}, "lifetime": 60}, admin)
call("PUT", "/device/e50d6085-2aba-48e9-b1c3-73c673e414be/command/1", {"status": "done", "result": {"ok": True}}, admin)
print(admin)
PY
)" || { cat "$work/hub.log"; exit 1; }

echo "-- openapi-spec-validator (the document as served)"
"$venv/bin/openapi-spec-validator" "$work/served.json"

# Two runs: the operations that can lock, demote or delete the admin whose token the run uses
# (updating or deleting users) go last, so they do not turn the other operations' tests into 401s.
self_harm='^/user/(current|\{id\})$'
# One worker: schemathesis' workers are threads, and CPython 3.11's parser can fail with "AST
# constructor recursion depth mismatch" when two of them describe strategies at once.
run_schemathesis() {
    timeout --kill-after=5 "${SCHEMATHESIS_TIMEOUT:-$1}" "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "$base/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-20}" --workers 1 --request-timeout 10 \
        --generation-database none --no-color --warnings off "${@:2}" || { echo "schemathesis failed; hub log:"; tail -50 "$work/hub.log"; exit 1; }
}
echo "-- schemathesis (every operation but user updates and deletes)"
run_schemathesis 130 --exclude-path-regex "$self_harm"
echo "-- schemathesis (user updates and deletes)"
run_schemathesis 40 --include-path-regex "$self_harm"
if grep -q 'panicked' "$work/hub.log"; then
    echo "the hub panicked:"
    grep -A5 'panicked' "$work/hub.log"
    exit 1
fi
