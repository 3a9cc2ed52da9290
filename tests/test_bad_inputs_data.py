"""Bad inputs to kslm's readers, issue 13 classes 2 and 3: encodings and format detection / hints.

Every malformed case expects a KslmError whose message is ONE line naming the file and line (and the option to
use, for hints); every valid control (a UTF-8 byte-order mark, a first line longer than 64 KiB, CRLF line ends)
reads exactly what the plain file reads: records in = records out, entity / triple counts kept. Labels and keys
(class 4): test_bad_inputs_labels.py; checkpoints and the command line (class 1): test_bad_inputs_ckpt.py."""

import json

import pytest
from bad_inputs import jl, one_line

from kslm.data.formats import read_records_with_lines, read_texts_with_lines, sniff_format
from kslm.data.formats.bio import read_bio
from kslm.data.formats.duie import read_duie
from kslm.data.lm import LMDataModule, read_prompts
from kslm.data.nbce import read_nbce
from kslm.errors import DataError

MARK = "§"  # replaced by the bad bytes


def lm_raw(path, tmp):
    return LMDataModule(data_files=str(path), cache_dir=str(tmp / "cache"))._raw()


# name → (text with one MARK, suffix, reader). The readers are every entry point that reads a text file.
SOURCES = {
    "cluener": (jl({"text": "张三在北京", "label": {"name": {"张三": [[0, 1]]}}}, {"text": f"李四{MARK}去了", "label": {}}),
                ".jsonl", lambda p, t: read_records_with_lines(p)),
    "duie": (jl({"text": "甲乙", "spo_list": []}, {"text": f"丙丁{MARK}", "spo_list": []}), ".jsonl",
             lambda p, t: read_records_with_lines(p, "duie")),
    "canonical-ner": (jl({"text": "张三", "entities": [{"start": 0, "end": 2, "type": "PER"}]},
                         {"text": f"a{MARK}b", "entities": []}), ".jsonl", lambda p, t: read_records_with_lines(p)),
    "canonical-re": ("\n" + jl({"text": f"x{MARK}", "triples": []}), ".jsonl",
                     lambda p, t: read_records_with_lines(p, "canonical")),
    "cmeee": (json.dumps([{"text": "头痛", "entities": []}, {"text": f"发热{MARK}", "entities": []}], ensure_ascii=False,
                         indent=1), ".json", lambda p, t: read_records_with_lines(p)),
    "webnlg": (json.dumps([{"text": f"A {MARK} B", "triple_list": []}], ensure_ascii=False, indent=2), ".json",
               lambda p, t: read_records_with_lines(p, "webnlg")),
    "bio": ("张 B-PER\n三 I-PER\n\n在 O\n" + f"{MARK} O\n", ".txt", lambda p, t: read_records_with_lines(p)),
    "bio-sniffed-late": ("甲 O\n乙 O\n丙 O\n丁 O\n" + f"戊{MARK} O\n", ".bio", lambda p, t: list(read_bio(p))),
    "nbce": (jl({"id": 1, "context": "ab", "question": "q"}, {"id": 2, "context": f"c{MARK}d", "question": "q"}),
             ".jsonl", lambda p, t: read_nbce(p)),
    "prompts-txt": (f"first prompt\nsecond {MARK} prompt\n", ".txt", lambda p, t: read_prompts(p)),
    "prompts-jsonl": (jl({"prompt": "a"}, {"prompt": "b"}, {"prompt": f"c{MARK}"}), ".jsonl", lambda p, t: read_prompts(p)),
    "lm-txt": (f"one paragraph\n\nanother {MARK} one\n", ".txt", lm_raw),
    "lm-jsonl": (jl({"text": "one"}, {"text": f"two {MARK}"}), ".jsonl", lm_raw),
    "predict-jsonl": (jl({"text": "a b"}, {"text": f"c {MARK}"}), ".jsonl", lambda p, t: read_texts_with_lines(p, "webnlg")),
    "predict-array": (json.dumps([{"text": f"甲{MARK}"}], ensure_ascii=False), ".json",
                      lambda p, t: read_texts_with_lines(p, "cluener")),
}
BAD = {"latin1": "é".encode("latin-1"), "gbk": "张".encode("gbk"), "cp1252-quote": "\u201c".encode("cp1252"),
       "continuation": b"\x80", "truncated": "张".encode()[:2]}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("source", SOURCES)
def test_not_utf8_names_file_line_byte_and_column(tmp_path, source, bad):
    text, suffix, read = SOURCES[source]
    before = text[: text.index(MARK)]
    line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
    path = tmp_path / f"in{suffix}"
    path.write_bytes(text.encode().replace(MARK.encode(), BAD[bad]))
    with pytest.raises(DataError) as exc:
        read(path, tmp_path)
    msg = one_line(exc, f"{path}:{line}: not UTF-8 (byte 0x{BAD[bad][0]:02x} at column {column})")
    assert msg == f"{path}:{line}: not UTF-8 (byte 0x{BAD[bad][0]:02x} at column {column})"


# ------------------------------------------------------------------------------------------ valid controls


def _count(recs):
    return len(recs), sum(len(r.get("entities", r.get("triples", []))) for r in recs)


CONTROLS = {  # name → (text, suffix, reader, expected (records, labels))
    "cluener": (jl({"text": "张三在北京", "label": {"name": {"张三": [[0, 1]]}, "address": {"北京": [[3, 4]]}}},
                   {"text": "李四", "label": {}}), ".jsonl", read_records_with_lines, (2, 2)),
    "duie": (jl({"text": "甲演乙", "spo_list": [{"subject": "甲", "predicate": "演", "object": "乙"}]}), ".jsonl",
             read_records_with_lines, (1, 1)),
    "canonical-ner": (jl({"text": "张三", "entities": [{"start": 0, "end": 2, "type": "PER"}]}), ".jsonl",
                      read_records_with_lines, (1, 1)),
    "canonical-re": (jl({"text": "甲乙", "triples": [{"subject": "甲", "predicate": "p", "object": "乙",
                                                    "subject_span": [0, 1], "object_span": [1, 2]}]}), ".jsonl",
                     read_records_with_lines, (1, 1)),
    "cmeee": (json.dumps([{"text": "头痛", "entities": [{"start_idx": 0, "end_idx": 1, "type": "sym", "entity": "头痛"}]},
                          {"text": "发热"}], ensure_ascii=False), ".json", read_records_with_lines, (2, 1)),
    "webnlg": (json.dumps([{"text": "Alan Bean is a pilot", "triple_list": [["Alan Bean", "job", "pilot"]]}]), ".json",
               read_records_with_lines, (1, 1)),
    "bio": ("张 B-PER\n三 I-PER\n\n在 O\n京 S-LOC\n", ".txt", read_records_with_lines, (2, 2)),
    "nbce": (jl({"id": 1, "context": "ab", "question": "q"}, {"context": ["c", "d"], "question": "q"}), ".jsonl",
             read_nbce, (2, 0)),
    "prompts-txt": ("first\n\nsecond\n", ".txt", read_prompts, (2, 0)),
    "prompts-jsonl": (jl({"prompt": "a"}, {"prompt": "b"}), ".jsonl", read_prompts, (2, 0)),
    "predict-jsonl": (jl({"text": "a b"}, {"text": "c", "id": 7}), ".jsonl", lambda p: read_texts_with_lines(p, "webnlg"),
                      (2, 0)),
}


def _write(path, text, bom=False, crlf=False):
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
    return path


@pytest.mark.parametrize("variant", ["bom", "crlf", "bom+crlf"])
@pytest.mark.parametrize("source", CONTROLS)
def test_bom_and_crlf_read_what_the_plain_file_reads(tmp_path, source, variant):
    text, suffix, read, (n_records, n_labels) = CONTROLS[source]
    plain = read(_write(tmp_path / f"plain{suffix}", text))
    odd = _write(tmp_path / f"odd{suffix}", text, bom="bom" in variant, crlf="crlf" in variant)
    got = read(odd)
    strip = [{k: v for k, v in r.items() if k != "line"} for r in got]
    assert strip == [{k: v for k, v in r.items() if k != "line"} for r in plain]
    assert _count(got) == (n_records, n_labels)
    if read is read_records_with_lines:  # the BOM'd CLUENER file is CLUENER, not BIO
        assert sniff_format(odd) == sniff_format(tmp_path / f"plain{suffix}")


def test_bom_lm_corpus_is_read_without_the_mark(tmp_path):
    path = _write(tmp_path / "c.txt", "first paragraph\n\nsecond paragraph\n", bom=True)
    assert [t.strip() for t in lm_raw(path, tmp_path)["text"]] == ["first paragraph", "second paragraph"]


LONG = "甲" * 70_000  # one JSON line of ~210 KB, past the 64 KiB the sniffer used to read
LONG_FIRST = {
    "cluener": (jl({"text": LONG, "label": {"x": {"甲": [[0, 0], [5, 5]]}}}, {"text": "乙", "label": {}}), "cluener", (2, 2)),
    "duie": (jl({"text": LONG + "乙", "spo_list": [{"subject": "甲", "predicate": "p", "object": "乙"}]}), "duie", (1, 1)),
    "canonical-ner": (jl({"text": LONG, "entities": [{"start": 1, "end": 3, "type": "T"}]}, {"text": "乙"}), "canonical",
                      (2, 1)),
    "canonical-re": (jl({"text": LONG + "乙", "triples": [{"subject": "甲", "predicate": "p", "object": "乙",
                         "subject_span": [0, 1], "object_span": [70_000, 70_001]}]}), "canonical", (1, 1)),
    "after-blank-lines": ("\n\n" + jl({"text": LONG, "label": {}}), "cluener", (1, 0)),
}


@pytest.mark.parametrize("source", LONG_FIRST)
def test_first_line_longer_than_64k_is_sniffed_and_kept(tmp_path, source):
    text, fmt, expected = LONG_FIRST[source]
    path = _write(tmp_path / "long.jsonl", text)
    assert sniff_format(path) == fmt
    recs = read_records_with_lines(path)
    assert _count(recs) == expected and len(recs[0]["text"]) >= 70_000
    assert [r["line"] for r in read_texts_with_lines(path, "bio")] == [r["line"] for r in recs]


# ------------------------------------------------------------------------------------- format detection


SNIFF = {  # name → (content, line named, words the message holds)
    "array-of-cluener": (json.dumps([{"text": "甲", "label": {}}]), "record 0", ["cluener files are JSON Lines"]),
    "array-of-duie": (json.dumps([{"text": "甲", "spo_list": []}]), "record 0", ["duie files are JSON Lines"]),
    "array-of-canonical-re": (json.dumps([{"text": "甲", "triples": []}]), "record 0", ["--data.format canonical"]),
    "array-unknown-keys": (json.dumps([{"sentence": "甲"}]), "record 0", ["cannot tell the format", "--data.format"]),
    "array-of-numbers": ("[1, 2]", "record 0", ["expected a JSON object, got int"]),
    "empty-array": ("[]\n", None, ["empty JSON array"]),
    "empty-file": ("", None, ["empty file"]),
    "blank-lines": ("\n \n\t\n", None, ["empty file"]),
    "pretty-printed-object": ('{\n  "text": "甲"\n}\n', 1, ["one record per line"]),
    "object-then-garbage": ('{"text": "甲"} trailing\n', 1, ["Extra data"]),
    "jsonl-unknown-keys": ('\n{"sentence": "甲"}\n', 2, ["cannot tell the format from keys ['sentence']", "--data.format"]),
    "jsonl-misspelled-label": ('{"sentence": "甲", "lable": {}}\n', 1, ["did you mean 'label'", "--data.format cluener"]),
    "jsonl-scalar": ('{"text": 1}\n', 1, ["missing or not a string"]),
    "plain-text": ("just some words\nmore words here\n", 1, ["cannot tell the format", "--data.format"]),
    "csv": ("text,label\n张三,PER\n", 1, ["cannot tell the format"]),
    "broken-array": ('[{"text": "甲"},\n {"text": }]', 2, ["invalid JSON"]),
}


@pytest.mark.parametrize("case", SNIFF)
def test_unrecognisable_files_name_file_line_and_the_option(tmp_path, case):
    content, line, words = SNIFF[case]
    path = _write(tmp_path / "x.data", content)
    with pytest.raises(DataError) as exc:
        read_records_with_lines(path)
    where = f"{path}:{line}" if line is not None else f"{path}:"
    msg = one_line(exc, where, *words)
    assert "fmt=" not in msg and "=True" not in msg


HINTS = {  # name → (content, data.format given, line, words): hints name command-line options, never Python arguments
    "bio-orphan": ("甲 O\n乙 I-PER\n", "bio", 2, ["--data.repair true"]),
    "bio-orphan-after-end": ("甲 B-PER\n乙 E-PER\n丙 M-PER\n", "bio", 3, ["--data.repair true"]),
    "duie-unlocatable": (jl({"text": "甲乙", "spo_list": [{"subject": "丙", "predicate": "p", "object": "乙"}]}), "duie",
                         1, ["--data.skip_unlocatable true"]),
    "webnlg-unlocatable": (json.dumps([{"text": "A B", "triple_list": [["A", "r", "C"]]}]), "webnlg", "record 0",
                           ["--data.skip_unlocatable true"]),
    "duie-given-cluener-file": (jl({"text": "甲", "label": {}}), "duie", 1, ["--data.format cluener"]),
    "cluener-given-canonical-file": (jl({"text": "甲", "entities": []}), "cluener", 1, ["--data.format canonical"]),
    "cluener-given-duie-file": (jl({"text": "甲", "spo_list": []}), "cluener", 1, ["--data.format duie"]),
    "canonical-given-duie-file": ("\n" + jl({"text": "甲", "spo_list": []}), "canonical", 2, ["--data.format duie"]),
    "cmeee-given-webnlg-file": (json.dumps([{"text": "A", "triple_list": []}]), "cmeee", "record 0",
                                ["--data.format webnlg"]),
    "webnlg-given-cmeee-file": (json.dumps([{"text": "A", "entities": []}]), "webnlg", "record 0",
                                ["--data.format canonical or cmeee"]),
    "cluener-given-cmeee-array": (json.dumps([{"text": "A", "entities": []}]), "cluener", 1, ["--data.format cmeee"]),
    "cmeee-given-jsonl": (jl({"text": "A", "entities": []}, {"text": "B"}), "cmeee", 2, ["--data.format canonical"]),
}


@pytest.mark.parametrize("case", HINTS)
def test_hints_name_command_line_options(tmp_path, case):
    content, fmt, line, words = HINTS[case]
    path = _write(tmp_path / "x.data", content)
    with pytest.raises(DataError) as exc:
        read_records_with_lines(path, fmt)
    msg = one_line(exc, f"{path}:{line}", *words)
    assert "fmt=" not in msg and "=True" not in msg


def test_skip_and_repair_count_what_they_did(tmp_path):
    bio = _write(tmp_path / "o.bio", "甲 O\n乙 I-PER\n丙 I-PER\n")
    assert _count(read_records_with_lines(bio, "bio", repair=True)) == (1, 1)
    duie = _write(tmp_path / "d.jsonl", jl({"text": "甲乙", "spo_list": [{"subject": "丙", "predicate": "p", "object": "乙"},
                                                                       {"subject": "甲", "predicate": "p", "object": "乙"}]}))
    from kslm.data.formats import ReadStats

    stats = ReadStats()
    recs = list(read_duie(duie, skip_unlocatable=True, stats=stats))
    assert _count(recs) == (1, 1) and stats.skipped_triples == 1
