#!/usr/bin/env python3
"""Summarise a callgrind output file: self cost (instructions, Ir) by crate or shared object,
and the inclusive cost of the heaviest functions, so a profile reads as "which library costs
what". Instruction counts do not depend on the machine's load.

    target/release/bench burst --burst 2000 --runs 1 --no-write \
        --worker-wrapper "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg/b2000.%p.callgrind"
    python3 bench/profile/callgrind_by_crate.py /tmp/cg/b2000.*.callgrind --top 40 --match '^ece::'

Start-up (template checks, connections) is in the file too: run a small burst the same way
(e.g. --burst 200) and subtract its totals to get the cost per notification.

usage: callgrind_by_crate.py FILE [--top N] [--match REGEX ...]
"""
import re, sys, collections

def parse(path):
    names = {"fn": {}, "ob": {}, "fl": {}}
    selfc = collections.Counter()
    calls = collections.Counter()  # (caller, callee) -> inclusive Ir
    fn_ob = {}
    cur_fn = cur_ob = None
    cfn = cob = None
    pending_call = False
    total = 0
    events = None
    def resolve(kind, val):
        m = re.match(r"\((\d+)\)(?: (.*))?$", val)
        if not m:
            return val
        i, name = m.group(1), m.group(2)
        if name is not None:
            names[kind][i] = name
            return name
        return names[kind].get(i, "?" + i)
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                ir = int(parts[1]) if len(parts) > 1 else 0
                if pending_call:
                    calls[(cur_fn, cfn)] += ir
                    pending_call = False
                else:
                    selfc[cur_fn] += ir
                    total += ir
                continue
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("ob="):
                cur_ob = resolve("ob", line[3:])
            elif line.startswith("fn="):
                cur_fn = resolve("fn", line[3:])
                fn_ob[cur_fn] = cur_ob
                cob = None
            elif line.startswith("cob="):
                cob = resolve("ob", line[4:])
            elif line.startswith("cfn=") or line.startswith("cfi=") or line.startswith("cfl="):
                if line.startswith("cfn="):
                    cfn = resolve("fn", line[4:])
                    if cfn not in fn_ob and cob:
                        fn_ob[cfn] = cob
                else:
                    resolve("fl", line[4:])
            elif line.startswith("calls="):
                pending_call = True
            elif line.startswith("fl=") or line.startswith("fi=") or line.startswith("fe="):
                resolve("fl", line[3:])
    return selfc, calls, fn_ob, total

CRATES = ["ece", "web_push", "openssl", "lettre", "handlebars", "serde_json", "serde", "sqlx_postgres", "sqlx_core", "sqlx",
          "tokio", "hyper", "hyper_util", "h2", "reqwest", "rustls", "ring", "aws_lc", "quoted_printable", "base64", "chrono", "chrono_tz",
          "dashlight_worker", "dashlight_core", "apalis", "tracing", "futures", "alloc", "core", "std", "hashbrown", "regex", "url",
          "jwt_simple", "p256", "email_address", "idna", "mime", "http", "bytes", "memchr", "uuid", "tower", "metrics", "pest", "indexmap"]

def crate_of(fn, ob):
    if ob and not re.search(r"dashlight-worker$", ob or ""):
        base = ob.rsplit("/", 1)[-1]
        return base  # a shared object: libcrypto.so.3, libc.so.6, ...
    s = fn.lstrip("<&*( ")
    s = re.sub(r"^(dyn |impl |mut )", "", s)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    if m:
        return m.group(1)
    return "(other: " + s[:30] + ")"

def main():
    path = sys.argv[1]
    top = 40
    pats = []
    args = sys.argv[2:]
    while args:
        a = args.pop(0)
        if a == "--top":
            top = int(args.pop(0))
        elif a == "--match":
            pats.append(args.pop(0))
    selfc, calls, fn_ob, total = parse(path)
    incl = collections.Counter(selfc)
    for (caller, callee), ir in calls.items():
        if caller != callee:
            incl[caller] += ir
    print(f"total Ir: {total:,}")
    by = collections.Counter()
    for fn, ir in selfc.items():
        by[crate_of(fn, fn_ob.get(fn))] += ir
    print("\n## self cost by crate / shared object")
    for k, v in by.most_common(30):
        print(f"{100*v/total:6.2f} %  {v:>15,}  {k}")
    print(f"\n## top {top} inclusive")
    for fn, v in incl.most_common(top):
        print(f"{100*v/total:6.2f} %  {v:>15,}  {fn[:160]}")
    for p in pats:
        r = re.compile(p)
        hits = [(fn, v) for fn, v in incl.items() if r.search(fn)]
        hits.sort(key=lambda x: -x[1])
        print(f"\n## inclusive, functions matching {p!r}")
        for fn, v in hits[:8]:
            print(f"{100*v/total:6.2f} %  {v:>15,}  {fn[:160]}")

main()
