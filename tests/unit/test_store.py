import os

import pytest

from hpcbridge.store import pack_inputs, read_input, write_atomic


def test_inputs_file_holds_every_task_and_reads_one(tmp_path):
    blobs = [b"", b"a", os.urandom(100_000), b"last"]
    path = tmp_path / "inputs.bin"
    path.write_bytes(pack_inputs(blobs))
    assert [read_input(str(path), i) for i in range(4)] == blobs
    with pytest.raises(IndexError, match="task 4 not in"):
        read_input(str(path), 4)


def test_not_an_inputs_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not an hpcbridge inputs file"):
        read_input(str(path), 0)


def test_atomic_write_leaves_no_temporary_files_and_is_private(tmp_path):
    target = tmp_path / "r.pkl"
    write_atomic(str(target), b"one")
    write_atomic(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["r.pkl"]
    assert target.stat().st_mode & 0o777 == 0o600
