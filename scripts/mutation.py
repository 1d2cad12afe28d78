"""Mutation testing of the pure scientific core with mutmut 3 (`make mutation`; not part of `make test` or CI).

mutmut mutates whole files (`only_mutate` in setup.cfg); this driver runs only the mutants of the scientific functions
listed in GROUPS, against the fast tests named in setup.cfg, then prints the kill rate per group and every surviving
mutant. A survivor listed in EQUIVALENT (a change no test can observe, with the reason) is counted apart.

    python scripts/mutation.py                 # every group (about 20-30 minutes on 2 cores)
    python scripts/mutation.py losses stats    # the groups whose names contain these words
    python scripts/mutation.py --report        # only the table of the last run
Env: MUTATION_JOBS (parallel mutants, default 2).
"""
import fnmatch, json, os, re, subprocess, sys, time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def fns(module, *names):
    "mutmut's mangled names of `names` (functions, or `Class.` for every method of a class) in `module`."
    return [f"mllm_nle.{module}.xǁ{n[:-1]}ǁ*" if n.endswith(".") else f"mllm_nle.{module}.x_{n}__mutmut_*" for n in names]

GROUPS = {
    "losses": fns("losses", "_f32", "_metric", "_zero", "dpo_loss", "info_nce", "hacl_contrastive_loss", "HACLHead.", "hacl_loss",
                  "_by_condition", "mcm_dpo_loss", "level_codes", "_group_ids", "paired_positive", "mcle_official", "log1mexp",
                  "mcle_bounded", "_level_margin", "mcle_multilevel", "_field", "mcle_loss") + fns("recipes.hacl", "ita_loss"),
    "metric scoring": fns("metrics", "vqa_normalize", "answer_accuracy", "ConsistencyMatrix.", "world_consistency", "singularize",
                          "lexical_proxy_judge", "judge_consistency", "_norm_phrase", "synonym_index", "extract_objects",
                          "chair_scores", "world_synonyms", "scene_objects", "pope_scores", "mmhal_rating", "mmhal_scores",
                          "_ngrams", "_bleu_stats", "_bleu", "rouge_l_f1", "edit_distance", "alttext_scores")
                      + fns("amber", "_expand", "score_generative_item", "_pct", "amber_generative", "_prf", "amber_discriminative"),
    "DGPref scoring and pairing": fns("recipes.dgpref", "caption_score", "build_preference_pairs")
                      + fns("recipes.dgpref_experts", "_centre", "spatial_holds", "spatial_verdict", "scale_verdict", "NoisyExpert.",
                            "world_category", "world_objects", "cell_box", "_norm_text", "OracleExpert.")
                      + fns("recipes.dgpref_pipeline", "caption_prompts", "sample_captions", "merge_programs", "caption_truth",
                            "pair_stage", "pair_quality", "preference_records", "verdict_counts", "records_quality", "exact_pairs_quality"),
    "paired statistics": fns("experiment", "_item_values", "paired_difference", "study_summary")
                      + fns("gym_report", "item_values", "_ratio", "paired_metric", "excludes_zero", "verdict"),
    "gym verdicts": fns("gym_verdicts", "bootstrap_p", "paired_bases", "bh_adjust", "improves", "column_status", "verdict"),
    "gym budget": fns("gym", "count_llm_tokens", "tokens_per_step", "plan_steps", "item_number", "metric_from_rows"),
    "cache keys": fns("experiment", "config_key", "model_id", "file_id")
                      + fns("train", "_weights_fingerprint", "_content_hash", "_read_partial", "precompute_reference_logps",
                            "group_records", "GroupCollator.", "attach_reference_logps")
                      + fns("recipes.mcmdpo_experiment", "with_reference"),
}

# (mutant name glob, regex the mutated line matches, why no test can tell it from the original)
EQUIVALENT = [
    ("mllm_nle.*", r"^(?!def ).*(\bdevice=None\b|\.to\(None\)|_f32\([\w.]+, (None)?\)|to_device\(.*, None\)\)$|"
                   r"torch\.arange\((len\(\w+\)|q\.shape\[0\]), \)|torch\.zeros\(len\(t\), (len\(H\), dtype=torch\.bool, )?\)|^device = (None|device and .*)$)",
     "a device argument dropped or None: a no-op where every tensor and the model are on the CPU (on a GPU it would be a "
     "device-mismatch error, not another number)"),
    ("mllm_nle.losses.x__f32__*", r"if \(device is not None\) (and False|or True)|if device is None else",
     "when _f32 moves a tensor to a device: a no-op on the CPU, where every tensor already is"),
    ("mllm_nle.*", r"F\.normalize\([\w.()]+, (dim=\+1)?\)|\.(sum|max)\(\+1\)",
     "dim 1 for dim -1 (F.normalize's default is dim=1) on the 2-D [rows, features] tensors these functions take"),
    ("mllm_nle.losses.x_info_nce__*", r"torch\.cat\(\[k, extra_keys\.float\(\)\], \)", "torch.cat's default dim is the 0 it had"),
    ("mllm_nle.*", r'float\("(NAN|-INF)"\)', "float() parses 'NAN' and '-INF' as it parses 'nan' and '-inf'"),
    ("mllm_nle.*", r'(raise \w+\(f?"XX.*XX"\)|log\.\w+\((None|f?"XX.*XX")\))$',
     "the text of a log line, or XX added around an error's text: the same error is raised, its words unchanged"),
    ("mllm_nle.train.x_precompute_reference_logps__*", r'tqdm\(todo, (desc=None|desc="XX.*XX"|desc="[^a-z]*")?\)', "the progress bar's label"),
    ("mllm_nle.train.x_*", r'encoding=None|encoding="UTF-8"|open\(part, "a", \)|decode\("UTF-8"\)',
     "the partial file's encoding: it holds json.dumps output (ASCII), and the locale is UTF-8 anyway"),
    ("mllm_nle.train.x_precompute_reference_logps__*",
     r"^(header = dict\(|weights=|batch=)?.*\b(idsXX|nXX|batch_sizeXX|weightsXX|recordsXX|batchXX)=|hexdigest\(\)\[:17\]",
     "a resume-header field renamed, or one more hex digit of a hash: the header is only ever compared with one written by "
     "this same function, so every resume decision is the same"),
    ("mllm_nle.train.x_precompute_reference_logps__*",
     r"^header = dict\((ids=None, |n=len\(ids\), batch_size|ids=hashlib\.sha1\(\"XX\\nXX\"|ids=.*\[:16\], (n=None, )?batch_size=batch_size,)",
     "the header's ids and n dropped or changed: both are functions of the records, whose content hash (ids included, "
     "via repr) is in the header too, so no input changes them without changing that hash"),
    ("mllm_nle.train.x_precompute_reference_logps__*", r"part\.unlink\(missing_ok=(None|False)\)",
     "the partial file always exists here: it was opened for appending above"),
    ("mllm_nle.train.x__read_partial__*", r"except json\.JSONDecodeError: ok = None|if len\(keep\) <= len\(raw\)",
     "ok = None is as false as False; truncating a file to its own length changes nothing"),
    ("mllm_nle.train.x__content_hash__*", r'h\.update\(b"XX\[XX"\)|h\.update\(b"XX\]XX"\)',
     "another constant list delimiter: nested lists still hash apart exactly when they differ"),
    ("mllm_nle.train.x__weights_fingerprint__*", r"x\[:17\]",
     "17 leading values instead of 16 beside the float64 sum: only a sum-preserving swap that involves element 16 could tell them apart"),
    ("mllm_nle.recipes.hacl.x_ita_loss__*", r'F\.cross_entropy\((i2t, pos_t|t2i, pos_i), \)',
     "reduction 'mean' for 'none': the per-row losses are only used through their mean"),
    ("mllm_nle.losses.x_hacl_contrastive_loss__*", r'F\.cross_entropy\(logits, .*\), \)$|info_nce\(.*normalize=(None|True)\)$|info_nce\([^=]*extra_keys=h, \)$|info_nce\(t, v, temperature, \)$',
     "reduction 'mean' where only the mean is used; or normalize=True of rows that are already unit vectors"),
    ("mllm_nle.recipes.hacl.x_ita_loss__*", r"\(v\.sum\(\) [+-] t\.sum\(\) [+-] h\.sum\(\)\) \* 0\.0 [+-] torch",
     "the empty-batch zero: 0·(±a ± b ± c) ± 0·τ is 0 with zero gradients whatever the signs"),
    ("mllm_nle.recipes.hacl.x_ita_loss__*", r"torch\.zeros\(0, (dtype=None)?\)",
     "an empty index tensor: float or long, it is cast with .long() on the next line"),
    ("mllm_nle.losses.x_*", r"for (x in groups|l in levels)\], (dtype=None)?\)$",
     "torch.tensor of Python ints is int64 by default, the dtype it had"),
    ("mllm_nle.losses.x__metric__*", r"if \(x\.numel\(\)\) or True", "the mean of an empty tensor is already nan"),
    ("mllm_nle.losses.x_mcle_multilevel__*", r"if \(len\(hard\)\) or True", "info_nce ignores empty extra keys"),
    ("mllm_nle.losses.x_log1mexp__*", r"x >= -math\.log\(2\)|x > -math\.log\(3\)",
     "the switch point between two formulas that are both accurate there (Mächler 2012): the same value to rounding"),
    ("mllm_nle.gym.x_tokens_per_step__*", r"models\.add_lora\(bb\.model, \)",
     "the LoRA options of the measured copy: ranks and targets change no token that enters the language model"),
    ("mllm_nle.gym.x_tokens_per_step__*", r"requires_grad_\((True|None)\)",
     "which parameters require gradients: the count is of forward passes under enable_grad, which the hook sees either way"),
]

KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def results() -> dict:
    "mutant name -> status, from mutmut's per-file result files."
    from mutmut.stats import status_by_exit_code
    out = {}
    for meta in (ROOT/"mutants"/"mllm_nle").rglob("*.meta"):
        for k, code in json.loads(meta.read_text())["exit_code_by_key"].items(): out[k] = status_by_exit_code[code]
    return out


def diff_line(name: str) -> str:
    "The mutated line(s) of a mutant (its diff's + lines)."
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    rel = name.split(".x")[0].removeprefix("mllm_nle.").replace(".", "/") + ".py"
    d = get_diff_for_mutant(name, path=Path("mllm_nle")/rel)     # (relative to mutants/)
    return " / ".join(l[1:].strip() for l in d.splitlines() if l.startswith("+") and not l.startswith("+++"))


def equivalent(name: str, line: str):
    for glob, rx, why in EQUIVALENT:
        if fnmatch.fnmatch(name, glob) and re.search(rx, line): return why
    return None


def report(groups) -> bool:
    os.chdir(ROOT)
    res, ok = results(), True
    print(f"\n{'group':<28}{'mutants':>8}{'killed':>8}{'survived':>9}{'equivalent':>11}{'kill rate':>10}{'(raw)':>8}")
    survivors = []
    for g in groups:
        names = sorted(n for n in res if any(fnmatch.fnmatch(n, p) for p in GROUPS[g]))
        if not names: print(f"{g:<28}   (no mutants: run it first)"); ok = False; continue
        killed = [n for n in names if res[n] in KILLED]
        rest = [n for n in names if res[n] not in KILLED]
        eq = {n: equivalent(n, diff_line(n)) for n in rest}
        surv = [n for n in rest if eq[n] is None]
        denom = len(names) - (len(rest) - len(surv))
        rate, raw = len(killed) / denom if denom else 1.0, len(killed) / len(names)
        ok &= rate >= 0.9
        print(f"{g:<28}{len(names):>8}{len(killed):>8}{len(surv):>9}{len(rest) - len(surv):>11}{rate:>10.1%}{raw:>8.1%}")
        survivors += [(n, res[n]) for n in surv]
    if survivors:
        print("\nsurviving mutants (pin a test, or list them in EQUIVALENT with the reason):")
        for n, st in survivors: print(f"  {n} [{st}]: {diff_line(n)}")
    return ok


def main(argv):
    only_report = "--report" in argv
    words = [a for a in argv if not a.startswith("--")]
    groups = [g for g in GROUPS if not words or any(w.lower() in g.lower() for w in words)]
    if not only_report:
        env = {**os.environ, "MLLM_NLE_SHARED": os.environ.get("MLLM_NLE_SHARED", str(ROOT.parent/"shared"/"data"))}
        patterns = [p for g in groups for p in GROUPS[g]]
        t0 = time.time()
        r = subprocess.run(["mutmut", "run", "--max-children", os.environ.get("MUTATION_JOBS", "2"), *patterns], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL if os.environ.get("MUTATION_QUIET", "1") == "1" else None)
        print(f"mutmut run: exit {r.returncode}, {time.time() - t0:.0f} s")
    sys.exit(0 if report(groups) else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
