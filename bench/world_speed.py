"""Time the synthetic world on this machine: scenes, rendering, and full training files.

    python bench/world_speed.py [n]      # default n = 10000

Prints one JSON line per stage (seconds). "vqax" is `write_vqax(n_train=n, n_test=0)`: scenes, PNGs,
one question per scene with its positive and up to three MCLE negatives, and `scenes.json`."""
import json, os, platform, sys, tempfile, time
from mllm_nle import world as W

def timed(name, fn):
    t0 = time.perf_counter(); out = fn(); dt = time.perf_counter() - t0
    print(json.dumps({"stage": name, "n": n, "seconds": round(dt, 2)}), flush=True)
    return out

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}))
    scenes = timed("make_scenes", lambda: W.make_scenes(n, seed=0))
    timed("render_112", lambda: [W.render(s) for s in scenes])
    with tempfile.TemporaryDirectory() as d:
        paths = timed("write_vqax_train", lambda: W.write_vqax(d, n_train=n, n_test=0, seed=0))
        recs = json.load(open(paths[0]))
        levels = {l: sum(r["level"] == l for r in recs) for l in ("positive", "semantic", "image", "instance")}
        print(json.dumps({"records": len(recs), **levels}))
        timed("write_captions", lambda: W.write_captions(d + "/cap", n=n, seed=0))
