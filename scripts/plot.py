"""Plots runs' returns from their metrics.csv: mean return of the last 100 games against
emulator frames and against wall-clock minutes, one colour per run, the raw curve faint and an
exponentially smoothed one (TensorBoard's smoothing: s = w * s + (1 - w) * x) bold.

Usage: scripts/plot RUN_DIR [RUN_DIR ...] [-o OUT.png] [--smooth W] [--title TITLE]
"""
import argparse
import csv
import os
import sys


def read_run(run_dir):
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        sys.exit(f"error: {run_dir}: no metrics.csv (is it a run directory written by learner?)")
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("mean_return")]
    if not rows:
        sys.exit(f"error: {path}: no finished games yet, nothing to plot")
    frames = [int(r["frames"]) for r in rows]
    wall = [float(r["wall_s"]) for r in rows]
    ret = [float(r["mean_return"]) for r in rows]
    return frames, wall, ret


def smooth(xs, w):
    out, s = [], None
    for x in xs:
        s = x if s is None else w * s + (1 - w) * x
        out.append(s)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.csv)")
    p.add_argument("-o", "--output", help="PNG to write (default: RUN_DIR/returns.png for one run, returns.png for several)")
    p.add_argument("--smooth", type=float, default=0.6, help="smoothing weight in [0, 1) (default 0.6; 0: none)")
    p.add_argument("--title", help="figure title (default: the run names)")
    a = p.parse_args()
    if not 0.0 <= a.smooth < 1.0:
        sys.exit(f"error: --smooth {a.smooth}: must be in [0, 1)")
    out = a.output or (os.path.join(a.runs[0], "returns.png") if len(a.runs) == 1 else "returns.png")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = []
    for i, run in enumerate(a.runs):
        frames, wall, ret = read_run(run)
        name = os.path.basename(os.path.normpath(run))
        names.append(name)
        colour = f"C{i % 10}"
        sm = smooth(ret, a.smooth)
        for ax, xs in ((ax1, [x / 1e6 for x in frames]), (ax2, [x / 60 for x in wall])):
            if a.smooth > 0:
                ax.plot(xs, ret, color=colour, alpha=0.25, linewidth=1)
            ax.plot(xs, sm, color=colour, linewidth=2, label=name)
        best = max(range(len(ret)), key=lambda j: ret[j])
        print(f"{name}: {len(ret)} points; last mean return {ret[-1]:.2f} at {frames[-1]} frames "
              f"({wall[-1] / 60:.1f} min); best {ret[best]:.2f} at {frames[best]} frames "
              f"({wall[best] / 60:.1f} min)")
    ax1.set_xlabel("emulator frames (millions)")
    ax2.set_xlabel("wall-clock minutes")
    for ax in (ax1, ax2):
        ax.set_ylabel("mean return (last 100 games)")
        ax.grid(alpha=0.3)
    if len(a.runs) > 1:
        ax1.legend()
    fig.suptitle(a.title or ", ".join(names))
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        sys.exit(f"error: -o {out}: cannot write: {e.strerror}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
