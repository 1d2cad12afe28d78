"""Time every available NLE metric on 1,968 VQA-X-sized items (the target: under 2 minutes).

    python bench/nle_metrics_speed.py [--n 1968] [--tokenizer ptb] [--out bench/nle_metrics_speed.json]

Predictions are the VQA-X test references perturbed deterministically: the first reference with ~20%
of its explanation words dropped, the answer swapped for another item's answer in 30% of items, and the
"So the answer is" marker removed in 5% (unparseable outputs). All three references are kept, as in VQA-X.
"""
import argparse, json, random, time
from pathlib import Path

from mllm_nle.core import load_json, shared_data, save_json
from mllm_nle.metrics import nle_scores, spice_status


def perturbed_predictions(items, seed=0):
    rng = random.Random(seed)
    answers = [it["answer"] for it in items]
    preds = []
    for it in items:
        ref = it["response"][0]
        expl, _, ans = ref.partition(" So the answer is ")
        words = [w for w in expl.split() if rng.random() > 0.2] or expl.split()[:1]
        if rng.random() < 0.3: ans = rng.choice(answers)
        pred = " ".join(words).rstrip(".") + ". So the answer is " + ans + "."
        if rng.random() < 0.05: pred = " ".join(words)
        preds.append(pred)
    return preds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1968)
    ap.add_argument("--tokenizer", default="ptb")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    items = load_json(shared_data("vqax-test.json"))[: a.n]
    preds = perturbed_predictions(items)
    t0 = time.perf_counter()
    r = nle_scores(preds, [it["answer"] for it in items], [it["response"] for it in items], tokenizer=a.tokenizer)
    dt = time.perf_counter() - t0
    summary = dict(n=r["n"], seconds=round(dt, 1), tokenizer=a.tokenizer, accuracy=r["accuracy"],
                   n_unparseable=r["n_unparseable"], n_correct=r["n_correct"],
                   unfiltered={k: v for k, v in r["unfiltered"].items()}, filtered={k: v for k, v in r["filtered"].items()},
                   spice=spice_status())
    print(json.dumps(summary, indent=1))
    print(f"scored {r['n']} items with every available NLE metric (unfiltered + filtered) in {dt:.1f} s")
    if a.out: save_json(Path(a.out), summary)


if __name__ == "__main__":
    main()
