"""rlkl._io: atomic rewrites, torn JSON-lines tails, content hashes, unreadable torch files."""

import hashlib
import json

import pytest
import torch

from rlkl._io import (append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, load_torch_file,
                      read_jsonl, sha256_file, write_jsonl)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "config.json"
    atomic_write_json(p, {"a": 1})

    def explode(f):
        f.write('{"a": 2, "trunc')  # half written, then the process "dies"
        raise RuntimeError("killed")

    from rlkl._io import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(p, explode)
    assert json.loads(p.read_text()) == {"a": 1}  # the old content, whole
    assert [x.name for x in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    atomic_write_text(p, "new\n")
    assert p.read_text() == "new\n"


def test_atomic_torch_save_roundtrip(tmp_path):
    p = tmp_path / "ck.pt"
    atomic_torch_save({"x": torch.arange(3), "step": 4}, p)
    ck = load_torch_file(p, "checkpoint")
    assert ck["step"] == 4 and torch.equal(ck["x"], torch.arange(3))


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    write_jsonl(p, [{"step": 0}, {"step": 1}])
    with open(p, "a") as f:
        append_jsonl(f, {"step": 2})
        f.write('{"step": 3, "loss": 0.')  # a kill in the middle of a write
    rows, note = read_jsonl(p)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "torn last line (line 4" in note
    write_jsonl(p, rows)
    assert read_jsonl(p) == (rows, None)
    p.write_text('{"step": 0}\nnot json\n{"step": 2}\n')  # damage in the middle is not a torn tail
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_jsonl(p)
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], None)


def test_sha256_file_is_the_hash_of_the_bytes(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    # sha256("abc") from FIPS 180-2, appendix B.1
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    p.write_bytes(b"x" * (3 << 20))  # several chunks
    assert sha256_file(p, chunk=1 << 20) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "truncate"])
def test_load_torch_file_rejects_garbage_in_one_line(tmp_path, content):
    p = tmp_path / "checkpoint.pt"
    if content == "truncate":
        torch.save({"w": torch.zeros(1000)}, p)
        p.write_bytes(p.read_bytes()[:500])
    else:
        p.write_bytes(content)
    with pytest.raises(ValueError, match=r"checkpoint .* cannot be read .*truncated or not a torch checkpoint") as e:
        load_torch_file(p, "checkpoint")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="is a directory"):
        load_torch_file(tmp_path, "checkpoint")
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "nope.pt", "checkpoint")


def test_load_torch_file_never_runs_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickled code ran')",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    with pytest.raises(ValueError, match="cannot be read"):
        load_torch_file(p, "reference checkpoint")
