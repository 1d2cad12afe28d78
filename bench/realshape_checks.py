"""The table of the real-path checks by recipe: which test pins what, for which recipe, and its result in this run.

    python bench/realshape_checks.py                      # runs the tests (a few minutes), then prints the table
    python bench/realshape_checks.py --junit results.xml  # the table from a pytest --junitxml file of an earlier run

The tests are tests/test_realshape.py (the real tokenizers), tests/test_realpath.py (the engine, tiny backbones),
tests/test_realshape_tier.py (the params twins, end to end) and tests/test_gpu_suite.py (the GPU script's dry run)."""
import argparse, subprocess, sys, tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_realshape.py", "tests/test_realpath.py", "tests/test_realshape_tier.py", "tests/test_gpu_suite.py"]
RECIPES = ("MCLE", "DGPref", "HACL", "MCM-DPO")
ALL = set(RECIPES)

CHECKS = [   # (what is checked, recipes it concerns, test file, test name prefix)
    ("real-shaped checkpoints: real tokenizers, ids, vocab, processor/template/generation files", ALL, "test_realshape", "test_checkpoint_is_real_shaped"),
    ("SFT rows train exactly response + end of turn (Qwen; LLaVA as loaded, legacy true, legacy false)", ALL, "test_realshape", "test_sft_rows_train_exactly_the_response"),
    ("every batch layout trains response + end of turn (MCLE, DPO chosen/rejected, HACL LM rows and captions, MCM-DPO 8 rows)", ALL, "test_realshape", "test_every_recipe_layout"),
    ("release prompt formats (llava_v1, dgpref) render as released and keep the boundary", {"DGPref", "HACL", "MCM-DPO"}, "test_realshape", "test_prompt_formats"),
    ("image tokens = image features (and = the pre-flight count), shared Twitter images", ALL, "test_realshape", "test_image_tokens_equal_image_features"),
    ("max_image_tokens=256 keeps a 4000x3000 image at <= 256 tokens", {"MCLE", "HACL"}, "test_realshape", "test_max_image_tokens"),
    ("LLaVA pads to square by default (crop as an option)", {"DGPref", "HACL", "MCM-DPO"}, "test_realshape", "test_llava_pads"),
    ("generation stops at end of turn and parses", ALL, "test_realshape", "test_generation_stops"),
    ("8 samples at T 0.7 with Qwen's generation config are not all the same (control: raw generate gives 1)", {"DGPref"}, "test_realshape", "test_sampling_ignores"),
    ("greedy evaluation has no hidden repetition penalty", ALL, "test_realshape", "test_greedy_has_no_repetition"),
    ("DGPref's DPO arm trains on the real-shaped LLaVA (first loss ln 2), start model beside it", {"DGPref"}, "test_realshape", "test_dgpref_dpo_arm"),
    ("bf16 base: one AdamW step at 5e-7 moves most of a fully trained part (control: pure bf16 moves almost none)", {"HACL", "MCM-DPO", "MCLE", "DGPref"}, "test_realpath", "test_bf16_base"),
    ("a reloaded run gives the in-run log-probs (trained parts, method modules)", {"MCM-DPO", "HACL"}, "test_realpath", "test_reloaded_run"),
    ("schedules default to each release (MCLE, DGPref linear; HACL, MCM-DPO cosine)", ALL, "test_realpath", "test_schedules"),
    ("bad image headers caught when records load; skipped and counted under on_error: skip", ALL, "test_realpath", "test_bad_image_header"),
    ("evaluation opens images lazily, once each", ALL, "test_realpath", "test_generate_opens_images_lazily"),
    ("MCLE arms at equal optimiser steps in epochs mode; loud note for a file with no levels", {"MCLE"}, "test_realpath", "test_mcle_arms"),
    ("parameters cells name every config field (no papermill warnings for valid keys)", ALL, "test_realpath", "test_parameters_cells"),
    ("DGPref without pairs: the figure and first-step checks say so", {"DGPref"}, "test_realpath", "test_dgpref_real_data"),
    ("twins change only paths, sizes and steps", ALL, "test_realshape_tier", "test_twin_changes_only"),
    ("mcle_vqax twin: notebook end to end, quiet, start row, equal steps, level note", {"MCLE"}, "test_realshape_tier", "test_twin_runs_end_to_end_quietly_and_reports_the_start_model[mcle_vqax]"),
    ("dgpref_llava15 twin (LLM decomposer on a tiny Llama, tiny OWL-ViT/BLIP-2/CoLA experts): both notebooks, start row", {"DGPref"}, "test_realshape_tier", "test_twin_runs_end_to_end_quietly_and_reports_the_start_model[dgpref_llava15]"),
    ("hacl_llava15 twin: pretrain + SFT, start row", {"HACL"}, "test_realshape_tier", "test_twin_runs_end_to_end_quietly_and_reports_the_start_model[hacl_llava15]"),
    ("hacl_qwen25vl twin (image tokens capped at 256), start row", {"HACL"}, "test_realshape_tier", "test_twin_runs_end_to_end_quietly_and_reports_the_start_model[hacl_qwen25vl]"),
    ("mcmdpo_twitter twin (paradigm d, 576 tokens per image), start row", {"MCM-DPO"}, "test_realshape_tier", "test_twin_runs_end_to_end_quietly_and_reports_the_start_model[mcmdpo_twitter]"),
    ("mcmdpo_pinterest twin, start row", {"MCM-DPO"}, "test_realshape_tier", "test_twin_runs_end_to_end_quietly_and_reports_the_start_model[mcmdpo_pinterest]"),
    ("bench/gpu_suite.sh --dry-run: every recipe's step in both styles, the DDP launch", ALL, "test_gpu_suite", "test_gpu_suite_dry_run"),
]


def results(junit: Path) -> dict:
    "`{(file stem, test name): passed | failed | skipped}` from a junit file."
    out = {}
    for tc in ET.parse(junit).iter("testcase"):
        stem = tc.get("classname", "").split(".")[-1]
        state = "failed" if tc.find("failure") is not None or tc.find("error") is not None else \
            "skipped" if tc.find("skipped") is not None else "passed"
        out[(stem, tc.get("name"))] = state
    return out


def table(res: dict) -> str:
    lines = ["| check | " + " | ".join(RECIPES) + " | test | result |", "|---|" + "---|" * len(RECIPES) + "---|---|"]
    for what, recipes, stem, prefix in CHECKS:
        got = [s for (f, n), s in res.items() if f == stem and n.startswith(prefix)]
        state = "not run" if not got else "failed" if "failed" in got else "skipped" if "skipped" in got else f"passed ({len(got)})"
        lines.append(f"| {what} | " + " | ".join("✓" if r in recipes else "" for r in RECIPES) + f" | `{stem}::{prefix}` | {state} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--junit", default=None, help="read this junit XML instead of running the tests")
    a = ap.parse_args(argv)
    junit = Path(a.junit) if a.junit else Path(tempfile.mkdtemp())/"realshape.xml"
    if not a.junit:
        subprocess.run([sys.executable, "-m", "pytest", *FILES, "-q", f"--junitxml={junit}"], cwd=ROOT)
    print(table(results(junit)))


if __name__ == "__main__":
    main()
