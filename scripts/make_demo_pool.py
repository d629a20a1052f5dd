"""Build the small demo pool shipped in data/demo/ from ../shared/data (run once by maintainers).

Three kinds of candidates, all permissively licensed, so every stage has something to show:
- MMBench's official samples (Apache-2.0): real VLMEvalKit TSV rows with images and hints.
- easy-VQA (MIT) questions turned into multiple choice: shape/colour questions that need the image.
- MMLU (MIT) knowledge questions paired with an unrelated easy-VQA picture: the way leaked,
  blind-answerable items sit in real benchmarks. Screening should drop these.

Deterministic: the same shared data and seed give the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
from pathlib import Path

SHAPES = ["circle", "rectangle", "triangle"]
COLORS = ["red", "green", "blue", "yellow", "teal", "brown", "black", "gray"]
MMLU_SUBJECTS = ["high_school_geography", "high_school_biology", "astronomy", "world_religions", "nutrition", "us_foreign_policy"]


def easy_vqa_items(shared: Path, rng: random.Random, n: int) -> list[dict]:
    questions = json.loads((shared / "easy_vqa/test/questions.json").read_text())
    open_qs = [q for q in questions if q[1] not in ("yes", "no")]
    rng.shuffle(open_qs)
    out = []
    for i, (question, answer, image_id) in enumerate(open_qs[:n]):
        pool = SHAPES if answer in SHAPES else COLORS
        options = [answer] + rng.sample([x for x in pool if x != answer], min(3, len(pool) - 1))
        rng.shuffle(options)
        out.append({"id": f"evqa-{i}", "question": question, "options": options, "answer": "ABCD"[options.index(answer)],
                    "image": f"images/{image_id}.png", "category": "shape" if answer in SHAPES else "color"})
    return out


def mmlu_items(shared: Path, rng: random.Random, n: int, image_ids: list[int]) -> list[dict]:
    rows = []
    for subject in MMLU_SUBJECTS:
        with open(shared / f"controls/mmlu/test/{subject}_test.csv", encoding="utf-8") as fh:
            rows += [(subject, r) for r in csv.DictReader(fh)]
    rng.shuffle(rows)
    out = []
    for i, (subject, r) in enumerate(rows[:n]):
        out.append({"id": f"mmlu-{i}", "question": r["question"], "options": [r[f"choice{k}"] for k in range(4)],
                    "answer": "ABCD"[int(r["answer"])], "image": f"images/{rng.choice(image_ids)}.png", "category": subject})
    return out


def synthetic_items(rng: random.Random, out: Path, n_each: int) -> list[dict]:
    """Charts, counting and geometry pictures drawn here (CC0): the answer is only in the image."""
    from PIL import Image, ImageDraw

    items = []
    fruits = ["apples", "pears", "plums", "figs", "limes", "dates"]
    for i in range(n_each):  # bar chart: statistical reasoning
        names = rng.sample(fruits, 4)
        values = rng.sample(range(2, 20), 4)
        img = Image.new("RGB", (160, 120), "white")
        d = ImageDraw.Draw(img)
        for k, (name, v) in enumerate(zip(names, values)):
            x = 12 + k * 37
            d.rectangle([x, 110 - v * 5, x + 25, 110], fill=(60, 90, 200))
            d.text((x, 111 - v * 5 - 12), name[:4], fill="black")
        fname = f"synthetic/bar_{i}.png"
        img.save(out / fname)
        best = names[values.index(max(values))]
        items.append({"id": f"bar-{i}", "question": "Which fruit has the highest value in the bar chart?", "options": names,
                      "answer": "ABCD"[names.index(best)], "image": fname, "category": "bar chart"})
    for i in range(n_each):  # counting
        n = rng.randint(2, 7)
        img = Image.new("RGB", (120, 120), "white")
        d = ImageDraw.Draw(img)
        cells = rng.sample(range(16), n)
        for c in cells:
            x, y = 8 + (c % 4) * 28, 8 + (c // 4) * 28
            d.ellipse([x, y, x + 20, y + 20], fill=(200, 60, 60))
        fname = f"synthetic/count_{i}.png"
        img.save(out / fname)
        options = sorted({n, *rng.sample([k for k in range(1, 10) if k != n], 3)})
        items.append({"id": f"count-{i}", "question": "How many circles are in the image?", "options": [str(o) for o in options],
                      "answer": "ABCD"[options.index(n)], "image": fname, "category": "counting"})
    for i in range(n_each):  # geometry: the leg lengths are written only in the picture
        a, b = rng.choice([(3, 4), (6, 8), (5, 12), (8, 15), (9, 12), (12, 16)])
        c = int((a * a + b * b) ** 0.5)
        img = Image.new("RGB", (140, 120), "white")
        d = ImageDraw.Draw(img)
        d.polygon([(20, 100), (120, 100), (20, 20)], outline="black")
        d.text((60, 103), str(b), fill="black")
        d.text((8, 55), str(a), fill="black")
        fname = f"synthetic/triangle_{i}.png"
        img.save(out / fname)
        options = [str(c), str(c + 1), str(a + b), str(abs(b - a) + c + 2)]
        options = list(dict.fromkeys(options))[:4]
        while len(options) < 4:
            options.append(str(c + len(options) + 3))
        rng.shuffle(options)
        items.append({"id": f"tri-{i}", "question": "In the right triangle shown, what is the length of the hypotenuse?", "options": options,
                      "answer": "ABCD"[options.index(str(c))], "image": fname, "category": "geometry"})
    cities = ["Avon", "Brill", "Corfe", "Dent", "Eyam", "Frome"]
    for i in range(n_each):  # map: geography (directions are read off the drawn map)
        names = rng.sample(cities, 4)
        spots = rng.sample([(20, 18), (105, 38), (30, 100), (100, 78), (60, 58)], 4)  # distinct heights: one answer
        img = Image.new("RGB", (160, 130), (235, 245, 225))
        d = ImageDraw.Draw(img)
        d.text((140, 4), "N", fill="black")
        d.line([(144, 16), (144, 34)], fill="black")
        for name, (x, y) in zip(names, spots):
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill="black")
            d.text((x + 5, y - 5), name, fill="black")
        fname = f"synthetic/map_{i}.png"
        img.save(out / fname)
        north = names[min(range(4), key=lambda k: (spots[k][1], spots[k][0]))]
        items.append({"id": f"map-{i}", "question": "On this map (north is up), which town lies furthest north?", "options": names,
                      "answer": "ABCD"[names.index(north)], "image": fname, "category": "map"})
    return items


def flawed_rows(evqa: list[dict]) -> list[dict]:
    """Six rows with the defects real pools have, each to be dropped or quarantined by ingest."""
    base = evqa[0]
    return [
        {"id": "flaw-open", "question": "how many shapes are in the image?", "answer": "1", "image": base["image"]},
        {"id": "flaw-key", "question": base["question"], "options": base["options"], "answer": "E", "image": base["image"]},
        {"id": "flaw-dup", "question": base["question"], "options": ["circle", "Circle", "triangle"], "answer": "A", "image": base["image"]},
        {"id": "flaw-escape", "question": base["question"], "options": base["options"], "answer": "A", "image": "../../../etc/passwd"},
        {"id": "flaw-missing", "question": base["question"], "options": base["options"], "answer": "A", "image": "images/no-such-image.png"},
        {"id": "flaw-empty", "question": " ", "options": base["options"], "answer": "A", "image": base["image"]},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-easy-vqa", type=int, default=90)
    ap.add_argument("--n-mmlu", type=int, default=60)
    ap.add_argument("--n-synthetic", type=int, default=20, help="items of each synthetic kind (bar chart, counting, geometry)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)

    shutil.copy(args.shared / "vlmevalkit/MMBench_samples.tsv", out / "mmbench_samples.tsv")
    evqa = easy_vqa_items(args.shared, rng, args.n_easy_vqa)
    used = sorted({int(Path(x["image"]).stem) for x in evqa})
    mmlu = mmlu_items(args.shared, rng, args.n_mmlu, used)
    for image_id in used:
        shutil.copy(args.shared / f"easy_vqa/test/images/{image_id}.png", out / "images" / f"{image_id}.png")
    (out / "synthetic").mkdir()
    synthetic = synthetic_items(rng, out, args.n_synthetic)
    flawed = flawed_rows(evqa)
    for name, items in (("easy_vqa_mcq.jsonl", evqa), ("mmlu_unrelated_image.jsonl", mmlu), ("flawed_rows.jsonl", flawed), ("synthetic_charts.jsonl", synthetic)):
        (out / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    licences = (args.shared / "vlmevalkit/LICENSE.MMBench-samples").read_text()
    (out / "LICENSE.MMBench-samples").write_text(licences)
    (out / "LICENSE.easy-vqa").write_text((args.shared / "easy_vqa/LICENSE").read_text())
    (out / "README.md").write_text(
        "# mmcurate demo pool\n\n"
        "| file | items | licence | what it shows |\n|---|---|---|---|\n"
        "| mmbench_samples.tsv | 54 | Apache-2.0 (LICENSE.MMBench-samples) | MMBench's official samples: VLMEvalKit TSV, base64 images, hints; English and Chinese rows share images |\n"
        f"| easy_vqa_mcq.jsonl + images/ | {len(evqa)} | MIT (LICENSE.easy-vqa) | easy-VQA shape/colour questions turned into multiple choice: they need the image |\n"
        f"| mmlu_unrelated_image.jsonl | {len(mmlu)} | MIT (MMLU, Hendrycks et al.) | MMLU knowledge questions with an unrelated picture: answerable without looking |\n"
        f"| synthetic_charts.jsonl + synthetic/ | {len(synthetic)} | CC0 (drawn by the script) | bar charts, circles to count, right triangles with the leg lengths only in the picture, town maps: math, counting and geography items that need the image |\n"
        f"| flawed_rows.jsonl | {len(flawed)} | CC0 (written for this demo from easy-VQA rows) | the defects real pools have: an open question, a key not among the options, duplicated options, an image path escaping the folder, a missing image, an empty question |\n\n"
        "Built by `python scripts/make_demo_pool.py` from ../shared/data (seed 0).\n"
    )
    print(f"wrote {out}: 54 MMBench samples, {len(evqa)} easy-VQA, {len(mmlu)} MMLU, {len(synthetic)} synthetic, {len(flawed)} flawed rows")


if __name__ == "__main__":
    main()
