#!/usr/bin/env bash
# Two broker processes on one Redis, and a backend writing straight into Redis (XADD).
set -euo pipefail
export UNBROKEN_REDIS_URL=${UNBROKEN_REDIS_URL:-redis://127.0.0.1:6379/0}
(umask 077; echo "k1:$(openssl rand -hex 32)" > unbroken.key)  # a file, not an argument: `ps` shows those
export UNBROKEN_ADMIN_TOKEN="$(openssl rand -hex 16)"          # admin routes are off without one
python -m broker serve --redis "$UNBROKEN_REDIS_URL" --secret-file unbroken.key --workers 2 &
trap 'kill $!' EXIT
broker=http://localhost:${UNBROKEN_PORT:-8080}
until curl -sf "$broker/healthz" >/dev/null; do sleep 0.2; done

token=$(curl -sf -X POST "$broker/v1/channels" | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["channel_token"]))')
# The backend verifies the token with the same key ring, then writes via XADD:
UNBROKEN_SECRET=$(cat unbroken.key) python examples/readme/write_channel.py "$token"
python -m client_sdk tail "$broker" "$token"   # {"a": 1} and {"a": 2}; the end goes to stderr
python -m broker channels --broker "$broker"   # the admin view (reads UNBROKEN_ADMIN_TOKEN)
