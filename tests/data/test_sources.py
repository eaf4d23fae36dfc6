"""Prompt sources: every format, bad rows with reason and row number, duplicates, stable ids."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aipo_ray.config import PromptsConfig, PromptSourceConfig
from aipo_ray.data.sources import PromptSourceError, load_prompts, seed_prompts_path
from aipo_ray.storage import make_prompt_id


def load(path, max_prompt_chars=8000, **src):
    cfg = PromptsConfig(sources=[PromptSourceConfig(path=str(path), **src)],
                        max_prompt_chars=max_prompt_chars)
    return load_prompts(cfg)


def reasons(loaded):
    return {(r["_row"], r["reason"].split(":")[0]) for r in loaded.rejected}


def test_jsonl_bad_rows_are_rejected_with_reason_and_line_number(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"prompt": "What is the capital of France?"}).encode(),   # 1 ok
        b'{"prompt": "unterminated',                                         # 2 malformed
        json.dumps({"prompt": 42}).encode(),                                 # 3 wrong type
        json.dumps({"prompt": "   "}).encode(),                              # 4 empty
        b"",                                                                 # 5 blank: not a row
        '{"prompt": "caf\u00e9 ok"}'.encode()[:-10] + b"\xff\xfe" + b'ok"}',  # 6 invalid utf-8
        json.dumps({"text": "no prompt field"}).encode(),                    # 7 missing
        json.dumps({"prompt": "x" * 50}).encode(),                           # 8 too long
        json.dumps(["a", "list"]).encode(),                                  # 9 not an object
        json.dumps({"prompt": "What is  the capital of France? "}).encode(),  # 10 duplicate of 1
        json.dumps({"prompt": "Name a prime number."}).encode(),             # 11 ok
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    loaded = load(path, max_prompt_chars=40)
    assert loaded.table.column("prompt").to_pylist() == [
        "What is the capital of France?", "Name a prime number."]
    assert loaded.rows_in == 10
    assert reasons(loaded) == {
        (2, "malformed_json"), (3, "wrong_type"), (4, "empty_prompt"), (6, "invalid_utf8"),
        (7, "missing_field"), (8, "too_long"), (9, "wrong_type"), (10, "duplicate")}
    assert all(r["_source"] == str(path) for r in loaded.rejected)
    dup = next(r for r in loaded.rejected if r["_row"] == 10)
    assert dup["reason"].endswith(f"{path}:1") and dup["prompt_id"] == make_prompt_id(
        "What is the capital of France?")
    assert loaded.rejected_counts == {"malformed_json": 1, "wrong_type": 2, "empty_prompt": 1,
                                      "invalid_utf8": 1, "missing_field": 1, "too_long": 1,
                                      "duplicate": 1}


def test_ultrafeedback_messages_give_the_first_user_turn(tmp_path):
    path = tmp_path / "uf.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "be nice"},
                      {"role": "user", "content": "Explain tides."},
                      {"role": "assistant", "content": "The moon..."},
                      {"role": "user", "content": "And waves?"}]},
        {"messages": [{"role": "assistant", "content": "hello"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": ["parts"]}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    loaded = load(path)
    assert loaded.table.column("prompt").to_pylist() == ["Explain tides."]
    assert reasons(loaded) == {(2, "no_user_turn"), (3, "wrong_type"), (4, "wrong_type")}


def test_conversational_prompt_field_and_custom_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": [{"role": "user", "content": "Say hi."}]},
        {"instruction": "Count to three."},
    ]))
    assert load(path).table.column("prompt").to_pylist() == ["Say hi."]
    custom = load(path, text_field="instruction", messages_field=None)
    assert custom.table.column("prompt").to_pylist() == ["Count to three."]
    assert reasons(custom) == {(1, "missing_field")}


def test_parquet_rows_are_zero_based_and_wrong_types_rejected(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["One?", None, "", "Two?"], "other": [1, 2, 3, 4]}), path)
    loaded = load(path)
    assert loaded.table.column("prompt").to_pylist() == ["One?", "Two?"]
    assert reasons(loaded) == {(1, "missing_field"), (2, "empty_prompt")}
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), ints)
    assert reasons(load(ints)) == {(0, "wrong_type"), (1, "wrong_type")}


def test_csv_rows_are_line_numbers_and_invalid_utf8_is_per_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(
        b'prompt,label\n'
        b'"A prompt, with a comma",1\n'
        b'"A prompt\nover two lines",2\n'
        b'bad \xff bytes,3\n'
        b',4\n'
        b'Last one,5\n'
    )
    loaded = load(path)
    assert loaded.table.column("prompt").to_pylist() == [
        "A prompt, with a comma", "A prompt\nover two lines", "Last one"]
    assert reasons(loaded) == {(5, "invalid_utf8"), (6, "empty_prompt")}


def test_datasets_directory_saved_to_disk(tmp_path):
    import datasets

    rows = {"prompt": ["Why is grass green?", "Why is grass green?", "Define entropy."],
            "messages": [[{"role": "user", "content": "ignored"}]] * 3}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    loaded = load(tmp_path / "ds")
    assert loaded.table.column("prompt").to_pylist() == ["Why is grass green?", "Define entropy."]
    assert reasons(loaded) == {(1, "duplicate")}
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_dict(
        {"messages": [[{"role": "user", "content": "Hi there?"}]]})}).save_to_disk(
        str(tmp_path / "dd"))
    got = load(tmp_path / "dd", split="train_prefs", text_field="absent")
    assert got.table.column("prompt").to_pylist() == ["Hi there?"]
    with pytest.raises(PromptSourceError, match=r"no split 'train'.*train_prefs"):
        load(tmp_path / "dd")


def test_prompt_id_is_stable_and_whitespace_insensitive(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.parquet"
    a.write_text(json.dumps({"prompt": "Tell me a joke."}))
    pq.write_table(pa.table({"prompt": ["  Tell me\n a   joke. "]}), b)
    id_a = load(a).table.column("prompt_id")[0].as_py()
    id_b = load(b).table.column("prompt_id")[0].as_py()
    assert id_a == id_b == make_prompt_id("Tell me a joke.")
    assert id_a == "90eaeeb4312de67b46fd"  # pinned: a changed hash would orphan every stored row


def test_duplicates_across_sources_and_limit(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"prompt": p}) for p in ["p one", "p two", "p three"]))
    b.write_text("\n".join(json.dumps({"prompt": p}) for p in ["p two", "p four"]))
    cfg = PromptsConfig(sources=[PromptSourceConfig(path=str(a), limit=2),
                                 PromptSourceConfig(path=str(b))])
    loaded = load_prompts(cfg)
    assert loaded.table.column("prompt").to_pylist() == ["p one", "p two", "p four"]
    assert [(r["_source"], r["_row"]) for r in loaded.rejected] == [(str(b), 1)]


def test_glob_and_plain_directory_read_every_file_in_order(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.jsonl").write_text(json.dumps({"prompt": "first"}))
    pq.write_table(pa.table({"prompt": ["second"]}), tmp_path / "d" / "2.parquet")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    assert load(tmp_path / "d").table.column("prompt").to_pylist() == ["first", "second"]
    assert load(tmp_path / "d" / "*.jsonl").table.column("prompt").to_pylist() == ["first"]


def test_missing_and_unknown_sources_raise_naming_the_path(tmp_path):
    with pytest.raises(PromptSourceError, match=r"nope\.jsonl' not found"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(PromptSourceError, match=r"p\.txt.*suffix '\.txt'"):
        load(tmp_path / "p.txt")
    with pytest.raises(PromptSourceError, match="matches no file"):
        load(tmp_path / "*.parquet")


def test_shipped_seed_prompts_are_clean_and_the_default_pool():
    loaded = load_prompts(PromptsConfig())
    assert loaded.rejected == []
    assert 50 <= loaded.table.num_rows <= 80
    assert set(loaded.table.column("source").to_pylist()) == {"builtin:seed_prompts"}
    assert seed_prompts_path().endswith("aipo_ray/assets/seed_prompts.jsonl")


def test_sources_on_s3_with_a_glob(s3_storage):
    from aipo_ray.storage import filesystem

    storage, prefix = s3_storage
    fs, root = filesystem(prefix, storage)
    fs.pipe_file(f"{root}/prompts/a.jsonl", b'{"prompt": "From S3?"}\n{"prompt": 7}\n')
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"prompt": ["Parquet on S3."]}), buf)
    fs.pipe_file(f"{root}/prompts/b.parquet", buf.getvalue().to_pybytes())
    cfg = PromptsConfig(sources=[PromptSourceConfig(path=f"{prefix}/prompts/*")])
    loaded = load_prompts(cfg, storage)
    assert loaded.table.column("prompt").to_pylist() == ["From S3?", "Parquet on S3."]
    assert [(r["_source"], r["_row"]) for r in loaded.rejected] == [(f"{prefix}/prompts/a.jsonl", 2)]
    with pytest.raises(PromptSourceError, match="not found"):
        load_prompts(PromptsConfig(sources=[PromptSourceConfig(path=f"{prefix}/none.jsonl")]),
                     storage)
