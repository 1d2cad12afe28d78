"""Write the small stand-ins in the real file formats that the real-shape twins (params/realshape/*.yaml) read
besides ../shared/data, into params/realshape/standins/ (committed; rerun after changing this script).

    python tools/realshape_standins.py

Every image is one of the shared MCM-DPO sample images (Twitter test / train), referenced by file name under an
image root, except Object HalBench's, which RLAIF-V's format carries inline as base64 (a downscaled copy).

- bench/objhal.jsonl        RLAIF-V obj_halbench_300_with_image.jsonl: {image_id, question, image (base64)}
- bench/objhal_gt.json      {image_id: [COCO objects]} (the CHAIR ground truth the release did not ship)
- bench/pope/<split>.jsonl  POPE: {question_id, image, text, label}
- bench/amber/              AMBER: query/query_{all,generative,discriminative}.json, annotations.json (the real entries up
                            to the largest id used: the loader reads them by position), relation.json and safe_words.txt (copied); the images are Twitter's
- hacl_train.json, hacl_probe.json   HACL's release records: {id, image, text, 'Hallucination caption', conversations}
                            (caption = the alt-text MCM-DPO chose, hallucinated = the one it rejected), plus plain
                            LLaVA conversation records"""
import base64, io, json, shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent/"shared"/"data"
OUT = ROOT/"params"/"realshape"/"standins"
TWITTER = SHARED/"mcm-dpo-samples"/"twitter"

def write(path: Path, obj, lines: bool = False):
    "JSON (JSON Lines with `lines`, one record per line for lists of over 100 records)."
    path.parent.mkdir(parents=True, exist_ok=True)
    lines_of = lambda rs: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs)
    text = lines_of(obj) if lines else "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in obj) + "\n]\n" \
        if isinstance(obj, list) and len(obj) > 100 else json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")

def b64_jpeg(path: Path, side: int = 96) -> str:
    im = Image.open(path).convert("RGB"); im.thumbnail((side, side))
    buf = io.BytesIO(); im.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()

def mcm_train():
    recs = json.loads((TWITTER/"twitter_train.json").read_text())
    return [(r["image_path"], json.loads(r["text"])) for r in recs]

def bench(test_images: list[str]):
    objects = [["person", "text"], ["dog"], ["person"], ["car", "person"]]
    write(OUT/"bench"/"objhal.jsonl", [{"image_id": i + 1, "question": "Describe this image in detail.",
                                        "image": b64_jpeg(TWITTER/"image"/"twitter_test"/f)} for i, f in enumerate(test_images[:2])], lines=True)
    write(OUT/"bench"/"objhal_gt.json", {str(i + 1): objects[i] for i in range(2)})
    for k, split in enumerate(("random", "popular", "adversarial")):
        write(OUT/"bench"/"pope"/f"{split}.jsonl",
              [{"question_id": 2 * k + j, "image": test_images[j], "text": f"Is there a {o} in the image?", "label": lab}
               for j, (o, lab) in enumerate((("person", "yes"), ("giraffe", "no")))], lines=True)
    ann = json.loads((SHARED/"amber"/"annotations.json").read_text())
    disc = json.loads((SHARED/"amber"/"query"/"query_discriminative.json").read_text())
    gen_ids, disc_q = [1, 2], disc[:2]
    qgen = [{"id": i, "image": test_images[j], "query": "Describe this image."} for j, i in enumerate(gen_ids)]
    qdisc = [{**q, "image": test_images[j]} for j, q in enumerate(disc_q)]
    a = OUT/"bench"/"amber"
    write(a/"query"/"query_generative.json", qgen); write(a/"query"/"query_discriminative.json", qdisc)
    write(a/"query"/"query_all.json", qgen + qdisc)
    keep = {q["id"] for q in qgen + qdisc}
    write(a/"annotations.json", ann[:max(keep)])   # AMBER's loader reads annotations by position: ids 1..the largest used
    for f in ("relation.json", "safe_words.txt"): shutil.copyfile(SHARED/"amber"/f, a/f)

def hacl():
    pairs = mcm_train()
    def rec(i, img, q):
        cap = q["chosen"]
        return {"id": f"hacl-{i}", "image": f"twitter_train/{img}", "text": cap, "Hallucination caption": q["rejected"],
                "dataset_name": "twitter", "task_type": "pretrain",
                "conversations": [{"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": cap}]}
    sft = [{"id": f"sft-{i}", "image": f"twitter_train/{img}",
            "conversations": [{"from": "human", "value": "<image>\nWrite alt-text for this image."}, {"from": "gpt", "value": q["chosen"]}]}
           for i, (img, q) in enumerate(pairs[6:8])]
    write(OUT/"hacl_train.json", [rec(i, img, q) for i, (img, q) in enumerate(pairs[:6])] + sft)
    write(OUT/"hacl_probe.json", [rec(10 + i, img, q) for i, (img, q) in enumerate(pairs[8:10])])

def main():
    test_images = sorted(p.name for p in (TWITTER/"image"/"twitter_test").iterdir())
    bench(test_images); hacl()
    print(f"wrote {OUT}: {sorted(p.relative_to(OUT).as_posix() for p in OUT.rglob('*') if p.is_file())}")

if __name__ == "__main__":
    main()
