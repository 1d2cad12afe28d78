"""Time the synthetic world on this machine: scenes, rendering, and full training files.

    python bench/world_speed.py [n]      # default n = 10000

Prints one JSON line per stage (seconds). "vqax" is `write_vqax(n_train=n, n_test=0)`: scenes, PNGs,
one question per scene with its positive and up to three MCLE negatives, and `scenes.json`.

The `budget_scenes_and_render` line is the budget the test suite used to assert, moved here because
a timed assert on a shared 2-core machine fails whenever a neighbour is busy: 2000 scenes made and
rendered at 112 px in under 20 s (the test's comment said ~3 s; 0.16 s measured on the 2-core CPU
when it moved). It prints `within_budget`, and the exit status is 1 when the budget is exceeded."""
import json, os, platform, sys, tempfile, time
from mllm_nle import world as W
from mllm_nle import world_data as WD

BUDGET_N, BUDGET_S = 2000, 20.0

def timed(name, fn, n):
    t0 = time.perf_counter(); out = fn(); dt = time.perf_counter() - t0
    print(json.dumps({"stage": name, "n": n, "seconds": round(dt, 2)}), flush=True)
    return out, dt

def budget_check() -> bool:
    "2000 scenes made and rendered within 20 s (the former tests/test_world.py::test_speed_scenes_and_render)."
    t0 = time.perf_counter(); [W.render(s) for s in W.make_scenes(BUDGET_N, seed=5)]; dt = time.perf_counter() - t0
    ok = dt < BUDGET_S
    print(json.dumps({"stage": "budget_scenes_and_render", "n": BUDGET_N, "seconds": round(dt, 2),
                      "budget_seconds": BUDGET_S, "within_budget": ok}), flush=True)
    return ok

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}))
    ok = budget_check()
    scenes, _ = timed("make_scenes", lambda: W.make_scenes(n, seed=0), n)
    timed("render_112", lambda: [W.render(s) for s in scenes], n)
    with tempfile.TemporaryDirectory() as d:
        paths, _ = timed("write_vqax_train", lambda: WD.write_vqax(d, n_train=n, n_test=0, seed=0), n)
        recs = json.load(open(paths[0]))
        levels = {l: sum(r["level"] == l for r in recs) for l in ("positive", "semantic", "image", "instance")}
        print(json.dumps({"records": len(recs), **levels}))
        timed("write_captions", lambda: WD.write_captions(d + "/cap", n=n, seed=0), n)
        timed("write_benchmarks", lambda: WD.write_benchmarks(d + "/bench", n=max(1, n // 10), seed=0), max(1, n // 10))
    sys.exit(0 if ok else 1)
