"""A learning A/B of two learner binaries on CartPole, every rule, several seeds: did a change
(a refactor, a speed-up) change what is learned?

Usage:
  python3 scripts/cartpole_ab.py A_LEARNER B_LEARNER OUT_DIR [--seeds 1-5] [--rules q,dqn,...]
e.g. (the binary before a change, kept aside, against the one built now)
  python3 scripts/cartpole_ab.py /tmp/before/learner target/release/learner docs/redesign-ab

Each (rule, seed) trains with A, then B (B first on odd seeds, so that a drift of the
machine's speed does not favour one side), as `learner --game CartPole --algorithm <rule>`
with the config the learner picks for it from configs/ (configs/cartpole-<rule>.toml, or
configs/cartpole.toml for the rules that read its settings: 2 actor processes,
--target-return 195 over the last 100 episodes, the config's --max-frames as the budget),
--device cpu --inference actor. A run stops when it reaches 195 or its budget. The rules are
those both binaries offer (their `--help`), unless --rules names some.

Writes OUT_DIR/<side>/<rule>-<seed>/ (run directories), OUT_DIR/ab.csv (one row per run:
side, rule, seed, solved, frames, wall seconds) and OUT_DIR/ab.md (a table per rule: the
frames at which each seed reached 195, '-' for a miss, and the median), with the machine and
the commit; prints the table.
"""
import csv
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def rules_of(binary):
    """The values of `binary --help`'s --algorithm, in its order (the rules it was built with)."""
    try:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"{binary}: cannot run `{binary} --help` ({e}); give a learner binary")
    block = text.split("--algorithm <ALGORITHM>", 1)[-1].split("[default:", 1)[0]
    rules = re.findall(r"^\s+- ([\w-]+):", block, re.M)
    if not rules:
        raise SystemExit(f"{binary}: its --help lists no --algorithm values; give a learner binary")
    return rules


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
        binary, "--game", "CartPole", "--algorithm", rule, "--seed", str(seed),
        "--device", "cpu", "--inference", "actor", "--logdir", logdir,
    ]
    env = dict(os.environ, ASYNC_RL_CONFIG_DIR=CONFIGS)
    start = time.time()
    with open(logdir + ".log", "w") as log:
        status = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
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
    offered = [r for r in rules_of(a) if r in rules_of(b)]
    seeds, rules = [1, 2, 3, 4, 5], offered
    rest = argv[3:]
    while rest:
        flag = rest[0]
        if flag not in ("--seeds", "--rules"):
            raise SystemExit(f"unknown flag {flag}; valid: --seeds, --rules\n{__doc__}")
        if len(rest) < 2:
            raise SystemExit(f"{flag} needs a value, e.g. {flag} {'1-5' if flag == '--seeds' else 'q,dqn'}")
        value, rest = rest[1], rest[2:]
        if flag == "--seeds":
            try:
                seeds = parse_seeds(value)
            except ValueError:
                raise SystemExit(f"--seeds {value}: give a range (1-5) or a list (1,3,4)")
        else:
            rules = value.split(",")
            unknown = [r for r in rules if r not in offered]
            if unknown:
                raise SystemExit(f"--rules: {', '.join(unknown)} not offered by both binaries; "
                                 f"valid: {', '.join(offered)}")
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
