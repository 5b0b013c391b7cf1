"""A learning A/B of two learner binaries on CartPole, every rule, several seeds: did a change
(a refactor, a speed-up) change what is learned?

Usage:
  python3 scripts/cartpole_ab.py A_LEARNER B_LEARNER OUT_DIR [--seeds 1-5] [--rules q,dqn,...]
e.g. (the binary before a change, kept aside, against the one built now)
  python3 scripts/cartpole_ab.py /tmp/before/learner target/release/learner docs/redesign-ab

Each (rule, seed) trains with A, then B (B first on odd seeds, so that a drift of the
machine's speed does not favour one side), with the rule's tuned config
(configs/cartpole.toml for q and sarsa, configs/cartpole-<rule>.toml for the others: 2 actor
processes, --target-return 195 over the last 100 episodes, the config's --max-frames as the
budget), --device cpu --inference actor. A run stops when it reaches 195 or its budget.

Writes OUT_DIR/<side>/<rule>-<seed>/ (run directories), OUT_DIR/ab.csv (one row per run:
side, rule, seed, solved, frames, wall seconds) and OUT_DIR/ab.md (a table per rule: the
frames at which each seed reached 195, '-' for a miss, and the median), with the machine and
the commit; prints the table.
"""
import csv
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = ["q", "sarsa", "dqn", "a3c", "impala"]


def config_for(rule):
    name = "cartpole.toml" if rule in ("q", "sarsa") else f"cartpole-{rule}.toml"
    return os.path.join(ROOT, "configs", name)


def parse_seeds(text):
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def last_row(logdir):
    path = os.path.join(logdir, "metrics.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def run(binary, rule, seed, logdir):
    args = [
        binary, "--config", config_for(rule), "--algorithm", rule, "--seed", str(seed),
        "--device", "cpu", "--inference", "actor", "--logdir", logdir,
    ]
    start = time.time()
    with open(logdir + ".log", "w") as log:
        status = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - start
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed with status {status}; see {logdir}.log")
    with open(logdir + ".log") as f:
        solved = "reached --target-return" in f.read()
    row = last_row(logdir)
    return solved, int(row.get("frames", 0)), wall


def main():
    argv = sys.argv[1:]
    if len(argv) < 3:
        raise SystemExit(__doc__)
    a, b, out = argv[:3]
    seeds, rules = [1, 2, 3, 4, 5], RULES
    rest = argv[3:]
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--seeds":
            seeds = parse_seeds(value)
        elif flag == "--rules":
            rules = value.split(",")
        else:
            raise SystemExit(f"unknown flag {flag}\n{__doc__}")
    os.makedirs(out, exist_ok=True)
    results = []
    for rule in rules:
        for seed in seeds:
            order = [("A", a), ("B", b)] if seed % 2 == 0 else [("B", b), ("A", a)]
            for side, binary in order:
                logdir = os.path.join(out, side, f"{rule}-{seed}")
                os.makedirs(os.path.dirname(logdir), exist_ok=True)
                subprocess.run(["rm", "-rf", logdir])
                solved, frames, wall = run(binary, rule, seed, logdir)
                results.append((side, rule, seed, solved, frames, round(wall, 1)))
                print(f"{side} {rule} seed {seed}: {'195 at' if solved else 'missed,'} "
                      f"{frames} frames, {wall:.0f} s", flush=True)
    with open(os.path.join(out, "ab.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["side", "rule", "seed", "solved", "frames", "wall_s"])
        w.writerows(results)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        f"A: {a}  B: {b}  (commit {commit}, {platform.node()}, {os.cpu_count()} cores)",
        "",
        "Frames at which the mean return of the last 100 episodes reached 195 ('-': not within "
        "the config's --max-frames).",
        "",
        "| rule | side | " + " | ".join(f"seed {s}" for s in seeds) + " | solved | median |",
        "|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for rule in rules:
        for side in ("A", "B"):
            got = {r[2]: r for r in results if r[0] == side and r[1] == rule}
            cells = [f"{got[s][4]:,}" if got[s][3] else "-" for s in seeds]
            hit = [got[s][4] for s in seeds if got[s][3]]
            median = f"{statistics.median(hit):,.0f}" if hit else "-"
            lines.append(f"| {rule} | {side} | " + " | ".join(cells)
                         + f" | {len(hit)}/{len(seeds)} | {median} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "ab.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
