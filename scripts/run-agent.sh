#!/usr/bin/env bash
# Sets up, then runs one agent serving the shipped freeciv template.
# The bearer token is generated once into $DATA_DIR/agent.token.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DATA_DIR=${GAMEPLANE_DATA_DIR:-/var/lib/gameplane/agent}
LISTEN=${GAMEPLANE_LISTEN:-127.0.0.1:7600}
mkdir -p "$DATA_DIR"
chmod 0711 "$DATA_DIR" "$(dirname "$DATA_DIR")"
TOKEN_FILE="$DATA_DIR/agent.token"
if [ ! -s "$TOKEN_FILE" ]; then
  (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$TOKEN_FILE")
fi
echo "agent: http://$LISTEN  token: $(cat "$TOKEN_FILE")"
exec .venv/bin/gameplane agent --template "${GAMEPLANE_TEMPLATE:-freeciv}" \
  --data-dir "$DATA_DIR" --listen "$LISTEN" --token-file "$TOKEN_FILE" "$@"
