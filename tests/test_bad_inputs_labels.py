"""Bad inputs, issue 13 class 4 (silent label loss) and predict inputs (class 3): a labelled record with a key its
format does not know is an error naming file, line and key (a misspelled label key used to read as "no labels");
a training or validation set without a single gold label is an error unless --data.unlabelled_val says so; a
file of the other task is refused; predict files are recognised on their own, whatever data.format says, and
every record comes out (records in = records out, lines kept)."""

import json

import pytest
from bad_inputs import jl, one_line

from kslm.data.formats import read_records_with_lines
from kslm.data.ner import NERDataModule
from kslm.data.re import REDataModule
from kslm.data.tokenizer import train_tokenizer
from kslm.errors import DataError

CLUENER = {"text": "张三在北京", "label": {"name": {"张三": [[0, 1]]}}}
DUIE = {"text": "甲演乙", "spo_list": [{"subject": "甲", "predicate": "演", "object": "乙"}]}
CANON = {"text": "张三", "entities": [{"start": 0, "end": 2, "type": "PER"}]}
CANON_RE = {"text": "甲乙", "triples": [{"subject": "甲", "predicate": "p", "object": "乙", "subject_span": [0, 1],
                                      "object_span": [1, 2]}]}
CMEEE = {"text": "头痛", "entities": [{"start_idx": 0, "end_idx": 1, "type": "sym", "entity": "头痛"}]}
WEBNLG = {"text": "A is B", "triple_list": [["A", "is", "B"]]}
LABEL_VALUE = {"cluener": {"name": {"张三": [[0, 1]]}}, "duie": [], "canonical": [], "cmeee": [], "webnlg": []}

# name → (format, key replacing the label key, words the message holds)
MISSPELLED = {
    "cluener-labels": ("cluener", "labels", ["did you mean 'label'"]),
    "cluener-lable": ("cluener", "lable", ["did you mean 'label'"]),
    "cluener-Label": ("cluener", "Label", ["did you mean 'label'"]),
    "cluener-entities": ("cluener", "entities", ["--data.format canonical or cmeee"]),
    "cluener-label_list": ("cluener", "label_list", ["expected text, label, id"]),
    "cluener-tags": ("cluener", "tags", ["expected text, label, id"]),
    "duie-spo": ("duie", "spo", ["did you mean 'spo_list'"]),
    "duie-spo_lists": ("duie", "spo_lists", ["did you mean 'spo_list'"]),
    "duie-spolist": ("duie", "spolist", ["did you mean 'spo_list'"]),
    "duie-triples": ("duie", "triples", ["--data.format canonical"]),
    "duie-relations": ("duie", "relations", ["expected text, spo_list, postag, id"]),
    "duie-SPO_LIST": ("duie", "SPO_LIST", ["unknown key 'SPO_LIST'"]),
    "canonical-entitys": ("canonical", "entitys", ["did you mean 'entities'"]),
    "canonical-entites": ("canonical", "entites", ["did you mean 'entities'"]),
    "canonical-entity": ("canonical", "entity", ["did you mean 'entities'"]),
    "canonical-label": ("canonical", "label", ["--data.format cluener"]),
    "canonical-spo_list": ("canonical", "spo_list", ["--data.format duie"]),
    "canonical-triple": ("canonical", "triple", ["did you mean 'triples'"]),
    "canonical-Entities": ("canonical", "Entities", ["did you mean 'entities'"]),
    "cmeee-entitys": ("cmeee", "entitys", ["did you mean 'entities'"]),
    "cmeee-label": ("cmeee", "label", ["--data.format cluener"]),
    "cmeee-ents": ("cmeee", "ents", ["expected text, entities, id"]),
    "cmeee-entity_list": ("cmeee", "entity_list", ["unknown key 'entity_list'"]),
    "webnlg-triples": ("webnlg", "triples", ["--data.format canonical"]),
    "webnlg-triple": ("webnlg", "triple", ["did you mean 'triple_list'"]),
    "webnlg-triplelist": ("webnlg", "triplelist", ["did you mean 'triple_list'"]),
    "webnlg-relations": ("webnlg", "relations", ["expected text, triple_list, id"]),
}
GOOD = {"cluener": CLUENER, "duie": DUIE, "canonical": CANON, "cmeee": CMEEE, "webnlg": WEBNLG}
LABEL_KEY = {"cluener": "label", "duie": "spo_list", "canonical": "entities", "cmeee": "entities", "webnlg": "triple_list"}


@pytest.mark.parametrize("first", [False, True], ids=["later-record", "first-record"])
@pytest.mark.parametrize("case", MISSPELLED)
def test_unknown_key_in_a_labelled_record_names_file_line_and_key(tmp_path, case, first):
    fmt, key, words = MISSPELLED[case]
    bad = {"text": GOOD[fmt]["text"], key: LABEL_VALUE[fmt]}
    if fmt in ("cmeee", "webnlg"):
        path = tmp_path / "x.json"
        path.write_text(json.dumps([bad] if first else [GOOD[fmt], bad], ensure_ascii=False), encoding="utf-8")
        where = "record 0" if first else "record 1"
    else:
        path = tmp_path / "x.jsonl"
        path.write_text(jl(bad) if first else jl(GOOD[fmt], None, bad), encoding="utf-8")
        where = "1" if first else "3"
    with pytest.raises(DataError) as exc:
        read_records_with_lines(path, "auto" if not first else fmt)
    one_line(exc, f"{path}:{where}", f"'{key}'", *words)


# ------------------------------------------------------------------------------------- zero gold labels


def _file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


ZERO = {  # name → (task, train content, val content, option named, words)
    "ner-val-all-empty-labels": ("ner", jl(CLUENER), jl({"text": "李四", "label": {}}, {"text": "王五", "label": {}}),
                                 "val", ["no gold entities", "--data.unlabelled_val true"]),
    "ner-val-is-a-test-split": ("ner", jl(CLUENER), jl({"id": 0, "text": "李四"}), "val", ["--data.unlabelled_val true"]),
    "ner-val-canonical-text-only": ("ner", jl(CANON), jl({"text": "李四"}), "val", ["no gold entities"]),
    "ner-val-bio-all-O": ("ner", "张 B-PER\n三 I-PER\n", "李 O\n四 O\n", "val", ["no gold entities"]),
    "ner-val-cmeee-no-entities": ("ner", json.dumps([CMEEE]), json.dumps([{"text": "发热"}]), "val", ["no gold"]),
    "ner-train-no-entities": ("ner", jl({"text": "李四", "label": {}}), jl(CLUENER), "train", ["no entities"]),
    "ner-train-bio-all-O": ("ner", "李 O\n四 O\n", "张 B-PER\n", "train", ["no entities"]),
    "re-val-empty-spo-lists": ("re", jl(DUIE), jl({"text": "丙丁", "spo_list": []}), "val", ["no gold triples"]),
    "re-val-canonical-no-triples": ("re", jl(CANON_RE), jl({"text": "甲", "triples": []}), "val", ["no gold triples"]),
    "re-val-webnlg-empty": ("re", json.dumps([WEBNLG]), json.dumps([{"text": "C", "triple_list": []}]), "val",
                            ["--data.unlabelled_val true"]),
    "re-train-no-triples": ("re", jl({"text": "甲", "spo_list": []}), jl(DUIE), "train", ["no triples"]),
    "ner-reads-a-duie-file": ("ner", jl(DUIE), jl(DUIE), "train", ["a duie file holds relation-extraction records"]),
    "re-reads-a-cluener-file": ("re", jl(CLUENER), jl(CLUENER), "train", ["a cluener file holds NER records"]),
    "re-reads-a-bio-file": ("re", "张 B-PER\n", "张 B-PER\n", "train", ["a bio file holds NER records"]),
    "ner-reads-canonical-re-records": ("ner", jl(CANON, CANON_RE), jl(CANON), "train:2", ["relation-extraction record"]),
    "re-reads-canonical-ner-records": ("re", jl(CANON_RE, None, CANON), jl(CANON_RE), "train:3", ["no 'triples'"]),
    "ner-val-empty-file": ("ner", jl(CLUENER), "\n", "val", ["empty file"]),
    "re-val-empty-array": ("re", json.dumps([WEBNLG]), "[]", "val", ["empty JSON array"]),
}


def _module(task, train, val, **kw):
    cls = NERDataModule if task == "ner" else REDataModule
    return cls(train, val, batch_size=2, max_length=16, **kw)


@pytest.mark.parametrize("case", ZERO)
def test_no_gold_labels_or_the_wrong_task_is_an_error(tmp_path, case):
    task, train, val, which, words = ZERO[case]
    suffix = ".json" if train.startswith("[") else ".jsonl" if train.startswith("{") else ".txt"
    paths = {"train": _file(tmp_path, "train" + suffix, train), "val": _file(tmp_path, "val" + suffix, val)}
    dm = _module(task, paths["train"], paths["val"], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as exc:
        dm.setup("fit")
    name, _, line = which.partition(":")
    one_line(exc, paths[name] + (f":{line}" if line else ""), *words)


@pytest.mark.parametrize("task", ["ner", "re"])
def test_unlabelled_val_reads_every_record(tmp_path, task):
    train = jl(CLUENER) if task == "ner" else jl(DUIE)
    val = jl({"id": 1, "text": "李四"}, None, {"id": 2, "text": "王五在上海"}) if task == "ner" else \
        jl({"text": "丙丁", "spo_list": []}, {"text": "戊", "spo_list": []})
    dm = _module(task, _file(tmp_path, "t.jsonl", train), _file(tmp_path, "v.jsonl", val), unlabelled_val=True,
                 cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    assert [r["text"] for r in dm.val_set] == [json.loads(x)["text"] for x in val.splitlines() if x.strip()]
    assert len(dm.train_set) == 1 and dm.labels == (["name"] if task == "ner" else ["演"])


def test_bio_repair_option_reads_and_counts(tmp_path, caplog):
    bio = "甲 O\n乙 I-PER\n丙 I-PER\n\n丁 B-LOC\n"
    path = _file(tmp_path, "t.txt", bio)
    with pytest.raises(DataError) as exc:
        NERDataModule(path, path, cache_dir=str(tmp_path / "c")).setup("fit")
    one_line(exc, f"{path}:2, field 'tag'", "--data.repair true")
    dm = NERDataModule(path, path, repair=True, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert [len(r["entities"]) for r in dm.val_set] == [1, 1] and "1 tags without an open entity" in caplog.text


# ------------------------------------------------------------------------------------------ predict inputs


PREDICT = {  # name → (task, data.format of the training config, file suffix, content, texts expected)
    "re-webnlg-config-text-jsonl": ("re", "webnlg", ".jsonl", jl({"text": "A is B"}, {"text": "C"}), ["A is B", "C"]),
    "re-webnlg-config-blank-lines": ("re", "webnlg", ".jsonl", jl(None, {"text": "A"}, None, {"text": "B"}), ["A", "B"]),
    "re-webnlg-config-duie-file": ("re", "webnlg", ".jsonl", jl(DUIE), [DUIE["text"]]),
    "re-duie-config-ids": ("re", "duie", ".jsonl", jl({"text": "甲乙", "id": 1}, {"id": "b", "text": "丙"}), ["甲乙", "丙"]),
    "re-canonical-config-webnlg-array": ("re", "canonical", ".json", json.dumps([WEBNLG, {"text": "D"}]), ["A is B", "D"]),
    "re-duie-config-bom": ("re", "duie", ".jsonl", "\ufeff" + jl({"text": "甲"}), ["甲"]),
    "ner-cmeee-config-cluener-test": ("ner", "cmeee", ".jsonl", jl({"id": 0, "text": "李四"}, {"id": 1, "text": "王五"}),
                                      ["李四", "王五"]),
    "ner-bio-config-canonical": ("ner", "bio", ".jsonl", jl(CANON, {"text": "乙"}), ["张三", "乙"]),
    "ner-cluener-config-cmeee-array": ("ner", "cluener", ".json", json.dumps([CMEEE, {"text": "咳嗽"}]), ["头痛", "咳嗽"]),
    "ner-auto-bio-with-orphan-tag": ("ner", "auto", ".txt", "甲 I-PER\n乙 O\n\n丙 E-LOC\n", ["甲乙", "丙"]),
    "ner-canonical-config-extra-keys": ("ner", "canonical", ".jsonl", jl({"text": "甲", "meta": {"src": 1}}), ["甲"]),
    "re-duie-config-empty-file": ("re", "duie", ".jsonl", "\n\n", []),
    "ner-auto-empty-file": ("ner", "auto", ".txt", "", []),
    "ner-cluener-config-labelled-file": ("ner", "cluener", ".jsonl", jl(CLUENER, {"text": "乙", "label": {}}),
                                         ["张三在北京", "乙"]),
}
TOK = train_tokenizer(["张三在北京李四王五甲乙丙丁头痛咳嗽发热", "A is B C D"], "char", 200, 1)


def _predict(tmp_path, task, fmt, suffix, content):
    path = _file(tmp_path, "in" + suffix, content)
    cls = NERDataModule if task == "ner" else REDataModule
    dm = cls(predict_file=path, format=fmt, max_length=16, cache_dir=str(tmp_path / "cache"))
    dm.connect(TOK)
    dm.setup("predict")
    return path, dm.predict_set


@pytest.mark.parametrize("case", PREDICT)
def test_predict_inputs_are_recognised_on_their_own(tmp_path, case):
    task, fmt, suffix, content, texts = PREDICT[case]
    _, recs = _predict(tmp_path, task, fmt, suffix, content)
    assert [r["text"] for r in recs] == texts and all(r["windows"] for r in recs)  # an empty file: none, and said
    if suffix == ".jsonl":  # lines are the file's lines, blank ones skipped
        assert [r["line"] for r in recs] == [n for n, x in enumerate(content.splitlines(), 1) if x.strip()]


PREDICT_BAD = {  # name → (data.format, suffix, content, line, words)
    "no-text": ("webnlg", ".jsonl", jl({"text": "A"}, {"sentence": "B"}), 2, ["field 'text'"]),
    "text-not-a-string": ("duie", ".jsonl", jl({"text": ["A"]}), 1, ["field 'text'", "got list"]),
    "empty-text": ("canonical", ".jsonl", jl({"text": "A"}, None, {"text": ""}), 3, ["empty text"]),
    "invalid-json-line-3": ("webnlg", ".jsonl", jl({"text": "A"}, {"text": "B"}) + '{"text": "C"\n', 3, ["invalid JSON"]),
    "array-element-not-object": ("duie", ".json", json.dumps([{"text": "A"}, "B"]), "record 1", ["expected a JSON object"]),
    "plain-lines-auto": ("auto", ".txt", "just a sentence\nanother one\n", 1, ["cannot tell the format", "--data.format"]),
    "plain-lines-webnlg": ("webnlg", ".txt", "just a sentence\n", 1, ["invalid JSON"]),
    "object-not-array": ("cmeee", ".json", '{"data": [{"text": "A"}]}', None, ["expected a JSON array of records"]),
}


@pytest.mark.parametrize("case", PREDICT_BAD)
def test_bad_predict_inputs_name_file_and_line(tmp_path, case):
    fmt, suffix, content, line, words = PREDICT_BAD[case]
    task = "ner" if fmt in ("auto", "cluener") else "re"
    path = str(tmp_path / ("in" + suffix))
    with pytest.raises(DataError) as exc:
        _predict(tmp_path, task, fmt, suffix, content)
    one_line(exc, path + (f":{line}" if line is not None else ":"), *words)
