"""Put each bug of the "tests that catch the bugs that matter" list back, one at a time, and run its pytest files.

Each bug is a one-line edit of the exported library. It is applied to a throw-away copy of `mllm_nle/` (first on
PYTHONPATH, so the working tree is never touched), the named test files run against it, and the tests that failed are
printed. A bug whose tests all pass is a gap in the tests: the script exits 1.

    python scripts/put_back_bugs.py            # every bug
    python scripts/put_back_bugs.py pairs chair   # the bugs whose names contain these words
"""
import os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T = "tests/test_science_"

BUGS = [  # (name, module file, old text, new text, test files)
    ("DGPref pairs chosen/rejected swapped", "recipes/dgpref.py",
     "out.append((i, j) if scores[i] > scores[j] else (j, i))", "out.append((j, i) if scores[i] > scores[j] else (i, j))", [T + "dgpref.py"]),
    ("DGPref records take the rejected caption as chosen", "recipes/dgpref_pipeline.py",
     'chosen=cap["captions"][c],\n                     rejected=cap["captions"][r]', 'chosen=cap["captions"][r],\n                     rejected=cap["captions"][c]',
     [T + "dgpref.py"]),
    ("DGPref score counts 'object absent' as refuted", "recipes/dgpref.py",
     "refuted += sum(v == REFUTED for v in vs)", "refuted += sum(v in (REFUTED, ABSENT) for v in vs)", [T + "dgpref.py"]),
    ("DGPref score counts 'absent' as verified", "recipes/dgpref.py",
     "verified += sum(v in (SUPPORTED, REFUTED) for v in vs)", "verified += sum(v in (SUPPORTED, REFUTED, ABSENT) for v in vs)", [T + "dgpref.py"]),
    ("gym budget ignores gradient accumulation", "gym.py",
     "tokens=meter.tokens / n_batches * cfg.grad_accum", "tokens=meter.tokens / n_batches", [T + "budget.py"]),
    ("gym budget counts padding", "gym.py", "meter.tokens += int(am.sum())", "meter.tokens += am.numel()", [T + "budget.py"]),
    ("gym budget counts the no-grad reference pass", "gym.py", "if not torch.is_grad_enabled(): return", "pass", [T + "budget.py"]),
    ("HACL InfoNCE without the same-image mask", "recipes/hacl.py",
     'i2t = i2t.masked_fill(same, float("-inf")) / temperature', "i2t = i2t / temperature", [T + "losses.py"]),
    ("HACL t2i without the same-image mask", "recipes/hacl.py",
     't2i = t2i.masked_fill(same_i, float("-inf"))', "t2i = t2i", [T + "losses.py"]),
    ("HACL temperature ignored", "recipes/hacl.py", "t2i = t2i / temperature", "t2i = t2i", [T + "losses.py"]),
    ("paired bootstrap made unpaired", "experiment.py",
     "boots = np.array([diff[s][:, i].mean() for s, i in zip(si, ii)])",
     "boots = np.array([vb[s][:, i].mean() - va[s][:, rng.integers(0, N, N)].mean() for s, i in zip(si, ii)])", [T + "stats.py"]),
    ("paired bootstrap gives a 90% interval", "experiment.py",
     "np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))", "np.quantile(boots, 0.05)), float(np.quantile(boots, 0.95))",
     [T + "stats.py"]),
    ("paired bootstrap does not resample seeds", "experiment.py",
     "boots = np.array([diff[s][:, i].mean() for s, i in zip(si, ii)])", "boots = np.array([diff[:, i].mean() for s, i in zip(si, ii)])",
     [T + "stats.py"]),
    ("gym bootstrap made unpaired", "gym_report.py",
     "d = _ratio(nb, db, draws) - _ratio(na, da, draws)",
     "d = _ratio(nb, db, draws) - _ratio(na, da, {g: p[rng.integers(0, len(p), (n_boot, len(p)))] for g, p in pos.items()})",
     [T + "stats.py"]),
    ("gym bootstrap gives a 90% interval", "gym_report.py", "np.nanquantile(boots, [0.025, 0.975])", "np.nanquantile(boots, [0.05, 0.95])",
     [T + "stats.py"]),
    ("gym bootstrap does not resample seeds", "gym_report.py",
     "boots = np.take_along_axis(d.T, si, axis=1).mean(1)", "boots = d.mean(0)", [T + "stats.py"]),
    ("better/worse rule flipped", "gym_report.py",
     'return "better" if (p["delta"] < 0) == METRICS[p["key"]]["lower"] else "worse"',
     'return "better" if (p["delta"] > 0) == METRICS[p["key"]]["lower"] else "worse"', [T + "stats.py"]),
    ("DGPref sampling ignores the temperature", "recipes/dgpref_pipeline.py",
     "do_sample=True, temperature=cfg.temperature,", "do_sample=True, temperature=1.0,",
     [T + "sampling.py"]),
    ("MCLE margin with the wrong sign", "losses.py", "gap = ml[pos_idx[rows]] - ml[rows]", "gap = ml[rows] - ml[pos_idx[rows]]",
     [T + "losses.py"]),
    ("reference cache header without the weights", "train.py", "weights=_weights_fingerprint(model), ", "", [T + "caches.py"]),
    ("reference cache header without the records' content", "train.py", "records=_content_hash(records).hexdigest()[:16],", "",
     [T + "caches.py"]),
    ("reference cache header without the collator's batch", "train.py", "batch=_content_hash(first).hexdigest()[:16])", ")",
     [T + "caches.py"]),
    ("weights fingerprint of first values only", "train.py", "h.update(repr(float(x.sum(dtype=torch.float64))).encode())", "pass",
     [T + "caches.py"]),
    ("MCM-DPO reference reused after the noise step changes", "recipes/mcmdpo_experiment.py",
     "neg=(cfg.image_negative, cfg.noise_step, cfg.noise_space)", "neg=(cfg.image_negative, cfg.noise_space)", [T + "caches.py"]),
    ("baseline key without gradient accumulation", "experiment.py", '(("ga", cfg.grad_accum, 1), ', "(", [T + "caches.py"]),
    ("an edited data file keeps its key", "recipes/mcle.py", "None, file_id(train_file)", "None, str(train_file)", [T + "caches.py"]),
    ("a model folder overwritten in place keeps its key", "experiment.py", "    if p.is_dir():", "    if False:", [T + "caches.py"]),
    ("CHAIR ground truth not normalised through the synonym table", "metrics.py",
     "gts = {index.get(_norm_phrase(g), g) for g in gt}", "gts = set(gt)", [T + "metrics.py"]),
    ("whole-group sampler drops the last group", "train.py", "    return list(groups.values())", "    return list(groups.values())[:-1]",
     [T + "caches.py"]),
    ("consistency judges unparsed answers", "metrics.py",
     "sup = [judge(q, p.explanation, p.answer) if p.parsed else None", "sup = [judge(q, p.explanation, p.answer) if True else None",
     [T + "metrics.py"]),
    ("world consistency counts unparsed answers as not supporting", "metrics.py",
     'dict(parsed=False, explanation_true=None, supports_answer=None)', 'dict(parsed=False, explanation_true=None, supports_answer=False)',
     [T + "metrics.py"]),
]


def main(words):
    bugs = [b for b in BUGS if not words or any(w.lower() in b[0].lower() for w in words)]
    tmp = Path(tempfile.mkdtemp(prefix="put-back-"))
    pkg = tmp/"mllm_nle"
    shutil.copytree(ROOT/"mllm_nle", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run([sys.executable, "-P", "-c", "import mllm_nle; print(mllm_nle.__file__)"], cwd=ROOT, env=env,
                           capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(tmp)): sys.exit(f"the copy is not what the tests import: mllm_nle comes from {where}")
    gaps, t0 = [], time.time()
    try:
        for name, rel, old, new, tests in bugs:
            f = pkg/rel; src = f.read_text()
            if src.count(old) != 1: sys.exit(f"{name}: the text to change occurs {src.count(old)} times in mllm_nle/{rel}")
            f.write_text(src.replace(old, new))
            try:   # -P: the working directory (the real checkout) must not come first on sys.path
                r = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests],
                                   cwd=ROOT, env=env, capture_output=True, text=True)
            finally: f.write_text(src)
            failed = sorted(set(re.findall(r"^FAILED (\S+)", r.stdout, re.M)))
            if r.returncode == 0 or not failed: gaps.append(name)
            print(f"{'CAUGHT' if failed else 'MISSED'}  {name}  ({rel})", flush=True)
            for t in failed: print(f"        {t.split(' - ')[0]}")
            if r.returncode not in (0, 1): print(r.stdout[-2000:], r.stderr[-2000:])
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{len(bugs) - len(gaps)} of {len(bugs)} bugs caught by pytest in {time.time() - t0:.0f} s")
    if gaps: print("missed:", *gaps, sep="\n  "); sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
