"""Image tokens per image for the shared MCM-DPO samples (../shared/data/mcm-dpo-samples: Twitter and Pinterest, train and
test), through Qwen2.5-VL-3B-Instruct's real image processor (preprocessor_config.json: min 3,136 / max 12,845,056 pixels,
28 px per token) at its own limit and at `max_image_tokens` caps, and through LLaVA-1.5's (576 whatever the size). Counted
from the image headers with the library's rule (`inputs.image_tokens`, the count `build_batch` makes: tests/test_realshape.py
checks that they agree). Also the LM tokens an MCM-DPO record of the largest image would give (eight rows).

    python bench/image_token_report.py [--caps 1280,256] [--out outputs/bench/image_tokens.json]"""
import argparse, statistics, sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"bench"))
from bench_io import emit  # noqa: E402

from mllm_nle import inputs, realshape  # noqa: E402
from mllm_nle.core import shared_data  # noqa: E402


class _Proc:
    "Just an image processor (no tokenizer needed): Qwen's real one, or LLaVA's."
    def __init__(self, ip, patch_size=None): self.image_processor, self.patch_size = ip, patch_size


def processors():
    from transformers import CLIPImageProcessor, Qwen2VLImageProcessor
    q = {k: v for k, v in realshape.QWEN_PREPROCESSOR.items() if k not in ("image_processor_type", "processor_class")}
    l = {k: v for k, v in realshape.LLAVA_PREPROCESSOR.items() if k not in ("image_processor_type", "processor_class")}
    return _Proc(Qwen2VLImageProcessor(**q)), _Proc(CLIPImageProcessor(**l), patch_size=14)


def summary(counts): return dict(n=len(counts), min=min(counts), median=statistics.median(counts), max=max(counts), total=sum(counts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="1280,256", help="max_image_tokens caps to report beside the checkpoint's own limit")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    root = shared_data("mcm-dpo-samples")
    if not root.exists(): sys.exit(f"no samples at {root}")
    caps = [int(c) for c in a.caps.split(",") if c]
    files = {f"{plat}/{split}": sorted((root/plat/"image"/f"{plat}_{split}").iterdir())
             for plat in ("twitter", "pinterest") for split in ("train", "test")}
    sizes = {k: [Image.open(p).size for p in v] for k, v in files.items()}
    res = dict(source=str(root), qwen={}, llava={}, largest={})
    for cap in [None, *caps]:
        qwen, llava = processors()
        inputs.cap_image_tokens(qwen, cap)
        name = "default (12,845,056 px)" if cap is None else f"max_image_tokens={cap}"
        res["qwen"][name] = {k: summary([inputs.image_tokens(qwen, w, h) for w, h in v]) for k, v in sizes.items()}
        res["qwen"][name]["all"] = summary([inputs.image_tokens(qwen, w, h) for v in sizes.values() for w, h in v])
        big = max((wh for v in sizes.values() for wh in v), key=lambda wh: wh[0] * wh[1])
        res["largest"][name] = dict(size=f"{big[0]}x{big[1]}", image_tokens=inputs.image_tokens(qwen, *big),
                                    mcmdpo_record_image_tokens=8 * inputs.image_tokens(qwen, *big))
    res["llava"] = {k: summary([inputs.image_tokens(llava, w, h) for w, h in v]) for k, v in sizes.items()}
    print("| processor | cap | images | min | median | max |\n|---|---|---|---|---|---|")
    for name, by in res["qwen"].items():
        for k, s in by.items(): print(f"| Qwen2.5-VL | {name} | {k} ({s['n']}) | {s['min']} | {s['median']:g} | {s['max']} |")
    for k, s in res["llava"].items(): print(f"| LLaVA-1.5 | fixed | {k} ({s['n']}) | {s['min']} | {s['median']:g} | {s['max']} |")
    return emit(res, a.out, indent=1)


if __name__ == "__main__":
    main()
