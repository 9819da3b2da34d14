"""Output paths (issue 13): never replace an input, a device or another output; disk full is one
line and leaves nothing behind."""

import errno
import os
import socket

import pytest

from mnistdiff import files
from mnistdiff.errors import MnistdiffError


def test_write_atomic_follows_a_symlink_to_its_target(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    files.write_atomic(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "sub" / "new.png")
    files.write_atomic(link, b"x")
    assert link.is_symlink() and (tmp_path / "sub" / "new.png").read_bytes() == b"x"


def test_fifo_socket_and_device_are_refused_not_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(MnistdiffError, match="is a FIFO; write to a regular file"):
        files.write_atomic(fifo, b"x")
    assert fifo.is_fifo()
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(MnistdiffError, match="is a socket"):
            files.check_outputs({"--out": sock_path})
    with pytest.raises(MnistdiffError, match="is a device"):
        files.write_atomic("/dev/null", b"x")
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    with pytest.raises(MnistdiffError, match="is a device"):
        files.check_outputs({"--out": link})


def test_an_output_that_is_an_input_is_refused(tmp_path):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"weights")
    link = tmp_path / "alias.png"
    link.symlink_to(ckpt)
    for out in (ckpt, link, tmp_path / "." / "last.pt"):
        with pytest.raises(MnistdiffError, match="is also this command's checkpoint"):
            files.check_outputs({"--out": out}, {"checkpoint": ckpt})
    assert ckpt.read_bytes() == b"weights"


def test_two_outputs_on_one_path_are_refused(tmp_path):
    with pytest.raises(MnistdiffError, match="--out and --npz both name"):
        files.check_outputs({"--out": tmp_path / "x.png", "--npz": tmp_path / "x.png"})
    with pytest.raises(MnistdiffError, match="--individual .* is also --out"):
        files.check_outputs({"--out": tmp_path / "x"}, folders={"--individual": tmp_path / "x"})


def test_extensions_must_match_the_format(tmp_path):
    with pytest.raises(MnistdiffError, match=r"--npz .*x.png: this output is written as NPZ, so "
                                             r"its name must end in .npz"):
        files.check_outputs({"--npz": tmp_path / "x.png"}, suffixes={"--npz": (".npz",)})
    files.check_outputs({"--npz": tmp_path / "x.NPZ"}, suffixes={"--npz": (".npz",)})


def test_an_existing_file_as_output_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MnistdiffError, match="exists and is not a folder"):
        files.check_outputs({}, folders={"--individual": tmp_path / "f"})


def test_disk_full_is_one_line_and_leaves_no_output(tmp_path, monkeypatch):
    (tmp_path / "old.png").write_bytes(b"old")
    real_fsync = os.fsync
    calls = []

    def full(fd):  # the second file of the command hits a full disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(MnistdiffError) as e:
        with files.all_or_nothing():
            files.write_atomic(tmp_path / "old.png", b"new")
            files.write_atomic(tmp_path / "new" / "x.npz", b"data")
    assert str(e.value).endswith("x.npz: No space left on device; nothing was written there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]  # no temp files, no folder
    assert (tmp_path / "old.png").read_bytes() == b"old"


def test_all_or_nothing_commits_every_file_at_the_end(tmp_path):
    with files.all_or_nothing():
        files.write_atomic(tmp_path / "a", b"1")
        assert not (tmp_path / "a").exists()
        files.write_atomic(tmp_path / "b", b"2")
    assert (tmp_path / "a").read_bytes() == b"1" and (tmp_path / "b").read_bytes() == b"2"


def test_check_space_refuses_what_cannot_fit(tmp_path):
    files.check_space({tmp_path / "a.npz": 1000}, memory=1000)
    with pytest.raises(MnistdiffError, match=r"need about .* for .*a.npz, .*b.png but only .* "
                                             r"is free there"):
        files.check_space({tmp_path / "a.npz": 10**18, tmp_path / "new" / "b.png": 1})
    with pytest.raises(MnistdiffError, match="of memory but only"):
        files.check_space({}, memory=10**18)
