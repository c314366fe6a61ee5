#!/usr/bin/env bash
# caldav-server-tester (every probed feature) against Hearth and Radicale 3.9.0, in one
# run on this machine: prints each server's count per support level and the features
# where they differ. Needs python3 (with venv) and PyPI; builds nothing: run
# `cargo build -p hearth-cli` first (or set HEARTH_BIN).
#
#   scripts/dav-compare.sh            # both servers on 127.0.0.1, throwaway homes
set -euo pipefail
cd "$(dirname "$0")/.."
hearth="${HEARTH_BIN:-$PWD/target/debug/hearth}"
venv="$PWD/target/dav-compare"
if ! [ -x "$venv/bin/caldav-server-tester" ] || ! [ -x "$venv/bin/radicale" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    caldav-server-tester==1.7.0 radicale==3.9.0 vobject==0.9.9
fi
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$venv/bin/radicale" --storage-filesystem-folder "$work/radicale" --auth-type none \
  --server-hosts 127.0.0.1:5232 >"$work/radicale.log" 2>&1 &
pids+=($!)
"$hearth" --home "$work/hearth" up --api 127.0.0.1:0 --no-mdns >"$work/hearth.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/hearth/api.addr" ] && break; sleep 0.1; done
password="$("$hearth" --home "$work/hearth" --json grant tester --read 'calendar*' \
  --write 'calendar*' --app-password | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')"
addr="$(cat "$work/hearth/api.addr")"

"$venv/bin/caldav-server-tester" --caldav-url "http://$addr/" --caldav-username tester \
  --caldav-password "$password" --format hints >"$work/hearth.hints" 2>"$work/hearth.err"
"$venv/bin/caldav-server-tester" --caldav-url http://127.0.0.1:5232/ --caldav-username tester \
  --caldav-password x --format hints >"$work/radicale.hints" 2>"$work/radicale.err"

python3 - "$work/hearth.hints" "$work/radicale.hints" <<'EOF'
import ast, collections, sys
h = ast.literal_eval(open(sys.argv[1]).read())
r = ast.literal_eval(open(sys.argv[2]).read())
def count(d):
    return dict(collections.Counter(v.get("support", "(value)") for v in d.values()))
print("hearth  ", len(h), count(h))
print("radicale", len(r), count(r))
print("| feature | Hearth | Radicale 3.9.0 | what Hearth does |")
print("|---|---|---|---|")
for k in sorted(set(h) | set(r)):
    a, b = h.get(k, {}), r.get(k, {})
    if a.get("support", "full") != "full" or b.get("support", "full") != "full" or a != b:
        show = lambda x: x.get("support", x.get("value"))
        print(f"| `{k}` | {show(a)} | {show(b)} | {a.get('behaviour', '')[:110]} |")
EOF
