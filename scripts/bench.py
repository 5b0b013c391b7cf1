#!/usr/bin/env python3
"""Throughput benchmark of async-rl, in three phases run one after the other:

1. limit:    actor processes step their emulators with random actions and full preprocessing,
             no network and no queue: the ceiling of this machine;
2. acting:   actors act with their networks and fill the queue; the learner drains it without
             training;
3. training: the full system, as `learner` runs it.

Each phase runs for --warmup + --seconds; the numbers are medians (with min and max) of the
learner's metrics intervals (--interval seconds) after the warm-up: emulator frames/s, agent
steps/s (transitions consumed by the learner), updates/s, the learner's busy fraction and the
queue's mean fill; plus CPU use (percent of one core) and peak RSS (VmHWM) per process kind,
sampled from /proc. Prints a table and writes the same as JSON (--out).

With --remote, the actors run on an actor host on this machine (`learner --connect`, over
loopback gRPC) and the learner has none of its own (`--processes 0 --listen 127.0.0.1:0`);
the table then also gives the bytes on the wire per transition (hosts.csv) and the relay's
CPU (the host process itself, its actors apart).

With --gymnasium ID (e.g. CartPole-v1), a comparison instead, side by side in one run: the
limit phase (random actions, no network) of `--game gymnasium:ID` (one Python worker per
environment) and of the Rust CartPole with 2 and 8 actor processes (--gym-processes), and
Gymnasium's own SyncVectorEnv and AsyncVectorEnv stepping the same environment with random
actions (2 and 8 environments) in the gym venv's Python (--python). Frames/s, and the
overhead per step of the Python path: CPU-microseconds per step, taken as
min(processes, cores) / frames/s (the limit phase keeps every core busy; SyncVectorEnv uses
one), minus the Rust CartPole's. An estimate on a shared machine: other work takes cores too.
"""
import argparse, csv, json, os, signal, statistics, subprocess, sys, tempfile, time

CLK = os.sysconf("SC_CLK_TCK")


def actors_of(pid):
    """Pids of the actor processes of learner `pid` (their command line names it)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            args = open(f"/proc/{name}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if len(args) > 3 and args[1] == b"__actor" and args[3] == str(pid).encode():
            found.append(int(name))
    return found


def cpu_ticks(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError):
        return None


def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def summary(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def wait_for_listen(log_path, proc, limit=60):
    """The address a learner with --listen printed."""
    start = time.time()
    while time.time() - start < limit:
        for line in open(log_path):
            if "listening for actor hosts on " in line:
                return line.split("listening for actor hosts on ")[1].split()[0]
        if proc.poll() is not None:
            sys.exit(f"the learner exited ({proc.returncode}); see {log_path}")
        time.sleep(0.1)
    sys.exit(f"the learner did not listen within {limit} s; see {log_path}")


def run_phase(phase, a, workdir):
    logdir = os.path.join(workdir, phase)
    local = 0 if a.remote else a.processes
    cmd = [a.learner, "--bench-phase", phase, "--game", a.game, "--processes", str(local),
           "--envs-per-actor", str(a.envs_per_actor), "--device", a.device,
           "--log-interval", str(a.interval), "--logdir", logdir,
           "--max-frames", str(10**15), "--save-freq", str(10**15)]
    if a.exploration == "steady":
        # Actors at their final epsilons from the first frame, as for all but the first
        # --eps-decay frames of a run (4M of a default 80M).
        cmd += ["--eps-decay", "1"]
    if a.remote:
        cmd += ["--listen", "127.0.0.1:0"]
    cmd += a.extra
    log = open(os.path.join(workdir, f"{phase}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    host = None
    if a.remote:
        addr = wait_for_listen(log.name, proc)
        host_log = open(os.path.join(workdir, f"{phase}-host.log"), "w")
        host = subprocess.Popen([a.learner, "--connect", addr, "--processes", str(a.processes)],
                                stdout=host_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    start = time.time()
    warm_ticks, peaks, actors = None, {}, []
    while time.time() - start < a.warmup + a.seconds and proc.poll() is None:
        time.sleep(0.5)
        actors = actors_of(host.pid if host else proc.pid) or actors
        relay = [host.pid] if host else []
        for pid in [proc.pid] + actors + relay:
            rss = peak_rss_mb(pid)
            if rss is not None:
                peaks[pid] = max(peaks.get(pid, 0), rss)
        if warm_ticks is None and time.time() - start >= a.warmup:
            warm_ticks = {pid: cpu_ticks(pid) for pid in [proc.pid] + actors + relay}
            warm_at = time.time()
    relay = [host.pid] if host else []
    end_ticks = {pid: cpu_ticks(pid) for pid in [proc.pid] + actors + relay}
    measured = time.time() - warm_at if warm_ticks else 0
    if proc.poll() is not None:
        sys.exit(f"{phase}: the learner exited early ({proc.returncode}); see {log.name}")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    if host:
        # Told that the learner stopped, the host waits for it to come back: stop it too.
        host.send_signal(signal.SIGINT)
        host.wait(timeout=60)

    def cpu_percent(pid):
        t0, t1 = (warm_ticks or {}).get(pid), end_ticks.get(pid)
        return None if t0 is None or t1 is None or measured <= 0 else 100 * (t1 - t0) / CLK / measured

    rows = list(csv.DictReader(open(os.path.join(logdir, "metrics.csv"))))
    rows = [r for r in rows if float(r["wall_s"]) > a.warmup][:-1]  # drop the partial last row
    steps = []
    for prev, row in zip(rows, rows[1:]):
        dt = float(row["wall_s"]) - float(prev["wall_s"])
        steps.append((int(row["steps"]) - int(prev["steps"])) / dt)
    actor_cpu = [c for c in (cpu_percent(p) for p in actors) if c is not None]
    wire = None
    if a.remote:
        hosts = list(csv.DictReader(open(os.path.join(logdir, "hosts.csv"))))
        hosts = [float(r["bytes_per_transition"]) for r in hosts
                 if float(r["wall_s"]) > a.warmup and r["bytes_per_transition"]]
        wire = summary(hosts)
    actor_rss = [peaks[p] for p in actors if p in peaks]
    return {
        "frames_per_s": summary([float(r["fps"]) for r in rows]),
        "samples_per_s": summary(steps),
        "updates_per_s": summary([float(r["updates_per_s"]) for r in rows]),
        "learner_busy": summary([float(r["learner_busy"]) for r in rows]),
        "queue_fill": summary([float(r["queue_fill"]) for r in rows]),
        "cpu_percent": {"learner": cpu_percent(proc.pid),
                        "actor_mean": statistics.mean(actor_cpu) if actor_cpu else None,
                        "actors_total": sum(actor_cpu) if actor_cpu else None},
        "peak_rss_mb": {"learner": peaks.get(proc.pid), "actor_max": max(actor_rss) if actor_rss else None},
        "wire_bytes_per_transition": wire,
        "relay_cpu_percent": cpu_percent(host.pid) if host else None,
    }


VECTOR_BENCH = r"""
import sys, time
import gymnasium as gym
kind, env_id, n, warmup, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
make = (lambda: gym.make(env_id))
envs = (gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv)([make] * n)
envs.reset(seed=0)
envs.action_space.seed(0)
steps, t0 = 0, time.perf_counter()
measuring = False
while True:
    envs.step(envs.action_space.sample())
    now = time.perf_counter()
    if not measuring and now - t0 >= warmup:
        measuring, steps, t0 = True, 0, now
    elif measuring:
        steps += n
        if now - t0 >= seconds:
            break
print(steps / (now - t0))
envs.close()
"""


def vector_env_fps(python, kind, env_id, n, a):
    out = subprocess.run([python, "-c", VECTOR_BENCH, kind, env_id, str(n), str(a.warmup),
                          str(a.seconds)], capture_output=True, text=True, timeout=a.warmup + a.seconds + 120)
    if out.returncode != 0:
        sys.exit(f"{kind} vector env with {python}: {out.stderr}")
    return float(out.stdout.split()[-1])


def gymnasium_comparison(a):
    python = a.python or os.path.join(os.environ.get("ASYNC_RL_CACHE", os.path.expanduser("~/.cache/async-rl")),
                                      "gym-venv", "bin", "python")
    counts = [int(x) for x in a.gym_processes.split(",")]
    cores = os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory(prefix="async-rl-bench-") as workdir:
        for game, label in [(f"gymnasium:{a.gymnasium}", "async-rl, Python workers"),
                            ("CartPole", "async-rl, Rust CartPole")]:
            for n in counts:
                print(f"[bench] {game}, {n} actor processes: {a.warmup:.0f} s warm-up + {a.seconds:.0f} s",
                      file=sys.stderr)
                b = argparse.Namespace(**vars(a))
                b.game, b.processes, b.envs_per_actor, b.remote = game, n, 1, False
                if a.python and game.startswith("gymnasium:"):
                    b.extra = ["--python", a.python] + a.extra
                phase_dir = os.path.join(workdir, f"{game.replace(':', '-')}-{n}")
                os.makedirs(phase_dir)
                r = run_phase("limit", b, phase_dir)
                rows.append((label, n, r["frames_per_s"]["median"], r["frames_per_s"]))
        for kind in ["sync", "async"]:
            for n in counts:
                print(f"[bench] Gymnasium {kind} vector env, {n} envs", file=sys.stderr)
                fps = vector_env_fps(python, kind, a.gymnasium, n, a)
                rows.append((f"Gymnasium {kind.capitalize()}VectorEnv", n, fps, None))
    print(f"\n{a.gymnasium}, random actions, {cores} cores (shared machine: other work may run); "
          f"median of {a.interval:.0f}-s intervals over {a.seconds:.0f} s after {a.warmup:.0f} s")
    print(f"{'stepper':34} {'procs/envs':>10} {'frames/s':>10} {'CPU-us/step':>12}")
    rust = {}
    out = []
    for label, n, fps, summ in rows:
        busy = 1 if label.startswith("Gymnasium Sync") else min(n, cores)
        cost = 1e6 * busy / fps
        if label.endswith("Rust CartPole"):
            rust[n] = cost
        out.append({"stepper": label, "n": n, "frames_per_s": fps, "cpu_us_per_step": cost,
                    "intervals": summ})
        print(f"{label:34} {n:>10} {fps:>10.0f} {cost:>12.1f}")
    for n in counts:
        py = next(o["cpu_us_per_step"] for o in out if o["stepper"].endswith("Python workers") and o["n"] == n)
        if n in rust:
            print(f"overhead of the Python path with {n} actor processes: {py - rust[n]:.1f} CPU-us per step "
                  f"over the Rust CartPole's {rust[n]:.1f}")
    json.dump({"gymnasium": a.gymnasium, "cores": cores, "seconds": a.seconds, "warmup": a.warmup,
               "rows": out}, open(a.out, "w"), indent=2)
    print(f"wrote {a.out}")


def fmt(s, scale=1.0, digits=0):
    if not s:
        return "-"
    return f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learner", required=True, help="the learner binary")
    p.add_argument("--game", default="Breakout")
    p.add_argument("--processes", type=int, default=2, help="actor processes")
    p.add_argument("--envs-per-actor", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seconds", type=float, default=60, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=15, help="seconds per phase before measuring")
    p.add_argument("--interval", type=float, default=5, help="seconds per metrics interval")
    p.add_argument("--phases", default="limit,acting,training")
    p.add_argument("--exploration", default="steady", choices=["steady", "start"],
                   help="steady: actors at their final epsilons (most of a run); start: epsilon "
                        "annealing from 1, as in the first --eps-decay frames, where acting skips "
                        "most forward passes")
    p.add_argument("--remote", action="store_true",
                   help="the actors on an actor host over loopback gRPC (learner --connect)")
    p.add_argument("--out", default="bench.json", help="where the JSON goes")
    p.add_argument("--gymnasium", metavar="ID",
                   help="compare gymnasium:ID's Python path with the Rust CartPole and Gymnasium's "
                        "own vector envs (see above) instead of the three phases")
    p.add_argument("--gym-processes", default="2,8",
                   help="--gymnasium: actor processes (and vector envs' environments) to compare")
    p.add_argument("--python", help="--gymnasium: the Python with gymnasium for the vector envs "
                                    "[default: $ASYNC_RL_CACHE/gym-venv/bin/python]")
    p.add_argument("extra", nargs="*", help="more learner flags, after --")
    a = p.parse_args()
    if a.seconds < 3 * a.interval:
        sys.exit(f"--seconds {a.seconds}: need at least 3 intervals of --interval {a.interval}")
    if a.gymnasium:
        return gymnasium_comparison(a)
    phases = [x for x in a.phases.split(",") if x]
    bad = [x for x in phases if x not in ("limit", "acting", "training")]
    if bad:
        sys.exit(f"--phases: unknown {bad}; valid: limit, acting, training")
    if a.remote and "limit" in phases:
        sys.exit("--remote: the limit phase has no transport to measure; give --phases acting,training")
    results = {}
    with tempfile.TemporaryDirectory(prefix="async-rl-bench-") as workdir:
        for phase in phases:
            print(f"[bench] {phase}: {a.warmup:.0f} s warm-up + {a.seconds:.0f} s", file=sys.stderr)
            results[phase] = run_phase(phase, a, workdir)
    limit = results.get("limit", {}).get("frames_per_s")
    for r in results.values():
        fps = r["frames_per_s"]
        r["ratio_to_limit"] = fps["median"] / limit["median"] if fps and limit else None
    where = "on a remote actor host over loopback gRPC" if a.remote else "local"
    print(f"\n{a.game}, {a.processes} actor processes ({where}) x {a.envs_per_actor} envs, {os.cpu_count()} cores, "
          f"{a.exploration} exploration; "
          f"median [min-max] of {a.interval:.0f}-s intervals over {a.seconds:.0f} s after {a.warmup:.0f} s")
    head = f"{'phase':9} {'frames/s':>22} {'ratio':>6} {'samples/s':>18} {'updates/s':>15} {'busy':>6} {'queue':>6} {'CPU% L/A':>11} {'RSS MB L/A':>11}"
    print(head)
    for phase, r in results.items():
        cpu, rss = r["cpu_percent"], r["peak_rss_mb"]
        ratio = f"{r['ratio_to_limit']:.2f}" if r["ratio_to_limit"] is not None else "-"
        cpus = f"{cpu['learner'] or 0:.0f}/{cpu['actor_mean'] or 0:.0f}"
        rsss = f"{rss['learner'] or 0:.0f}/{rss['actor_max'] or 0:.0f}"
        busy = f"{r['learner_busy']['median']:.2f}" if r["learner_busy"] else "-"
        fill = f"{r['queue_fill']['median']:.2f}" if r["queue_fill"] else "-"
        print(f"{phase:9} {fmt(r['frames_per_s']):>22} {ratio:>6} {fmt(r['samples_per_s']):>18} "
              f"{fmt(r['updates_per_s'], digits=1):>15} {busy:>6} {fill:>6} {cpus:>11} {rsss:>11}")
        if a.remote:
            relay = r["relay_cpu_percent"]
            print(f"{'':9} wire bytes per transition {fmt(r['wire_bytes_per_transition'])}, "
                  f"relay CPU {relay or 0:.0f}%")
    json.dump({"game": a.game, "processes": a.processes, "envs_per_actor": a.envs_per_actor,
               "remote": a.remote,
               "exploration": a.exploration,
               "cores": os.cpu_count(), "seconds": a.seconds, "warmup": a.warmup,
               "interval": a.interval, "phases": results}, open(a.out, "w"), indent=2)
    print(f"\n(CPU% is of one core: learner / mean per actor; RSS is the peak: learner / largest actor)\nwrote {a.out}")


if __name__ == "__main__":
    main()
