"""BEIR datasets (dpo_retrieval.data.beir): name and path resolution, the download, loading a split,
and bad files reported as ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_retrieval.data import beir as beir_mod
from dpo_retrieval.errors import UserInputError

CORPUS = {
    "d1": ("Insulin", "insulin response in mice with diabetes"),
    "d2": ("Heart", "heart disease risk is increased by high blood pressure"),
    "d3": ("Sleep", "sleep in children and infants"),
    "d4": ("", "tumor growth signal pathway in cancer cells"),
    "d5": ("Virus", "virus infection and the immune response"),
    "d6": ("Vitamin", "vitamin levels in women and men"),
}
QUERIES = {"q1": "insulin in mice", "q2": "what causes heart disease", "q3": "virus infection", "q9": "unjudged"}
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d6", 1), ("q3", "d5", 1)]


def make_dataset(root: Path, *, corpus_lines: list[str] | None = None, query_lines: list[str] | None = None,
                 qrels: list[tuple] | None = None, split: str = "test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if corpus_lines is None:
        corpus_lines = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    if query_lines is None:
        query_lines = [json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()]
    (root / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (root / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, r)) for r in (qrels if qrels is not None else QRELS)]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture()
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv(beir_mod.DATA_ENV, str(root))
    make_dataset(root / "toy")
    return root


# ----------------------------------------------------------------------------------------------
# resolution
def test_name_resolves_under_data_root(data_root):
    assert beir_mod.dataset_dir("toy") == data_root / "toy"
    ds = beir_mod.load_beir("toy")
    assert ds.name == "toy" and ds.path == data_root / "toy" and ds.split == "test"
    assert ds.doc_ids == list(CORPUS) and set(ds.queries) == {"q1", "q2", "q3"}  # judged queries only
    assert ds.qrels["q2"] == {"d2": 2, "d6": 1}
    assert list(ds.doc_texts())[:4] == ["Insulin insulin response in mice with diabetes",
                                        "Heart heart disease risk is increased by high blood pressure",
                                        "Sleep sleep in children and infants", "tumor growth signal pathway in cancer cells"]


def test_default_root(monkeypatch):
    monkeypatch.delenv(beir_mod.DATA_ENV, raising=False)
    assert beir_mod.data_root() == Path("~/.cache/dpo_retrieval/datasets").expanduser()


def test_path_is_used_as_is(tmp_path, monkeypatch, data_root):
    make_dataset(tmp_path / "elsewhere" / "mine")
    assert beir_mod.load_beir(str(tmp_path / "elsewhere" / "mine")).name == "mine"
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert beir_mod.resolve_dataset("./mine") == Path("mine")
    with pytest.raises(UserInputError, match="no such dataset directory"):
        beir_mod.resolve_dataset("./absent")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        beir_mod.resolve_dataset(str(tmp_path / "afile"))


def test_unknown_name_says_which_folder(data_root):
    with pytest.raises(UserInputError) as err:
        beir_mod.load_beir("no-such-set")
    msg = str(err.value)
    assert str(data_root / "no-such-set") in msg and "not a BEIR dataset name" in msg and "\n" not in msg


def test_offline_beir_name_says_which_folder(data_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError) as err:
        beir_mod.load_beir("nfcorpus")
    msg = str(err.value)
    assert "offline" in msg and f"create {data_root / 'nfcorpus'}" in msg and beir_mod.DATA_ENV in msg


def _online(monkeypatch, download=None):
    """No offline switches, and BEIR's downloader replaced by ``download`` (None: it is missing)."""
    import sys
    import types

    import beir

    for var in beir_mod.OFFLINE_ENVS:
        monkeypatch.delenv(var, raising=False)
    fake = types.ModuleType("beir.util")  # beir.util itself needs requests, absent in some installs
    if download is not None:
        fake.download_and_unzip = download
        monkeypatch.setitem(sys.modules, "beir.util", fake)
        monkeypatch.setattr(beir, "util", fake, raising=False)
    else:
        monkeypatch.setitem(sys.modules, "beir.util", None)  # import fails
        monkeypatch.delattr(beir, "util", raising=False)


def test_download_with_beirs_downloader(data_root, monkeypatch):
    calls = []

    def fake_download(url, out_dir, chunk_size=1024):
        calls.append(url)
        return str(make_dataset(Path(out_dir) / "nfcorpus"))

    _online(monkeypatch, fake_download)
    ds = beir_mod.load_beir("nfcorpus")
    assert calls == [beir_mod.BEIR_URL.format(name="nfcorpus")] and ds.path == data_root / "nfcorpus"
    assert sorted(p.name for p in data_root.iterdir()) == ["nfcorpus", "toy"]  # no temporary folders left
    beir_mod.load_beir("nfcorpus")
    assert len(calls) == 1  # present now: no second download


def test_failed_download_says_which_folder(data_root, monkeypatch):
    def fail(url, out_dir, chunk_size=1024):
        raise ConnectionError("Name or service not known")

    _online(monkeypatch, fail)
    with pytest.raises(UserInputError, match=r"cannot download 'scifact' \(ConnectionError") as err:
        beir_mod.load_beir("scifact")
    assert f"create {data_root / 'scifact'}" in str(err.value)
    assert sorted(p.name for p in data_root.iterdir()) == ["toy"]


def test_missing_downloader_says_which_folder(data_root, monkeypatch):
    _online(monkeypatch, None)
    with pytest.raises(UserInputError, match="BEIR's downloader cannot run") as err:
        beir_mod.load_beir("scifact")
    assert f"create {data_root / 'scifact'}" in str(err.value)


# ----------------------------------------------------------------------------------------------
# bad files: file:line errors
def test_missing_split_lists_the_others(data_root):
    with pytest.raises(UserInputError, match=r"test\.tsv.*no 'dev' split|dev\.tsv: no 'dev' split; this dataset has: test"):
        beir_mod.load_beir("toy", "dev")


@pytest.mark.parametrize("kind, expect", [
    ("bad_json", r"corpus\.jsonl:3: invalid JSON"),
    ("no_id", r"corpus\.jsonl:2: missing \"_id\""),
    ("dup_id", r"corpus\.jsonl:7: duplicate _id 'd1'"),
    ("query_no_id", r"queries\.jsonl:2: missing \"_id\""),
    ("unknown_doc", r"test\.tsv:3: corpus-id 'd404' is not in the corpus"),
    ("unknown_query", r"test\.tsv:2: query-id 'q404' is not in queries\.jsonl"),
    ("bad_score", r"test\.tsv:2: score 'high' is not an integer"),
    ("corpus_dir", r"corpus\.jsonl: is a directory"),
])
def test_bad_dataset_files(tmp_path, kind, expect):
    corpus = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    queries = [json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()]
    qrels = list(QRELS)
    if kind == "bad_json":
        corpus[2] = '{"_id": "d3", "text": '
    elif kind == "no_id":
        corpus[1] = json.dumps({"title": "x", "text": "y"})
    elif kind == "dup_id":
        corpus.append(corpus[0])
    elif kind == "query_no_id":
        queries[1] = json.dumps({"text": "y"})
    elif kind == "unknown_doc":
        qrels[1] = ("q2", "d404", 1)
    elif kind == "unknown_query":
        qrels[0] = ("q404", "d1", 1)
    elif kind == "bad_score":
        qrels[0] = ("q1", "d1", "high")
    root = make_dataset(tmp_path / "bad", corpus_lines=corpus, query_lines=queries, qrels=qrels)
    if kind == "corpus_dir":
        (root / "corpus.jsonl").unlink()
        (root / "corpus.jsonl").mkdir()
    with pytest.raises(UserInputError, match=expect) as err:
        beir_mod.load_beir(str(root))
    assert "\n" not in str(err.value)


def test_blank_lines_are_tolerated(tmp_path):
    corpus = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    root = make_dataset(tmp_path / "blank", corpus_lines=corpus[:3] + [""] + corpus[3:])
    assert beir_mod.load_beir(str(root)).doc_ids == list(CORPUS)


def test_load_beir_reads_a_clean_dataset_with_beirs_loader(tmp_path, monkeypatch):
    """A clean dataset is read once by BEIR's GenericDataLoader; the line-by-line diagnosis is for bad files
    (stage A moved the loader's log filter away from the reader, so every load fell back to the slow path)."""
    make_dataset(tmp_path / "toy")
    monkeypatch.setattr(beir_mod, "_diagnose", lambda *a, **k: pytest.fail("re-read line by line"))
    ds = beir_mod.load_beir(str(tmp_path / "toy"), "test")
    assert ds.qrels and ds.corpus


def test_duplicate_ids_name_the_first_line_in_corpus_and_queries(tmp_path):
    """One id check for both BEIR files: a repeated _id names the line it first appeared on."""
    queries = [json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()]
    root = make_dataset(tmp_path / "dupq", query_lines=queries + [queries[1]])
    with pytest.raises(UserInputError, match=r"queries\.jsonl:5: duplicate _id 'q2' \(first on line 2\)$"):
        beir_mod.read_queries(root / "queries.jsonl")
    corpus = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in CORPUS.items()]
    root = make_dataset(tmp_path / "dupc", corpus_lines=corpus + [corpus[0]])
    with pytest.raises(UserInputError, match=r"corpus\.jsonl:7: duplicate _id 'd1' \(first on line 1\)$"):
        list(beir_mod.iter_corpus(root / "corpus.jsonl"))
