"""Draws scripts/results' curves (run by scripts/results with the plot venv's matplotlib):
  python results_plot.py CURVES.json OUT.png
CURVES.json: {"title", "thresholds", "seeds": [{"seed", "training": [[frames, wall_s, mean
return]], "evals": [[frames, wall_s, mean]]}]}. Two panels side by side, against wall-clock
minutes and against frames: each seed's training mean return a thin line, its periodic
evaluations thin dashed lines with dots, the median over seeds of each bold (on a common grid,
over the range every seed covers), the thresholds dotted grey.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def interp(xs, ys, x):
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / ((xs[i] - xs[i - 1]) or 1)
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


def median_curve(curves):
    """curves: [(xs, ys)]: the median over curves on 200 points up to the shortest's end."""
    curves = [c for c in curves if len(c[0]) > 0]
    if len(curves) < 2:
        return None
    end = min(c[0][-1] for c in curves)
    start = max(c[0][0] for c in curves)
    if end <= start:
        return None
    grid = [start + (end - start) * i / 199 for i in range(200)]
    med = []
    for x in grid:
        v = sorted(interp(xs, ys, x) for xs, ys in curves)
        n = len(v)
        med.append(v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2)
    return grid, med


def main():
    spec_path, out = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    fig, (ax_min, ax_frames) = plt.subplots(1, 2, figsize=(12, 4.5))
    axes = ((ax_min, 1, lambda f, w: w / 60), (ax_frames, 0, lambda f, w: f / 1e6))
    for ax, _, x_of in axes:
        for kind, colour, style in (("training", "C0", "-"), ("evals", "C3", "--")):
            curves = []
            for s in spec["seeds"]:
                pts = [p for p in s[kind] if p[1] is not None]
                xs = [x_of(p[0], p[1]) for p in pts]
                ys = [p[2] for p in pts]
                curves.append((xs, ys))
                ax.plot(xs, ys, style, color=colour, alpha=0.35, linewidth=1,
                        marker="." if kind == "evals" else None)
            med = median_curve(curves)
            label = "training mean return (last 100 games)" if kind == "training" else "periodic evaluation"
            if med is not None:
                ax.plot(*med, style, color=colour, linewidth=2.2, label=f"{label}, median over seeds")
            else:
                ax.plot([], [], style, color=colour, label=label)
        for t in spec["thresholds"]:
            ax.axhline(t, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
    ax_min.set_xlabel("wall-clock minutes")
    ax_frames.set_xlabel("frames (millions)")
    ax_min.legend(fontsize=8, loc="best")
    fig.suptitle(f"{spec['title']} (thin: each seed; bold: median; dotted: thresholds)")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        sys.exit(f"error: {out}: cannot write: {e.strerror}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
