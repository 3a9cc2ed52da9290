"""A large Chinese text corpus for the data-path benchmark, generated from the shared corpora (never into the repo).

The lines of the classical poetry corpus, the People's Daily and MSRA NER sentences (their characters joined) and
the CMRC 2018 contexts are pooled; each pass shuffles the pool (seeded) and writes it as paragraphs of 4–24 lines
separated by blank lines (kslm's text loader takes one sample per paragraph), until the file reaches the size asked.

    python bench/make_corpus.py /tmp/kslm-corpus-1g.txt --mb 1024
"""

import argparse
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository


def bio_sentences(path: Path):
    chars = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if chars:
                yield "".join(chars)
            chars = []
        else:
            chars.append(line.split()[0])
    if chars:
        yield "".join(chars)


def pool(data: Path = DATA) -> list:
    lines = [t for t in (data / "chinese_poetry" / "corpus.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
    for f in (data / "peoples_daily_ner" / "example.dev", data / "peoples_daily_ner" / "example.test",
              data / "msra_ner" / "msra_test_bio.txt"):
        lines.extend(bio_sentences(f))
    for f in (data / "cmrc2018").glob("*.json"):
        for article in json.loads(f.read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                lines.extend(t for t in para["context"].split("\n") if t.strip())
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the text file to write (outside the repository, e.g. /tmp/…)")
    ap.add_argument("--mb", type=float, default=1024, help="size to reach, in MB (10^6 bytes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared datasets folder (default: ../shared/data)")
    args = ap.parse_args()
    from kslm.io import atomic_open

    lines, rng, target = pool(args.data), random.Random(args.seed), int(args.mb * 1e6)
    written = 0
    with atomic_open(args.out) as f:  # a stopped run leaves no half corpus
        while written < target:
            rng.shuffle(lines)
            i = 0
            while i < len(lines) and written < target:
                n = rng.randint(4, 24)
                text = "\n".join(lines[i : i + n]) + "\n\n"
                f.write(text)
                written += len(text.encode("utf-8"))
                i += n
    print(f"{args.out}: {written / 1e6:.0f} MB from {len(lines):,} distinct lines")


if __name__ == "__main__":
    main()
