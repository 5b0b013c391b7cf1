"""Trains N seeds of one game and rule, one after another (each with the whole machine), with
the learner's periodic evaluations on (`--eval-every`), evaluates each final checkpoint by the
standard protocol (`play --eval`: 30 games, epsilon 0.05, up to 30 no-op starts, unclipped
scores), measures the time each seed takes to reach given scores, plots the seeds' curves,
appends one row to docs/results.csv and rewrites the generated section of docs/RESULTS.md.

Usage (through scripts/results, which builds first):
  scripts/results GAME MINUTES [--seeds N] [--first-seed S] [--thresholds A,B,C] [--parallel]
                  [learner flags...]
  scripts/results --resume RESULTS_DIR        # run the seeds a stopped call did not finish
  scripts/results --report RESULTS_DIR        # no training: redo the report of finished seeds
  (any may be followed by --docs DIR: write results.csv, RESULTS.md and the curves there;
   a new call also by --runs DIR: its results directory goes under DIR, not runs/results)
e.g.
  scripts/results CartPole 0.5 --seeds 2 --config configs/cartpole-dqn.toml
  scripts/results Pong 180 --seeds 3 --config configs/pong.toml

Each seed trains for at most MINUTES of wall-clock time (then SIGINT: a final checkpoint), or
less if the run stops itself (--max-frames, --target-return). Seeds are S..S+N-1, S from
--first-seed (default 0: a later session can add seeds 1 and 2 to a game's seed 0 with
--seeds 2 --first-seed 1); --seed, --logdir and --checkpoint are not allowed in the flags.
The flags are checked first with `learner --print-config`, which also says whether the
settings they give (the --config file, the game's tuned one, the files they extend) set
--eval-every; unless they do, it is 250,000 frames on Atari and 10,000 on CartPole.
--parallel trains the seeds at the same time instead, seed i pinned (taskset) to cores
[i*c/N, (i+1)*c/N).

Runs go to runs/results/<GAME>-<UTC time>/seed-<i> (or under --runs DIR) (the learner's run directory: metrics.csv,
checkpoints, learner.log with its output) with results.json (the call) beside them. A seed is
finished when its seed-<i>/result.json exists. --resume continues the others: a seed with a
checkpoint continues from it (`learner --checkpoint latest`, for what is left of MINUTES, and
is marked resumed), one without starts again. A learner stopped by a signal that this script
did not send (the session ending, someone's kill) leaves its seed unfinished, resumable.

The learner and play binaries are target/release/{learner,play}, or the paths in
ASYNC_RL_LEARNER and ASYNC_RL_PLAY when set (the tests run their debug builds).

Time to score, per seed and threshold: the wall-clock minutes and the frames at which the
training mean return (metrics.csv's mean_return, the last 100 games) first reaches it, and
separately at which a periodic evaluation first does (the learner's "evaluation at F frames:
mean M" lines; its minutes are those at which the learner had trained F frames, interpolated
from metrics.csv). "never" when not reached.
"""
import csv
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNER = os.environ.get("ASYNC_RL_LEARNER") or os.path.join(ROOT, "target", "release", "learner")
PLAY = os.environ.get("ASYNC_RL_PLAY") or os.path.join(ROOT, "target", "release", "play")
COLUMNS = [
    "date", "game", "rule", "seeds", "frames_mean", "wall_min_mean", "eval_mean",
    "eval_std_over_seeds", "eval_means_per_seed", "eval_games", "machine", "commit",
    "command", "curves",
    # Added with the wall-clock axis; empty in older rows.
    "minutes", "frames_per_seed", "wall_min_per_seed", "resumed_seeds", "thresholds",
    "train_time_to_score", "eval_time_to_score", "results_dir",
    # Added with --first-seed; empty (0) in older rows.
    "first_seed",
    # Each seed's measures as JSON (seed, frames, wall_min, eval_mean, resumed and the time to
    # each threshold), so that calls of one setting join into one row; empty in older rows.
    "per_seed",
]
# Per game (its name reduced by game_key): the scores whose time to reach is measured.
THRESHOLDS = {
    "pong": [-20.0, 0.0, 18.0],
    "breakout": [30.0, 100.0, 300.0],
    "cartpole": [100.0, 195.0, 475.0],
}
EVAL_EVERY = {"cartpole": 10_000}
EVAL_EVERY_ATARI = 250_000
BEGIN = "<!-- scripts/results: generated section, begin (rewritten by scripts/results) -->"
END = "<!-- scripts/results: generated section, end -->"
EVAL_LINE = re.compile(r"evaluation at (\d+) frames: mean (-?[0-9.]+(?:e[-+]?\d+)?)")


class ResultsError(Exception):
    """Bad input or a failed step, with what to do about it."""


def fail(msg):
    sys.exit(f"results: {msg}")


# ---------------------------------------------------------------------------------------------
# Arguments


def game_key(game):
    """'Pong', 'pong', 'PongNoFrameskip-v4', 'ALE/Pong-v5' -> 'pong'; 'CartPole-v1' -> 'cartpole'."""
    g = game.lower()
    g = g.split("/")[-1]
    g = re.sub(r"(noframeskip)?-v\d+$", "", g)
    g = re.sub(r"deterministic$", "", g)
    return re.sub(r"[^a-z0-9]", "", g)


def parse_thresholds(text):
    """'a,b,c' -> [a, b, c] (floats, ascending order kept as given); errors name the input."""
    parts = [p.strip() for p in text.split(",")]
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ResultsError(f"--thresholds {text}: {p!r} is not a number; give scores "
                               "separated by commas, e.g. --thresholds -20,0,18")
        if not math.isfinite(v):
            raise ResultsError(f"--thresholds {text}: {p!r} is not a finite number")
        out.append(v)
    return out


def flag_value(flags, name):
    """The value of `--name V` or `--name=V` in the learner flags, or None."""
    for i, a in enumerate(flags):
        if a == name and i + 1 < len(flags):
            return flags[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def learner_config(game, flags):
    """The settings the learner would train `game` with under the learner `flags`, as a dict of
    flag names: its `--print-config` (the defaults, the --config file or the game's tuned config
    with the files they extend, and the flags, merged and validated). ResultsError with the
    learner's own message when it refuses them, so a bad flag stops the call before any seed."""
    import tomllib  # Python 3.11; only a new call needs it
    cmd = [LEARNER, "--game", game, *flags, "--print-config"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except OSError as e:
        raise ResultsError(f"cannot run the learner {LEARNER}: {e.strerror} (scripts/results "
                           "builds it; or set ASYNC_RL_LEARNER)")
    if out.returncode != 0:
        raise ResultsError(f"the learner refuses these flags: {out.stderr.strip()}")
    try:
        return tomllib.loads(out.stdout)
    except tomllib.TOMLDecodeError as e:
        raise ResultsError(f"{' '.join(cmd)} printed no TOML ({e}): {out.stdout[:200]!r}")


def parse(argv):
    """The call's settings from its arguments (see the module docstring); ResultsError on bad
    input, naming it."""
    usage = ("usage: scripts/results GAME MINUTES [--seeds N] [--first-seed S] [--thresholds A,B,C] "
             "[--parallel] "
             "[learner flags...] | --resume RESULTS_DIR | --report RESULTS_DIR  [--docs DIR]")
    dirs = {}
    for opt in ("--docs", "--runs"):
        if opt in argv:
            i = argv.index(opt)
            if i + 1 >= len(argv):
                raise ResultsError(f"{opt} needs a directory")
            dirs[opt[2:]] = argv[i + 1]
            argv = argv[:i] + argv[i + 2:]
    docs, runs = dirs.get("docs"), dirs.get("runs")
    if argv and argv[0] in ("--resume", "--report"):
        if len(argv) != 2:
            raise ResultsError(f"{argv[0]} takes one results directory and nothing else (the "
                               "game, minutes, seeds and flags are those of the call it continues); "
                               f"got {' '.join(argv[1:]) or 'nothing'}")
        d = os.path.abspath(argv[1])
        if not os.path.isfile(os.path.join(d, "results.json")):
            raise ResultsError(f"{argv[0]} {argv[1]}: no results.json there (a directory made by "
                               "scripts/results, runs/results/<GAME>-<time>, is expected)")
        if runs is not None:
            raise ResultsError(f"--runs: only for a new call; {argv[0]} uses the results "
                               f"directory it is given ({argv[1]})")
        return {"mode": argv[0][2:], "dir": d, "docs": docs}
    if len(argv) < 2 or argv[0].startswith("-"):
        raise ResultsError(usage)
    game, minutes = argv[0], argv[1]
    try:
        minutes = float(minutes)
    except ValueError:
        raise ResultsError(f"MINUTES must be a number, got {minutes!r}; {usage}")
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ResultsError(f"MINUTES must be positive, got {argv[1]}")
    flags, seeds, first_seed, parallel, thresholds = [], 3, 0, False, None
    i = 2
    while i < len(argv):
        a = argv[i]
        if a == "--parallel":
            parallel = True
        elif a in ("--seeds", "--first-seed", "--thresholds"):
            if i + 1 >= len(argv):
                raise ResultsError(f"{a} needs a value")
            v = argv[i + 1]
            if a == "--seeds":
                if not v.isdigit() or int(v) < 1:
                    raise ResultsError(f"--seeds {v}: needs a whole number of 1 or more, e.g. --seeds 3")
                seeds = int(v)
            elif a == "--first-seed":
                if not v.isdigit():
                    raise ResultsError(f"--first-seed {v}: needs a whole number of 0 or more, "
                                       "e.g. --first-seed 1 (the seeds are then 1..N)")
                first_seed = int(v)
            else:
                thresholds = parse_thresholds(v)
            i += 1
        elif a.startswith(("--seeds=", "--first-seed=", "--thresholds=")):
            raise ResultsError(f"{a}: write {a.split('=')[0]} VALUE (with a space)")
        elif a in ("--seed", "--logdir", "--checkpoint", "--game", "--resume", "--report") or \
                a.startswith(("--seed=", "--logdir=", "--checkpoint=", "--game=")):
            raise ResultsError(f"{a}: not allowed here; scripts/results sets the game (its first "
                               "argument), the seeds (--seeds and --first-seed), the run directories (runs/results/...) "
                               "and resuming (--resume RESULTS_DIR, alone) itself")
        else:
            flags.append(a)
        i += 1
    key = game_key(game)
    if thresholds is None:
        if key not in THRESHOLDS:
            raise ResultsError(f"no default score thresholds for game {game!r} (there are for "
                               f"{', '.join(sorted(THRESHOLDS))}); give them with --thresholds A,B,C")
        thresholds = THRESHOLDS[key]
    every = flag_value(flags, "--eval-every")
    if every is not None and (not every.replace("_", "").isdigit()
                              or int(every.replace("_", "")) == 0):
        raise ResultsError(f"--eval-every {every}: scripts/results needs periodic evaluations, "
                           "every a positive number of frames (or leave it out for the default)")
    if parallel and seeds > (os.cpu_count() or 1):
        raise ResultsError(f"--parallel: {seeds} seeds need at least as many cores; this machine "
                           f"has {os.cpu_count()}")
    # Last, as it runs the learner: the flags are checked before any seed starts, and the
    # config file (or the game's tuned one) may set eval-every, directly or through a file it
    # extends; the learner says what they merge to.
    if not learner_config(game, flags).get("eval-every") and every is None:
        flags += ["--eval-every", str(EVAL_EVERY.get(key, EVAL_EVERY_ATARI))]
    return {"mode": "new", "game": game, "minutes": minutes, "seeds": seeds, "first_seed": first_seed,
            "parallel": parallel, "thresholds": thresholds, "flags": flags, "docs": docs,
            "runs": runs, "argv": argv}


# ---------------------------------------------------------------------------------------------
# Curves and time to score (pure: the unit tests' subject)


# Games in the learner's training mean (metrics.csv's mean_return; src/learner/train.rs keeps a
# ReturnWindow of 100, and --target-return waits for it to be full, as this does).
WINDOW = 100


def read_training(metrics_csv, session_starts=None):
    """[(frames, wall_s, mean_return)] from a metrics.csv (mean_return None before the first
    finished game). A resumed run appends rows that restart from its checkpoint's frames: rows
    of the earlier session past that point (trained, but lost with it) are dropped, so frames
    only grow.

    With session_starts (the checkpoint frames each session of a resumed seed started from,
    read_session_starts of its learner.log), a row's mean is None until its session has finished
    WINDOW games: the mean of a first few games (8 actors' first Pong games, all at -20) is not a
    score reached. A session starts at the first row past its checkpoint's frames, or where the
    frames fall back; its games are counted from the episodes of the row before it (a checkpoint
    later than that row has a few games more, so the count can be that many high)."""
    out, episodes = [], []
    pending = sorted(n for n in (session_starts or []) if n > 0)
    base = 0
    with open(metrics_csv) as f:
        for r in csv.DictReader(f):
            frames, wall = int(r["frames"]), float(r["wall_s"])
            games = int(r.get("episodes") or 0)
            fell_back = False
            while out and out[-1][0] >= frames:
                out.pop()
                episodes.pop()
                fell_back = True
            crossed = bool(pending) and pending[0] < frames and (not out or out[-1][0] <= pending[0])
            if fell_back or crossed:
                base = episodes[-1] if episodes else 0
                pending = [n for n in pending if n >= frames]
            ret = r.get("mean_return") or ""
            mean = float(ret) if ret else None
            if session_starts is not None and games - base < WINDOW:
                mean = None
            out.append((frames, wall, mean))
            episodes.append(games)
    return out


def read_session_starts(log_text):
    """The frames each session in a learner.log started from ('[results] <time> from <N>
    frames: ...'; [0] for a log without such lines, a seed trained in one go)."""
    return [int(m.group(1)) for m in SESSION_LINE.finditer(log_text)] or [0]


SESSION_LINE = re.compile(r"^\[results\] \S+ from (\d+) frames:", re.M)


def read_evals(log_text):
    """[(frames, mean)] of the periodic evaluations in a learner's output (learner.log, where
    each session starts with a line '[results] <time> from <N> frames: <command>'), by
    frames. A session resumed from a checkpoint of N frames drops the earlier sessions'
    evaluations past N (trained, but lost with them)."""
    by_frames = {}
    for m in re.finditer(f"{EVAL_LINE.pattern}|{SESSION_LINE.pattern}", log_text, re.M):
        if m.group(3) is not None:
            start = int(m.group(3))
            by_frames = {f: v for f, v in by_frames.items() if f <= start}
        else:
            by_frames[int(m.group(1))] = float(m.group(2))
    return sorted(by_frames.items())


def wall_at(training, frames):
    """Seconds of training when `frames` had been trained: linear between metrics rows, the
    first row's time before it, the last row's after it (None without rows)."""
    if not training:
        return None
    prev_f, prev_w = 0, 0.0
    for f, w, _ in training:
        if frames <= f:
            if f == prev_f:
                return w
            return prev_w + (w - prev_w) * (frames - prev_f) / (f - prev_f)
        prev_f, prev_w = f, w
    return training[-1][1]


def time_to_score(points, thresholds):
    """points: [(frames, wall_s, score or None)] in order. For each threshold, (minutes, frames)
    at the first point whose score reaches it (>=), or None: never."""
    out = []
    for t in thresholds:
        hit = next(((w / 60.0, f) for f, w, s in points if s is not None and s >= t), None)
        out.append(hit)
    return out


def eval_points(training, evals):
    """The periodic evaluations as points [(frames, wall_s, mean)] for time_to_score."""
    return [(f, wall_at(training, f), m) for f, m in evals if wall_at(training, f) is not None]


def fmt_frames(f):
    return f"{f / 1e6:.2f}M" if f >= 1e6 else f"{f / 1e3:.0f}k" if f >= 1e3 else str(f)


def fmt_min(m):
    """Minutes with 2 decimals under 10 (CartPole takes seconds), 1 above."""
    return f"{m:.2f}" if m < 10 else f"{m:.1f}"


def spread(values, fmt):
    """median [min, max] of values where None (never reached) counts as larger than any."""
    inf = [math.inf if v is None else v for v in values]
    show = lambda v: "never" if v == math.inf else fmt(v)
    srt = sorted(inf)
    n = len(srt)
    med = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
    return f"{show(med)} [{show(srt[0])}, {show(srt[-1])}]"


def summarise_time_to_score(per_seed, thresholds):
    """per_seed: for each seed, time_to_score's list. One cell: per threshold, minutes and
    frames as median [min, max] over seeds, and how many seeds reached it."""
    parts = []
    for j, t in enumerate(thresholds):
        hits = [s[j] for s in per_seed]
        n = sum(h is not None for h in hits)
        if n == 0:
            parts.append(f"≥{t:g}: never (0/{len(hits)})")
            continue
        mins = spread([h and h[0] for h in hits], fmt_min)
        frames = spread([h and h[1] for h in hits], lambda v: fmt_frames(round(v)))
        parts.append(f"≥{t:g}: {mins} min, {frames} frames ({n}/{len(hits)})")
    return "<br>".join(parts)


def seed_time_to_score_text(hits, thresholds):
    return "; ".join(
        f"{t:g}: " + ("never" if h is None else f"{fmt_min(h[0])} min {h[1]} frames")
        for t, h in zip(thresholds, hits))


def setting_of(command):
    """What makes two calls one setting: their command less the seeds (--seeds, --first-seed)
    and the `--resume` that continued it. Calls that differ only in seeds join into one row."""
    cmd = command.split("; scripts/results --resume", 1)[0]
    cmd = re.sub(r"\s--(?:seeds|first-seed)\s+\d+", "", cmd)
    return " ".join(cmd.split())


def seeds_of(r):
    """A results.csv row's seeds as dicts (see COLUMNS, per_seed), or None for older rows."""
    if not r.get("per_seed"):
        return None
    return json.loads(r["per_seed"])


def markdown_section(rows):
    """The generated section of RESULTS.md from results.csv rows (those with a results_dir):
    one table per game, one row per rule and setting (setting_of), joining the seeds of every
    call made with it; a seed run again by a later call counts once, with its newest result.
    Older rows without per-seed measures (per_seed) stand alone: the newest per rule."""
    rows = [r for r in rows if r.get("results_dir")]
    groups = {}  # (game, rule, setting, thresholds) -> [row], in time order
    for r in rows:
        setting = setting_of(r["command"]) if seeds_of(r) is not None else "old"
        groups.setdefault((r["game"], r["rule"], setting, r["thresholds"]), []).append(r)
    for key in [k for k in groups if k[2] == "old"]:
        groups[key] = groups[key][-1:]  # results.csv is in time order: the last one wins
    out = [BEGIN, "", "## scripts/results: every game and rule, time to score", "",
           "Made by `scripts/results` (see the README's \"Learning curves\"): seeds one after "
           "another, each with the whole machine; the final evaluation is `play --eval` of each "
           "seed's last checkpoint (30 games), mean ± std over seeds; the best checkpoint is "
           "`model-best.safetensors`, the weights of the seed's best periodic evaluation "
           "(10 games), evaluated anew as the last one is (30 games; how many seeds have one, and "
           "the frames it was saved at); time to score is the "
           "wall-clock minutes and frames at which the training mean return (last 100 games, "
           "counted from a session's 100th game on), or a periodic `--eval-every` evaluation, "
           "first reached each score: median [min, max] over seeds, never counting as the "
           "longest, and how many seeds reached it. Calls "
           "that differ only in their seeds (`--seeds`, `--first-seed`) share a row; a seed run "
           "again counts once, with its newest result. Resumed seeds (continued from a "
           "checkpoint in a later session) are marked with *.", ""]
    for game in sorted({k[0] for k in groups}):
        out += [f"### {game}", "",
                "| rule | seeds | frames per seed | minutes per seed | final eval mean ± std "
                "| best checkpoint eval mean ± std | training mean return reaches | evaluation reaches | curves | machine | commit "
                "| command |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in sorted(k for k in groups if k[0] == game):
            out.append(table_row(key[1], groups[key]))
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def table_row(rule, calls):
    """One row of a game's table: the seeds of `calls` (results.csv rows, oldest first)."""
    if seeds_of(calls[0]) is None:  # an older row, as it was written
        r = calls[0]
        resumed = set(r["resumed_seeds"].split()) if r["resumed_seeds"] else set()
        first = int(r.get("first_seed") or 0)
        seeds = ", ".join(f"{i}{'*' if str(i) in resumed else ''}"
                          for i in range(first, first + int(r["seeds"])))
        return (f"| {rule} | {seeds} | {r['frames_per_seed'].replace(' ', ', ')} "
                f"| {r['wall_min_per_seed'].replace(' ', ', ')} "
                f"| {r['eval_mean']} ± {r['eval_std_over_seeds']} ({r['eval_games']} games each) "
                f"| - | {r['train_time_to_score']} | {r['eval_time_to_score']} | {curves_cell(calls)} "
                f"| {r['machine']} | {r['commit']} | `{r['command']}` |")
    by_seed = {}
    for r in calls:
        for s in seeds_of(r):
            by_seed[s["seed"]] = s  # a later call's run of the same seed replaces it
    seeds = [by_seed[k] for k in sorted(by_seed)]
    th = [float(t) for t in calls[0]["thresholds"].split(",")]
    means = [s["eval_mean"] for s in seeds]
    games = sorted({str(r["eval_games"]) for r in calls})
    unique = lambda xs: list(dict.fromkeys(xs))
    return (
        f"| {rule} | {', '.join(str(s['seed']) + ('*' if s['resumed'] else '') for s in seeds)} "
        f"| {', '.join(str(s['frames']) for s in seeds)} "
        f"| {', '.join(fmt_min(s['wall_min']) for s in seeds)} "
        f"| {statistics.mean(means):.2f} ± {statistics.pstdev(means):.2f} "
        f"({'/'.join(games)} games each) | {best_cell(seeds)} "
        f"| {summarise_time_to_score([s['train'] for s in seeds], th)} "
        f"| {summarise_time_to_score([s['eval'] for s in seeds], th)} "
        f"| {curves_cell(calls)} | {'; '.join(unique(r['machine'] for r in calls))} "
        f"| {'; '.join(unique(r['commit'] for r in calls))} "
        f"| {'<br>'.join(f'`{c}`' for c in unique(r['command'] for r in calls))} |")


def best_cell(seeds):
    """The best checkpoints' evaluations (per_seed's best_eval_mean): mean ± std over the seeds
    that have one, how many, and the frames each was saved at."""
    best = [s for s in seeds if s.get("best_eval_mean") is not None]
    if not best:
        return "-"
    means = [s["best_eval_mean"] for s in best]
    at = ", ".join(fmt_frames(s["best_frames"]) if s.get("best_frames") is not None else "?"
                   for s in best)
    return (f"{statistics.mean(means):.2f} ± {statistics.pstdev(means):.2f} "
            f"({len(best)}/{len(seeds)} seeds; saved at {at} frames)")


def curves_cell(calls):
    links = [os.path.relpath(r["curves"], "docs") for r in calls if r["curves"]]
    if len(links) == 1:
        return f"[png]({links[0]})"
    return ", ".join(f"[png {i + 1}]({l})" for i, l in enumerate(links))


def replace_section(text, section):
    """`text` with its generated section replaced by `section` (appended when it has none)."""
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        rest = text[b:]
        return text[:a] + section.rstrip("\n") + ("\n" if not rest.startswith("\n") else "") + rest
    return text.rstrip("\n") + "\n\n" + section


# ---------------------------------------------------------------------------------------------
# The machine and the code


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
    return f"{os.cpu_count()} cores {model}{gpu}".replace("|", "/")


def commit():
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "--", ".", ":!docs"]).returncode != 0
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


# ---------------------------------------------------------------------------------------------
# Training and evaluating


def seed_numbers(run):
    """The call's seeds: --first-seed S .. S+N-1 (S is 0 in calls made before --first-seed)."""
    first = run.get("first_seed", 0)
    return range(first, first + run["seeds"])


def cores_of(seed, seeds):
    """The cores seed `seed` of `seeds` parallel runs is pinned to, for taskset."""
    c = os.cpu_count() or 1
    lo, hi = seed * c // seeds, (seed + 1) * c // seeds
    return f"{lo}-{hi - 1}"


def checkpoints(logdir):
    return sorted((int(m.group(1)), f) for f in os.listdir(logdir)
                  if (m := re.fullmatch(r"model-(\d+)\.(?:safetensors|pt)", f)))


def trained_minutes(logdir):
    """Wall-clock minutes the seed's newest checkpoint had trained (0 without one)."""
    ck = checkpoints(logdir)
    path = os.path.join(logdir, "metrics.csv")
    if not ck or not os.path.isfile(path):
        return 0.0
    w = wall_at(read_training(path), ck[-1][0])
    return (w or 0.0) / 60


def start(run, seed, logdir, resume, pin=None):
    cmd = [LEARNER, "--game", run["game"], "--seed", str(seed), "--logdir", logdir, *run["flags"]]
    if resume:
        cmd += ["--checkpoint", "latest"]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    print(f"[results] seed {seed}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    log = open(os.path.join(logdir, "learner.log"), "ab")
    ck = checkpoints(logdir) if resume else []
    log.write(f"[results] {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ} "
              f"from {ck[-1][0] if ck else 0} frames: {' '.join(cmd)}\n".encode())
    log.flush()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.log_path, p.log_from = log.name, log.tell()  # this run's output starts there
    RUNNING.append(p)

    def tee():  # learner.log keeps the output (the evaluations are read from it)
        for chunk in iter(lambda: p.stdout.read1(65536), b""):
            log.write(chunk)
            log.flush()
            if pin is None:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        log.close()
    t = threading.Thread(target=tee, daemon=True)
    t.start()
    p.tee = t
    return p


RUNNING = []  # the learners started, stopped together when the call is interrupted


class Interrupted(Exception):
    """The learner was stopped by a signal that scripts/results did not send (the session
    ending, ^C): its seed is not finished and continues with --resume."""


def stopped_on_signal(p):
    """Whether the learner's output says it stopped on a signal: after a clean stop with a
    final checkpoint it exits 0, as at --max-frames, so the exit code cannot tell."""
    with open(p.log_path, "rb") as f:
        f.seek(p.log_from)
        return re.search(rb"^signal \d+: stopping after a final checkpoint", f.read(), re.M) is not None


def finish(p, deadline, seed, logdir):
    ours = False
    try:
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        ours = True
        p.send_signal(signal.SIGINT)  # a clean stop with a final checkpoint
        p.wait()
    except KeyboardInterrupt:
        p.send_signal(signal.SIGINT)  # in case it was ours alone
        p.wait()
        p.tee.join()
        raise Interrupted()
    p.tee.join()
    if not ours and (p.returncode in (-signal.SIGINT, 130, -signal.SIGTERM, 143)
                     or stopped_on_signal(p)):
        raise Interrupted()
    if p.returncode not in (0, -signal.SIGINT, 130):
        raise ResultsError(f"the learner failed (exit {p.returncode}) for seed {seed}; its output "
                           f"is in {os.path.join(logdir, 'learner.log')}")


def evaluate(model, pin=None):
    """`play --eval` of `model` (30 games, standard protocol); its report lands beside it
    (report_of)."""
    cmd = [PLAY, "--model", model, "--eval"]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise ResultsError(f"play --eval {model} failed:\n{out.stderr}")


def report_of(model):
    """Where `play --eval` writes its report of `model` (src/eval.rs, report_path): the
    learner's model-best.safetensors has its own scores in model-best.eval.json, so play's
    report of it is model-best.play-eval.json."""
    stem = os.path.splitext(model)[0]
    return stem + (".play-eval.json" if os.path.basename(stem) == "model-best" else ".eval.json")


BEST = "model-best.safetensors"  # the weights of the best periodic evaluation (--eval-every)


def seed_result(logdir, seed, thresholds, pin=None):
    """Evaluates the seed's last checkpoint, and its best one (model-best.safetensors, chosen by
    the periodic evaluations) when there is one, and measures its curves; writes and returns
    seed-<i>/result.json."""
    ck = checkpoints(logdir)
    if not ck:
        raise ResultsError(f"seed {seed}: no checkpoint in {logdir}")
    evaluate(os.path.join(logdir, ck[-1][1]), pin)
    if os.path.isfile(os.path.join(logdir, BEST)):
        evaluate(os.path.join(logdir, BEST), pin)
    return write_seed_result(logdir, seed, thresholds)


def write_seed_result(logdir, seed, thresholds, say=True):
    """Measures a seed whose last checkpoint has been evaluated (model-<N>.eval.json, from
    `play --eval`) from its files; writes and returns seed-<i>/result.json. ResultsError when
    it has no evaluated checkpoint."""
    ck = checkpoints(logdir) if os.path.isdir(logdir) else []
    report = ck and os.path.join(logdir, f"model-{ck[-1][0]}.eval.json")
    if not ck or not os.path.isfile(report):
        raise ResultsError(f"seed {seed} has not finished (no evaluated last checkpoint in "
                           f"{logdir}); continue with scripts/results --resume "
                           f"{os.path.dirname(logdir)}")
    frames = ck[-1][0]
    with open(report) as f:
        r = json.load(f)
    mean, games = r["mean"], r["episodes"]
    # The best checkpoint's 30 games, new games apart from the 10 that chose it.
    best_mean = best_frames = None
    best_report = report_of(os.path.join(logdir, BEST))
    if os.path.isfile(best_report):
        with open(best_report) as f:
            b = json.load(f)
        best_mean, best_frames = b["mean"], b.get("frames_trained")
    resumed = os.path.isfile(os.path.join(logdir, "resumed"))
    metrics = os.path.join(logdir, "metrics.csv")
    training = read_training(metrics)
    log = os.path.join(logdir, "learner.log")
    log_text = open(log, errors="replace").read() if os.path.isfile(log) else ""
    evals = read_evals(log_text)
    scored = read_training(metrics, read_session_starts(log_text))  # full windows only
    with open(os.path.join(logdir, "config.toml")) as f:
        rule = re.search(r'^algorithm = "(\w+)"', f.read(), re.M).group(1)
    res = {
        "seed": seed, "rule": rule, "frames": frames,
        "wall_min": round((wall_at(training, frames) or 0.0) / 60, 2),
        "eval_mean": mean, "eval_games": games, "resumed": resumed,
        "best_eval_mean": best_mean, "best_frames": best_frames,
        "train_time_to_score": time_to_score(scored, thresholds),
        "eval_time_to_score": time_to_score(eval_points(training, evals), thresholds),
        "training": [[f, w, r] for f, w, r in training if r is not None],
        "evals": [[f, wall_at(training, f), m] for f, m in evals],
    }
    with open(os.path.join(logdir, "result.json"), "w") as f:
        json.dump(res, f)
    if say:
        print(f"[results] seed {seed}: {frames} frames, {fmt_min(res['wall_min'])} min, final eval mean "
              f"{mean:.2f}{' (resumed)' if resumed else ''}"
              f"{'' if best_mean is None else f', best checkpoint ({best_frames} frames) {best_mean:.2f}'}"
              f"; training reaches "
              f"{seed_time_to_score_text(res['train_time_to_score'], thresholds)}; evaluation "
              f"reaches {seed_time_to_score_text(res['eval_time_to_score'], thresholds)}",
              file=sys.stderr, flush=True)
    return res


def train(run, base):
    """Trains (or continues) every seed without a result.json; stops at the first failure."""
    todo = [s for s in seed_numbers(run)
            if not os.path.isfile(os.path.join(base, f"seed-{s}", "result.json"))]
    resumed = {}
    for s in todo:
        d = os.path.join(base, f"seed-{s}")
        os.makedirs(d, exist_ok=True)
        resumed[s] = bool(checkpoints(d))
        if not resumed[s] and os.listdir(d):  # stopped before its first checkpoint: again
            shutil.rmtree(d)
            os.makedirs(d)
        if resumed[s]:
            open(os.path.join(d, "resumed"), "w").close()  # marks the seed's rows as resumed
    left = {s: run["minutes"] - (trained_minutes(os.path.join(base, f"seed-{s}")) if resumed[s] else 0)
            for s in todo}
    try:
        if run["parallel"]:
            pins = {s: cores_of(s - seed_numbers(run).start, run["seeds"]) for s in todo}
            now = time.monotonic()
            procs = {s: start(run, s, os.path.join(base, f"seed-{s}"), resumed[s], pins[s])
                     for s in todo if left[s] > 0}
            for s, p in procs.items():
                finish(p, now + left[s] * 60, s, os.path.join(base, f"seed-{s}"))
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max(1, len(todo))) as pool:
                list(pool.map(lambda s: seed_result(os.path.join(base, f"seed-{s}"), s,
                                                    run["thresholds"], pins[s]), todo))
        else:
            for s in todo:
                d = os.path.join(base, f"seed-{s}")
                if left[s] > 0:
                    p = start(run, s, d, resumed[s])
                    finish(p, time.monotonic() + left[s] * 60, s, d)
                seed_result(d, s, run["thresholds"])
    except (KeyboardInterrupt, Interrupted):
        # Every learner still running (--parallel) stops with a final checkpoint too.
        for p in RUNNING:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in RUNNING:
            p.wait()
        fail(f"interrupted; the finished seeds are kept. Continue with: scripts/results --resume "
             f"{os.path.relpath(base, os.getcwd())}")


# ---------------------------------------------------------------------------------------------
# The report


def plot(base, results, run, out_dir):
    """The seeds' curves side by side (frames | minutes), through the plot venv's matplotlib."""
    os.makedirs(out_dir, exist_ok=True)
    ns = seed_numbers(run)
    data = {"title": f"{run['game']}, {results[0]['rule']}, "
                     f"{f'seed {ns[0]}' if len(ns) == 1 else f'seeds {ns[0]}-{ns[-1]}'}",
            "thresholds": run["thresholds"],
            "seeds": [{"seed": r["seed"], "training": r["training"], "evals": r["evals"]}
                      for r in results]}
    spec = os.path.join(base, "curves.json")
    with open(spec, "w") as f:
        json.dump(data, f)
    png = os.path.join(out_dir, "curves.png")
    subprocess.run([os.path.join(ROOT, "scripts", "plot-venv"),
                    os.path.join(ROOT, "scripts", "results_plot.py"), spec, png], check=True)
    return png


def report(base, run, docs):
    # Measured again from the seeds' files: --report redoes it after a change to this script.
    results = [write_seed_result(os.path.join(base, f"seed-{s}"), s, run["thresholds"],
                                 say=run.get("mode") == "report")
               for s in seed_numbers(run)]
    rule = results[0]["rule"]
    # The call's UTC time, not only its day: two calls on one day keep their own curves.
    out_dir = os.path.join(docs, "results", f"{run['game']}-{rule}-{run['stamp']}")
    png = plot(base, results, run, out_dir)
    th = run["thresholds"]
    means = [r["eval_mean"] for r in results]
    row = {
        "date": run["stamp"], "game": run["game"], "rule": rule, "seeds": run["seeds"],
        "frames_mean": round(statistics.mean(r["frames"] for r in results)),
        "wall_min_mean": f"{statistics.mean(r['wall_min'] for r in results):.1f}",
        "eval_mean": f"{statistics.mean(means):.2f}",
        "eval_std_over_seeds": f"{statistics.pstdev(means):.2f}",
        "eval_means_per_seed": " ".join(f"{m:.2f}" for m in means),
        "eval_games": results[0]["eval_games"], "machine": run["machine"],
        "commit": " ".join([run["commit"]] + [f"(resumed {r['date']} at {r['commit']})"
                                              for r in run.get("resumes", [])]),
        "command": run["command"] + "".join(f"; scripts/results --resume {os.path.relpath(base, ROOT)}"
                                            for _ in run.get("resumes", [])[:1]),
        "curves": os.path.join("docs", os.path.relpath(png, docs)),
        "minutes": f"{run['minutes']:g}",
        "frames_per_seed": " ".join(str(r["frames"]) for r in results),
        "wall_min_per_seed": " ".join(fmt_min(r["wall_min"]) for r in results),
        "resumed_seeds": " ".join(str(r["seed"]) for r in results if r["resumed"]),
        "thresholds": ",".join(f"{t:g}" for t in th),
        "train_time_to_score": summarise_time_to_score([r["train_time_to_score"] for r in results], th),
        "eval_time_to_score": summarise_time_to_score([r["eval_time_to_score"] for r in results], th),
        "results_dir": os.path.relpath(base, ROOT),
        "first_seed": seed_numbers(run).start,
        "per_seed": json.dumps([
            {"seed": r["seed"], "frames": r["frames"], "wall_min": r["wall_min"],
             "eval_mean": r["eval_mean"], "resumed": r["resumed"],
             "best_eval_mean": r["best_eval_mean"], "best_frames": r["best_frames"],
             "train": r["train_time_to_score"], "eval": r["eval_time_to_score"]}
            for r in results]),
    }
    path = os.path.join(docs, "results.csv")
    rows = []
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("results_dir") != row["results_dir"]]
    rows.append(row)
    with open(path, "w", newline="") as f:  # rewritten: older rows get the new columns empty
        w = csv.DictWriter(f, fieldnames=COLUMNS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = os.path.join(docs, "RESULTS.md")
    text = open(md).read() if os.path.isfile(md) else "# Results\n"
    with open(md, "w") as f:
        f.write(replace_section(text, markdown_section(rows)))
    print(f"[results] {os.path.relpath(path, os.getcwd())}: {row}", file=sys.stderr)
    print(f"[results] curves {png}; tables in {md}; runs in {base}", file=sys.stderr)


def on_term(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a session ending): stop as ^C does, resumable


def main():
    # ^C and SIGTERM stop the learner with a final checkpoint and leave the call resumable,
    # also when started in the background (where SIGINT would be inherited ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    a = parse(sys.argv[1:])
    docs = os.path.abspath(a["docs"]) if a["docs"] else os.path.join(ROOT, "docs")
    if a["mode"] == "new":
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        runs = os.path.abspath(a["runs"]) if a["runs"] else os.path.join(ROOT, "runs", "results")
        base = os.path.join(runs, f"{a['game']}-{stamp}")
        os.makedirs(base, exist_ok=True)
        run = {k: a[k] for k in ("game", "minutes", "seeds", "first_seed", "parallel", "thresholds",
                                 "flags")}
        run.update(stamp=stamp, machine=machine(),
                   commit=commit(),  # the code that trains: taken now, not when the runs end
                   command="scripts/results " + " ".join(a["argv"]))
        with open(os.path.join(base, "results.json"), "w") as f:
            json.dump(run, f, indent=1)
    else:
        base = a["dir"]
        with open(os.path.join(base, "results.json")) as f:
            run = json.load(f)
        if a["mode"] == "resume":  # the commit and time of each later session, for the record
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            run.setdefault("resumes", []).append({"date": now, "commit": commit()})
            with open(os.path.join(base, "results.json"), "w") as f:
                json.dump(run, f, indent=1)
    run["mode"] = a["mode"]
    if a["mode"] != "report":
        train(run, base)
    report(base, run, docs)


if __name__ == "__main__":
    try:
        main()
    except ResultsError as e:
        fail(str(e))
