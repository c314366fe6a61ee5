#!/usr/bin/env bash
# The file share measured (issue 29, "Measured"): one 1 GiB file up and down, and
# 10,000 small files up, through Hearth's WebDAV share, through Hearth's blob API, and
# through `rclone serve webdav` on the same machine; then PROPFIND Depth 1 of the
# folder of 10,000 files (time, and the node's memory). Prints one table.
#
#   cargo build --release -p hearth-cli && scripts/files-bench.sh
#
# Needs curl, python3 and rclone; HEARTH_BIN names another binary; SMALL=N another count.
set -euo pipefail
cd "$(dirname "$0")/.."
hearth="${HEARTH_BIN:-$PWD/target/release/hearth}"
small="${SMALL:-10000}"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$hearth" --home "$work/hearth" up --api 127.0.0.1:0 --no-mdns >"$work/hearth.log" 2>&1 &
pids+=($!)
node_pid=$!
for _ in $(seq 100); do [ -s "$work/hearth/api.addr" ] && break; sleep 0.1; done
addr="$(cat "$work/hearth/api.addr")"
owner="$(cat "$work/hearth/owner.token")"
password="$("$hearth" --home "$work/hearth" --json grant bench --read files --write files \
  --app-password | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')"
mkdir -p "$work/served"
rclone serve webdav "$work/served" --addr 127.0.0.1:18099 >"$work/rclone.log" 2>&1 &
pids+=($!)
sleep 1

# Each side gets bytes of its own: the vault stores a content once, so a second upload
# of the same bytes would be measured as a dedup, not an upload.
head -c $((1 << 30)) /dev/urandom >"$work/big.bin"
head -c $((1 << 30)) /dev/urandom >"$work/big2.bin"
python3 - "$work" "$small" <<'PY'
import os, sys
work, n = sys.argv[1], int(sys.argv[2])
for side in ("small", "small2"):
    os.makedirs(f"{work}/{side}")
    for i in range(n):
        with open(f"{work}/{side}/f{i}.txt", "wb") as f:
            f.write(os.urandom(4096))
PY

secs() { python3 -c 'import sys,time; t=time.monotonic(); import subprocess; subprocess.run(sys.argv[1:], check=True); print(f"{time.monotonic()-t:.2f}")' "$@"; }
quiet=(-sS -o /dev/null --fail)

up_dav=$(secs curl "${quiet[@]}" -u "me:$password" -T "$work/big.bin" "http://$addr/files/big.bin")
up_api=$(secs curl "${quiet[@]}" -H "Authorization: Bearer $owner" -X POST -T "$work/big2.bin" \
  "http://$addr/v1/blobs?name=big2.bin")
up_rcl=$(secs curl "${quiet[@]}" -T "$work/big.bin" "http://127.0.0.1:18099/big.bin")
# The blob the file names (its ETag holds only 128 bits of the id).
blob="$("$hearth" --home "$work/hearth" --json file ls / | python3 -c \
  'import json,sys; print(next(e["blob"] for e in json.load(sys.stdin)["entries"] if e["path"] == "/big.bin"))')"
down_dav=$(secs curl "${quiet[@]}" -u "me:$password" "http://$addr/files/big.bin")
down_api=$(secs curl "${quiet[@]}" -H "Authorization: Bearer $owner" "http://$addr/v1/blobs/$blob")
down_rcl=$(secs curl "${quiet[@]}" "http://127.0.0.1:18099/big.bin")

# Small files: four at a time with curl's --parallel, the same client for each side
# (rclone's own client paces its requests and measures itself, not the server).
config() { # DIR URL-PREFIX METHOD
  (cd "$1" && ls) | sed "s|.*|url = \"$2&\"\nupload-file = \"$1/&\"\nrequest = $3\noutput = /dev/null|"
}
curl -sS --fail -u "me:$password" -X MKCOL "http://$addr/files/small/" -o /dev/null
curl -sS --fail -X MKCOL "http://127.0.0.1:18099/small/" -o /dev/null
config "$work/small" "http://$addr/files/small/" PUT >"$work/dav.cfg"
config "$work/small2" "http://$addr/v1/blobs?name=" POST >"$work/api.cfg"
config "$work/small" "http://127.0.0.1:18099/small/" PUT >"$work/rcl.cfg"
many() { secs curl -sS --fail --parallel --parallel-max 4 "$@"; }
small_dav=$(many -u "me:$password" -K "$work/dav.cfg")
small_api=$(many -H "Authorization: Bearer $owner" -K "$work/api.cfg")
small_rcl=$(many -K "$work/rcl.cfg")

rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$node_pid/status")
list=$(secs curl "${quiet[@]}" -u "me:$password" -X PROPFIND -H 'Depth: 1' "http://$addr/files/small/")
listed=$(curl -sS -u "me:$password" -X PROPFIND -H 'Depth: 1' "http://$addr/files/small/" | grep -o '<d:response>' | wc -l)
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$node_pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$node_pid/status")

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
echo "| what | Hearth WebDAV | Hearth blob API | rclone serve webdav | WebDAV / blob API | WebDAV / rclone |"
echo "|---|---|---|---|---|---|"
echo "| 1 GiB up (s) | $up_dav | $up_api | $up_rcl | $(ratio "$up_dav" "$up_api") | $(ratio "$up_dav" "$up_rcl") |"
echo "| 1 GiB down (s) | $down_dav | $down_api | $down_rcl | $(ratio "$down_dav" "$down_api") | $(ratio "$down_dav" "$down_rcl") |"
echo "| $small files of 4 KiB up (s) | $small_dav | $small_api | $small_rcl | $(ratio "$small_dav" "$small_api") | $(ratio "$small_dav" "$small_rcl") |"
echo
echo "PROPFIND Depth 1 of $small files: $list s, $((listed)) responses; node RSS ${rss_before} kB before, ${rss_after} kB after, peak ${hwm} kB"
