#!/usr/bin/env bash
# Open a channel, write to it with its write token, end it, then read it back over SSE.
set -euo pipefail
broker=${UNBROKEN_URL:-http://localhost:8080}
opened=$(curl -sf -X POST "$broker/v1/channels")   # {id, read_token, channel_token, urls, ...}
field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)" <<<"$opened"; }
id=$(field '["id"]') read_token=$(field '["read_token"]') write_token=$(field '["channel_token"]["token"]')

curl -sf "$broker/v1/channels/$id/messages" -H "Authorization: Bearer $write_token" \
  -H 'Content-Type: application/json' -d '{"messages": [{"a": 1}, {"a": 2}]}' >/dev/null
curl -sf "$broker/v1/channels/$id/end" -H "Authorization: Bearer $write_token" \
  -H 'Content-Type: application/json' -d '{"data": {"a": 5}}' >/dev/null

curl -sN "$broker/v1/channels/$id/events?token=$read_token"   # SSE; stays open until the end
