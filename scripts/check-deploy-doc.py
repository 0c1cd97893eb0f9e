#!/usr/bin/env python3
"""Checks the compose file and the systemd unit that docs/deploy.md shows (no compose or systemd
on the test machines, so they are checked as text): the YAML parses and keeps the promises the
page makes; the unit passes `systemd-analyze verify` where that exists.

    scripts/check-deploy-doc.py [docs/deploy.md]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs", "deploy.md")
text = open(path).read()
section = text.split("## A runner service: `nsrun serve` next to the worker", 1)
if len(section) != 2:
    sys.exit(f"{path}: no 'A runner service' section")
blocks = re.findall(r"```(\w+)\n(.*?)```", section[1], re.S)
composes = [b for lang, b in blocks if lang == "yaml" and "services:" in b]
units = [b for lang, b in blocks if lang == "ini" and "[Service]" in b]
if len(composes) != 1 or len(units) != 1:
    sys.exit(f"{path}: expected one compose file and one systemd unit, found {len(composes)} and {len(units)}")

c = yaml.safe_load(composes[0])
svc = c["services"]
fail = []
for name, s in svc.items():
    if s.get("privileged"):
        fail.append(f"{name}: privileged")
    if s.get("cap_add"):
        fail.append(f"{name}: cap_add {s['cap_add']}")
    for v in s.get("volumes", []):
        if "docker.sock" in str(v):
            fail.append(f"{name}: mounts the Docker socket")
if "security_opt" in svc["worker"]:
    fail.append("worker: has security options (it should need none)")
sock = lambda s: {v.split(":")[0] for v in s.get("volumes", []) if str(v).split(":")[1:2] == ["/run/nsrun"]}
if not sock(svc["nsrun"]) or sock(svc["nsrun"]) != sock(svc["worker"]):
    fail.append("nsrun and worker do not share the socket volume at /run/nsrun")
cmd = svc["nsrun"]["command"]
if "serve" not in cmd or "unix:/run/nsrun/nsrun.sock" not in cmd:
    fail.append(f"nsrun: command does not serve on the shared socket: {cmd}")
opts = svc["nsrun"].get("security_opt", [])
if "systempaths=unconfined" not in opts or not any(o.startswith("seccomp:") for o in opts):
    fail.append("nsrun: the recipe's security options are missing")
if "proxy" not in str(svc.get("mirror", {}).get("environment", {})).lower():
    fail.append("mirror: not a proxy-mode registry")
if fail:
    sys.exit(f"{path}: compose file: " + "; ".join(fail))

if shutil.which("systemd-analyze"):
    with tempfile.TemporaryDirectory() as d:
        unit = os.path.join(d, "nsrun.service")
        # verify wants ExecStart's binary to exist: point it at one that does.
        open(unit, "w").write(units[0].replace("/usr/local/bin/nsrun", shutil.which("true") or "/bin/true"))
        p = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True)
        bad = [l for l in (p.stdout + p.stderr).splitlines() if "nsrun.service" in l]
        if p.returncode != 0 or bad:
            sys.exit(f"{path}: systemd unit: {' | '.join(bad) or p.stderr.strip()}")
print(f"{path}: compose file and systemd unit ok")
