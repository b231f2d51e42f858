#!/usr/bin/env python3
"""Aggregate the `log_min_duration_statement = 0` lines of one database from the server's log:
server time per statement (parse + bind + execute), calls, mean. A stand-in for
pg_stat_statements where it is not in `shared_preload_libraries`:

    LOG=/var/log/postgresql/postgresql-15-main.log; OFF=$(stat -c %s $LOG)
    target/release/bench burst --burst 2000 --runs 1 --no-write --db-setting log_min_duration_statement=0
    python3 bench/profile/pg_log_statements.py $LOG dashlight_bench_<pid>_burst0 $OFF

The bench database's set-up (migrations, the data load) is logged too; the worker's statements
are the ones that repeat.

usage: pg_log_statements.py LOGFILE DBNAME [from-offset-bytes]"""
import re, sys, collections
path, db = sys.argv[1], sys.argv[2]
start = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ts = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
entries = []
with open(path, errors="replace") as f:
    f.seek(start)
    cur = None
    for line in f:
        if ts.match(line):
            if cur: entries.append(cur)
            cur = line.rstrip("\n")
        elif cur is not None:
            cur += " " + line.strip()
    if cur: entries.append(cur)
rx = re.compile(r"\] \S*@" + re.escape(db) + r" LOG:  duration: ([\d.]+) ms  (parse|bind|execute|statement)(?: [^:]*)?: (.*)$")
tot = collections.defaultdict(lambda: [0.0, 0, 0.0, 0.0, 0.0])
alltime = 0.0
for e in entries:
    m = rx.search(e)
    if not m: continue
    ms, phase, q = float(m.group(1)), m.group(2), re.sub(r"\s+", " ", m.group(3)).strip()
    k = q[:140]
    t = tot[k]
    t[0] += ms; alltime += ms
    if phase in ("execute", "statement"): t[1] += 1
    t[{"parse": 2, "bind": 3}.get(phase, 4)] += ms
print(f"total server time logged: {alltime:.0f} ms")
print("share | total ms | calls | mean ms | parse/bind/exec ms | statement")
for k, t in sorted(tot.items(), key=lambda kv: -kv[1][0])[:25]:
    print(f"{100*t[0]/alltime:5.1f}% | {t[0]:8.1f} | {t[1]:6d} | {t[0]/max(t[1],1):7.3f} | {t[2]:.0f}/{t[3]:.0f}/{t[4]:.0f} | {k}")
