#!/usr/bin/env bash
# The patcher's guest command over SSH (`patch.guest.transport = "command"`): runs the request's
# argv on the VM with sudo and exits with its exit code, as the JSON command contract asks.
# Arguments: {ip} {user} {request}; the request (JSON with "argv") is also on stdin.
set -euo pipefail
ip="$1"
user="$2"
request="$3"
mapfile -d '' argv < <(python3 -c 'import json, sys
for a in json.load(open(sys.argv[1]))["argv"]:
    sys.stdout.write(a + "\0")' "$request")
exec ssh -o BatchMode=yes "$user@$ip" sudo -- "$(printf '%q ' "${argv[@]}")"
