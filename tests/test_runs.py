"""Run files (dpo_retrieval.evaluation.runs): TREC and JSONL, written atomically, read back."""

from __future__ import annotations

import pytest

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.evaluation import runs as runs_mod


def test_run_files_roundtrip_atomically(tmp_path):
    import pytrec_eval

    run = {"q1": {"a": 0.5, "b": 0.9}, "q2": {"c": -1.25}}
    runs_mod.write_run(run, tmp_path / "r.trec")
    assert (tmp_path / "r.trec").read_text().splitlines()[0] == "q1 Q0 b 1 0.900000 dpo-retrieval"
    with open(tmp_path / "r.trec") as f:
        assert pytrec_eval.parse_run(f) == run
    runs_mod.write_run(run, tmp_path / "r.jsonl")
    assert runs_mod.read_run(tmp_path / "r.jsonl") == run and runs_mod.read_run(tmp_path / "r.trec") == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.trec"]
    with pytest.raises(UserInputError, match="is a directory"):
        runs_mod.write_run(run, tmp_path)
    with pytest.raises(UserInputError, match="whitespace"):
        runs_mod.write_run({"q 1": {"a": 1.0}}, tmp_path / "x.trec")
    (tmp_path / "bad.jsonl").write_text('{"query_id": "q1", "results": []}\nnot json\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl:2"):
        runs_mod.read_run(tmp_path / "bad.jsonl")
