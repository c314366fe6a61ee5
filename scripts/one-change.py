#!/usr/bin/env python3
# One edit from device A to device B, measured from outside with release `hearth`
# processes: N records on A (default 10,000), B joins and catches up, then 200 times a
# PATCH on A and GETs on B until it shows. Build first: cargo build --release -p hearth-cli.
# Usage: scripts/one-change.py [N]   (WAIT=S waits S seconds after the catch-up;
# HEARTH_BIN=PATH runs another build)
import json, os, subprocess, sys, time, urllib.request, shutil, statistics
B = os.environ.get("HEARTH_BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "hearth")
root = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hearth-one-change"); shutil.rmtree(root, ignore_errors=True); os.makedirs(root)
def up(home):
    p = subprocess.Popen([B, "--home", home, "--json", "up", "--api", "127.0.0.1:0", "--no-mdns",
                          "--listen", "/ip4/127.0.0.1/tcp/0"], stdout=subprocess.PIPE, stderr=open(home + ".log", "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    line = json.loads(p.stdout.readline())
    return p, line["api_addr"], open(home + "/owner.token").read().strip()
def req(addr, tok, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(f"http://{addr}{path}", data=data, method=method,
                               headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r) as resp: return resp.status, resp.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
a, aaddr, atok = up(root + "/a")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
t = time.time()
for i in range(n):
    req(aaddr, atok, "PUT", f"/v1/collections/contacts/records/c{i}", {"name": f"Person {i}", "email": f"p{i}@example.org", "n": i})
print(f"{n} puts on A in {time.time()-t:.1f} s", flush=True)
code = json.loads(subprocess.check_output([B, "--home", root + "/a", "--json", "pair"]))["code"]
subprocess.check_output([B, "--home", root + "/b", "--json", "join", code])
b, baddr, btok = up(root + "/b")
while True:
    s, body = req(baddr, btok, "GET", f"/v1/collections/contacts/records/c{n-1}")
    if s == 200: break
    time.sleep(0.05)
print("B caught up; B pid", b.pid, flush=True)
open(root + "/b.pid", "w").write(str(b.pid))
time.sleep(float(os.environ.get("WAIT", "0")))
lat = []; waits = []
for i in range(200):
    t = time.perf_counter()
    req(aaddr, atok, "PATCH", f"/v1/collections/contacts/records/c{i}", {"note": f"edit {i}"})
    while True:
        t1 = time.perf_counter()
        s, body = req(baddr, btok, "GET", f"/v1/collections/contacts/records/c{i}")
        waits.append(time.perf_counter() - t1)
        if s == 200 and b"edit %d\"" % i in body: break
    lat.append(time.perf_counter() - t)
lat.sort(); waits.sort()
print(f"one edit visible on B: p50 {lat[100]*1000:.1f} ms, p99 {lat[197]*1000:.1f} ms, max {lat[-1]*1000:.1f} ms")
print(f"single GET on B while polling: p50 {statistics.median(waits)*1000:.2f} ms, p99 {waits[int(len(waits)*0.99)]*1000:.2f} ms, max {waits[-1]*1000:.1f} ms")
a.terminate(); b.terminate(); a.wait(); b.wait()
shutil.rmtree(root, ignore_errors=True)
