"""Trains seeds one after another, evaluates each final checkpoint by the standard protocol
(`play --eval`: 30 games, epsilon 0.05, up to 30 no-op starts, unclipped scores), appends one
row to docs/results.csv and plots the seeds' curves into docs/results/.

Usage (through scripts/results, which builds first):
  scripts/results GAME MINUTES [--seeds K] [--parallel] [learner flags...]
e.g.
  scripts/results CartPole 2 --seeds 3 --config configs/cartpole-dqn.toml
  scripts/results Pong 180 --seeds 1
  scripts/results Pong 60 --seeds 2 --parallel --config configs/pong.toml

--parallel trains the seeds at the same time instead, each pinned (taskset) to an equal share
of the CPU cores (seed i to cores [i*c/K, (i+1)*c/K)), and evaluates them at the same time:
for K seeds on a K-core machine, K times the seeds in the same hours, each run on one core.

Each seed trains for at most MINUTES (then SIGINT: a final checkpoint), or less if the run
stops itself (--max-frames, --target-return). Seeds are 0..K-1 (--seed is not allowed in the
flags). Runs go to runs/results/<GAME>-<rule>-<UTC time>/seed-<i>.
"""
import csv
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNER = os.path.join(ROOT, "target", "release", "learner")
PLAY = os.path.join(ROOT, "target", "release", "play")
COLUMNS = [
    "date", "game", "rule", "seeds", "frames_mean", "wall_min_mean", "eval_mean",
    "eval_std_over_seeds", "eval_means_per_seed", "eval_games", "machine", "commit",
    "command", "curves",
]


def fail(msg):
    sys.exit(f"results: {msg}")


def parse(argv):
    if len(argv) < 2:
        fail("usage: scripts/results GAME MINUTES [--seeds K] [learner flags...]")
    game, minutes = argv[0], argv[1]
    try:
        minutes = float(minutes)
    except ValueError:
        fail(f"MINUTES must be a number, got {minutes!r}")
    if minutes <= 0:
        fail(f"MINUTES must be positive, got {minutes}")
    rest, seeds, parallel = [], 3, False
    i = 2
    while i < len(argv):
        a = argv[i]
        if a == "--parallel":
            parallel = True
            i += 1
            continue
        if a == "--seeds":
            if i + 1 >= len(argv) or not argv[i + 1].isdigit() or int(argv[i + 1]) < 1:
                fail("--seeds needs a whole number of 1 or more, e.g. --seeds 3")
            seeds = int(argv[i + 1])
            i += 2
            continue
        if a in ("--seed", "--logdir", "--checkpoint") or a.startswith(("--seed=", "--logdir=")):
            fail(f"{a}: scripts/results sets it itself (seeds 0..K-1, runs/results/...)")
        rest.append(a)
        i += 1
    if parallel and seeds > (os.cpu_count() or 1):
        fail(f"--parallel: {seeds} seeds need at least as many cores; this machine has {os.cpu_count()}")
    return game, minutes, seeds, parallel, rest


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = ", " + out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.cpu_count()} cores {model}{gpu} ({platform.node()})"


def commit():
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "--", ".", ":!docs"]).returncode != 0
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def cores_of(seed, seeds):
    """The cores seed `seed` of `seeds` parallel runs is pinned to, for taskset."""
    c = os.cpu_count() or 1
    lo, hi = seed * c // seeds, (seed + 1) * c // seeds
    return f"{lo}-{hi - 1}"


def start(game, seed, flags, logdir, pin=None):
    cmd = [LEARNER, "--game", game, "--seed", str(seed), "--logdir", logdir, *flags]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    print(f"[results] seed {seed}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    out = open(os.path.join(logdir, "learner.log"), "w") if pin is not None else sys.stderr
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if pin is not None else None)


def finish(p, deadline, seed, logdir):
    import time
    try:
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)  # a clean stop with a final checkpoint
        p.wait()
    if p.returncode not in (0, -signal.SIGINT, 130):
        fail(f"the learner failed (exit {p.returncode}) for seed {seed}; see {logdir}")
    ckpts = sorted(
        (int(m.group(1)), f) for f in os.listdir(logdir)
        if (m := re.fullmatch(r"model-(\d+)\.(?:safetensors|pt)", f))
    )
    if not ckpts:
        fail(f"seed {seed}: no checkpoint in {logdir}")
    frames, name = ckpts[-1]
    with open(os.path.join(logdir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    wall = float(rows[-1]["wall_s"]) / 60 if rows else 0.0
    with open(os.path.join(logdir, "config.toml")) as f:
        rule = re.search(r'^algorithm = "(\w+)"', f.read(), re.M).group(1)
    return frames, wall, os.path.join(logdir, name), rule


def evaluate(model, pin=None):
    cmd = [PLAY, "--model", model, "--eval"]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"play --eval {model} failed:\n{out.stderr}")
    report = os.path.splitext(model)[0] + ".eval.json"
    with open(report) as f:
        r = json.load(f)
    return r["mean"], r["episodes"]


def main():
    import time
    from concurrent.futures import ThreadPoolExecutor
    game, minutes, seeds, parallel, flags = parse(sys.argv[1:])
    # The commit of the code that trains: taken now, not when the runs are over.
    trained_commit = commit()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(ROOT, "runs", "results", f"{game}-{stamp}")
    logdirs = [os.path.join(base, f"seed-{seed}") for seed in range(seeds)]
    for d in logdirs:
        os.makedirs(d, exist_ok=True)
    trained = []
    if parallel:
        pins = [cores_of(seed, seeds) for seed in range(seeds)]
        deadline = time.monotonic() + minutes * 60
        procs = [start(game, seed, flags, logdirs[seed], pins[seed]) for seed in range(seeds)]
        trained = [finish(p, deadline, seed, logdirs[seed]) for seed, p in enumerate(procs)]
        with ThreadPoolExecutor(seeds) as pool:
            evals = list(pool.map(lambda i: evaluate(trained[i][2], pins[i]), range(seeds)))
    else:
        evals = []
        for seed in range(seeds):
            p = start(game, seed, flags, logdirs[seed])
            trained.append(finish(p, time.monotonic() + minutes * 60, seed, logdirs[seed]))
            evals.append(evaluate(trained[-1][2]))
    results = []
    for seed, ((frames, wall, model, rule), (mean, games)) in enumerate(zip(trained, evals)):
        print(f"[results] seed {seed}: {frames} frames, {wall:.1f} min, eval mean {mean:.2f}",
              file=sys.stderr, flush=True)
        results.append((frames, wall, mean, games, rule, logdirs[seed]))
    rule = results[0][4]
    docs = os.path.join(ROOT, "docs")
    os.makedirs(os.path.join(docs, "results"), exist_ok=True)
    png = os.path.join("docs", "results", f"{game}-{rule}-{stamp}.png")
    subprocess.run([os.path.join(ROOT, "scripts", "plot"), *[r[5] for r in results],
                    "-o", os.path.join(ROOT, png), "--title", f"{game}, {rule}, seeds 0-{seeds - 1}"],
                   check=True)
    means = [r[2] for r in results]
    row = {
        "date": stamp,
        "game": game,
        "rule": rule,
        "seeds": seeds,
        "frames_mean": round(statistics.mean(r[0] for r in results)),
        "wall_min_mean": f"{statistics.mean(r[1] for r in results):.1f}",
        "eval_mean": f"{statistics.mean(means):.2f}",
        "eval_std_over_seeds": f"{statistics.pstdev(means):.2f}",
        "eval_means_per_seed": " ".join(f"{m:.2f}" for m in means),
        "eval_games": results[0][3],
        "machine": machine(),
        "commit": trained_commit,
        "command": "scripts/results " + " ".join(
            [game, f"{minutes:g}", "--seeds", str(seeds), *(["--parallel"] if parallel else []), *flags]),
        "curves": png,
    }
    path = os.path.join(docs, "results.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"[results] appended to docs/results.csv: {row}", file=sys.stderr)
    print(f"[results] runs in {base}", file=sys.stderr)


if __name__ == "__main__":
    main()
