"""Hostile inputs cost a bounded amount of memory and time and end in one line.

Each case a hostile tester found (and some siblings): YAML alias and nesting bombs, huge config
files and --set values, models too large to build, an IDX gzip bomb, an NPZ whose header lies or
that carries a huge unused member. Where the input is a bomb, the check runs in a subprocess
whose address space is capped (RLIMIT_AS), so a regression fails the test (MemoryError, or the
timeout) instead of taking the machine down. The cap is CAP: importing torch alone reserves
about 3.2 GB of address space and a normal run of these code paths peaks at 3.2-3.35 GB
(measured with VmPeak: config show, summarize, loading MNIST, loading a 10,000-sample NPZ), so
CAP leaves ~0.7 GB of headroom, less than any of the bombs needs; every capped test also runs
a normal input under the same cap, so a cap too tight for this machine shows as that failing.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_idx_dataset
from mnistdiff.config import (MAX_NODES, ModelConfig, check_model_size, config_from_dict,
                              load_config, read_yaml)
from mnistdiff.errors import ConfigError, DataError, MnistdiffError

CAP = 4_000_000_000  # bytes of address space for a capped subprocess (see the module docstring)
TIMEOUT = 60         # seconds; the fixed cases answer in 1-3 s (most of it importing torch)

PRELUDE = """\
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
"""


def run_capped(code: str, cap: int = CAP, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """Run Python ``code`` in the repository root with the address space capped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-c", PRELUDE.format(cap=cap) + textwrap.dedent(code)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish in {timeout} s under a {cap / 1e9:.1f} GB cap")


def cli_capped(*args: str, cap: int = CAP) -> subprocess.CompletedProcess:
    code = (f"import runpy, sys\nsys.argv = ['mnistdiff', *{list(args)!r}]\n"
            f"runpy.run_module('mnistdiff', run_name='__main__')\n")
    return run_capped(code, cap)


def assert_one_line_error(p: subprocess.CompletedProcess, match: str) -> str:
    """The CLI's contract: exit status 1, one short 'error: ...' line, no traceback."""
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "MemoryError" not in out, out[-2000:]
    assert p.returncode == 1, out[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out[-2000:]
    assert match in lines[0], lines[0]
    assert len(lines[0]) < 300, lines[0]
    return lines[0]


def catch_capped(call: str, imports: str, cap: int = CAP) -> str:
    """Run ``call`` in a capped subprocess; its MnistdiffError message (one line), or fail."""
    p = run_capped(f"""
        {imports}
        from mnistdiff.errors import MnistdiffError
        try:
            result = {call}
        except MnistdiffError as e:
            print("ERROR", e)
        else:
            print("OK", type(result).__name__)
    """, cap)
    assert p.returncode == 0 and "Traceback" not in p.stderr, (p.stdout + p.stderr)[-2000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout[-2000:]
    return lines[0]


# --------------------------------------------------------------------------------- YAML bombs

def laughs(levels: int = 9, width: int = 9) -> str:
    """Billion laughs as a flow mapping: a: &a [x, x, ...], b: &b [*a, *a, ...], ..."""
    names = "abcdefghijklmnop"[:levels]
    parts = [f"a: &a [{','.join(['x'] * width)}]"]
    for prev, name in zip(names, names[1:]):
        parts.append(f"{name}: &{name} [{','.join(['*' + prev] * width)}]")
    return "{" + ", ".join(parts) + "}"


def wide_laughs() -> str:
    """An alias bomb that stays shallow (3 levels): 200 aliases of a 1,000-item list."""
    return "[&a [" + ", ".join(["1"] * 1000) + "], " + ", ".join(["*a"] * 200) + "]"


def test_billion_laughs_in_a_config_file_is_one_line(tmp_path):
    (tmp_path / "laughs.yaml").write_text(f"train:\n  lr: {laughs()}\n")
    assert len((tmp_path / "laughs.yaml").read_text()) < 400  # the tester's was 272 bytes
    (tmp_path / "wide.yaml").write_text(f"train:\n  lr: {wide_laughs()}\n")
    line = assert_one_line_error(cli_capped("config", "show", "-c", str(tmp_path / "laughs.yaml")),
                                 "laughs.yaml: nested more than 8 levels deep")
    assert "(line 2)" in line
    assert_one_line_error(cli_capped("config", "show", "-c", str(tmp_path / "wide.yaml")),
                          f"wide.yaml: more than {MAX_NODES:,} values (after expanding aliases)")
    p = cli_capped("config", "show", "-c", "configs/tiny.yaml")  # the cap lets a normal run pass
    assert p.returncode == 0 and "lr:" in p.stdout, p.stderr[-2000:]


def test_billion_laughs_in_set_is_one_line():
    """--set 'train.lr=[&a [...], &b [*a, ...], ...]': apply_overrides parses values as YAML."""
    items = ["&a [" + ", ".join(["x"] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        items.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    tester = "[" + ", ".join(items) + "]"
    line = assert_one_line_error(cli_capped("config", "show", "--set", f"train.lr={tester}"),
                                 "train.lr: ")
    assert f"more than {MAX_NODES:,} values (after expanding aliases)" in line  # at the 4th level
    assert_one_line_error(cli_capped("config", "show", "--set", f"train.lr={wide_laughs()}"),
                          f"train.lr: more than {MAX_NODES:,} values (after expanding aliases)")


@pytest.mark.parametrize("text, message", [
    # merge keys (<<), which PyYAML inflates in place while constructing
    ("a: &a {" + ", ".join(f"k{i}: 1" for i in range(1000)) + "}\nb: {<<: ["
     + ", ".join(["*a"] * 20) + "]}\n", "values (after expanding aliases)"),
    ("train:\n  lr: &a [1, *a]\n", "a recursive alias"),
    ("train:\n  lr: " + "[" * 5000 + "\n", "nested more than 8 levels deep"),
    ("train:\n  lr: " + "{a: " * 5000 + "\n", "nested more than 8 levels deep"),
    ("train:\n  lr: [" + ", ".join(["1"] * 20000) + "]\n", "more than 10,000 values"),
    ("data:\n  root: " + "x" * 100_000 + "\n", "a value of 100,000 characters; at most 4,096"),
    ("train:\n  seed: " + "9" * 5000 + "\n", "a value of 5,000 characters"),  # int() refuses 4,300
])
def test_bounded_yaml_refuses_in_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        read_yaml(path)
    assert time.perf_counter() - t0 < 5
    assert message in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 200


def test_small_aliases_stay_allowed(tmp_path):
    """Anchors are legitimate YAML; the budget, not a ban, bounds them."""
    path = tmp_path / "c.yaml"
    path.write_text("sample:\n  guidance_interval: &gi [0.1, 0.9]\n"
                    "distill:\n  guidance_interval: *gi\n")
    cfg = load_config(path)
    assert cfg.sample.guidance_interval == cfg.distill.guidance_interval == [0.1, 0.9]


def test_a_huge_config_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("train:\n  lr: [" + "1, " * 3_500_000 + "]\n")  # 10 MB
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"big.yaml: larger than 1 MB"):
        read_yaml(path)
    assert time.perf_counter() - t0 < 1


def test_a_huge_set_value_is_refused():
    for value in ("x" * 1_000_000, "[" + "1," * 500_000 + "]"):
        with pytest.raises(ConfigError, match=r"override 'train\.lr=.{20,}\.\.\.' has 1,0\d\d,\d+ "
                                              r"characters; at most 65,536"):
            load_config(None, [f"train.lr={value}"])
    # within the length, the scalar and node limits still apply
    with pytest.raises(ConfigError, match="data.root: a value of 40,000 characters"):
        load_config(None, ["data.root=" + "x" * 40_000])
    with pytest.raises(ConfigError, match=r"train.lr: nested more than 8 levels deep; .* \(line 1\)"):
        load_config(None, ["train.lr=" + "[" * 5000])


# --------------------------------------------------------------------------------- stored configs

def test_a_stored_config_nested_100000_deep_is_one_line():
    deep = inner = []
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ConfigError, match="train.lr: nested more than 8 levels deep"):
        config_from_dict({"train": {"lr": deep}})
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ConfigError, match="train.lr: nested more than 8 levels deep"):
        config_from_dict({"train": {"lr": cycle}})
    shared = [1] * 1000
    with pytest.raises(ConfigError, match="train.lr: more than 10,000 values"):
        config_from_dict({"train": {"lr": [shared] * 1000}})  # 10^6 through shared references


@pytest.mark.parametrize("d, message", [
    ({"data": {"root": "x" * 10**7}}, "data.root: a string of 10,000,000 characters; at most 4,096"),
    ({"train": {"lr": 10**100_000}}, "train.lr: got <an integer of 332,193 bits>, must be a finite"),
    ({"train": {"seed": 10**100_000}}, "train.seed: got <an integer of 332,193 bits>, must be <= "),
    ({10**100_000: {}}, "unknown section '<an integer of 332,193 bits>'"),
    ({"train": {"lr": [1] * 5000}}, "train.lr: got [1, 1, 1, 1, 1, 1, 1, 1, ...], expected a number"),
    ({"train": {"lr": "y" * 4000}}, "train.lr: got 'yyyyyyyy"),
])
def test_stored_values_give_short_messages(d, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(d)
    assert str(e.value).startswith(message) or message in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200
    if "got " in str(e.value):
        got = str(e.value).split("got ", 1)[1].split(", must")[0].split(", expected")[0]
        assert len(got) <= 60


def test_a_huge_integer_where_a_float_belongs():
    with pytest.raises(ConfigError, match=r"train.lr: got <an integer of 13,6\d\d bits>, must be "
                                          r"a finite number"):
        load_config(None, ["train.lr=" + "1" * 4096])
    with pytest.raises(ConfigError, match="sample.guidance_interval: got .*must be a finite"):
        load_config(None, ["sample.guidance_interval=[0, " + "9" * 400 + "]"])


# --------------------------------------------------------------------------------- numeric bounds

@pytest.mark.parametrize("override, message", [
    ("model.emb_dim=10000000000", "model.emb_dim: got 10000000000, must be <= 4096"),
    ("model.channels=[100000,100000]", "model.channels: got [100000, 100000], must be <= 4096"),
    ("model.num_classes=1000000", "model.num_classes: got 1000000, must be <= 1000"),
    ("model.groups=100000", "model.groups: got 100000, must be <= 4096"),
    ("train.batch_size=10000000", "train.batch_size: got 10000000, must be <= 65536"),
    ("train.grad_accum=10000000", "train.grad_accum: got 10000000, must be <= 65536"),
    ("train.max_steps=1000000000000", "train.max_steps: got 1000000000000, must be <= 100000000"),
    ("train.epochs=1000000000", "train.epochs: got 1000000000, must be <= 100000"),
    ("train.warmup_steps=1000000000000", "train.warmup_steps: got 1000000000000, must be <= "),
    ("train.checkpoint_every=1000000000000", "train.checkpoint_every: got 1000000000000"),
    ("train.keep_last=1000000000", "train.keep_last: got 1000000000, must be <= 10000"),
    ("train.seed=18446744073709551616", "train.seed: got 18446744073709551616, must be <= 4294967295"),
    ("sample.batch_size=10000000", "sample.batch_size: got 10000000, must be <= 65536"),
    ("sample.seed=-1", "sample.seed: got -1, must be >= 0 and <= 4294967295"),
    ("eval.n=1000000000", "eval.n: got 1000000000, must be <= 100000"),
    ("eval.batch_size=10000000", "eval.batch_size: got 10000000, must be <= 65536"),
    ("eval.knn_k=1000000", "eval.knn_k: got 1000000, must be <= 1000"),
])
def test_numeric_fields_have_upper_bounds(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_the_model_size_ceiling_names_the_key(monkeypatch):
    with pytest.raises(ConfigError, match=r"model.channels: the U-Net would have 2,490 M "
                                          r"parameters; at most 200 M"):
        load_config(None, ["model.channels=[4096,4096]"])
    with pytest.raises(ConfigError, match=r"model.emb_dim: the U-Net would have [\d,]+ M parameters"):
        check_model_size(ModelConfig(channels=[8, 16], emb_dim=10**5))  # past the field's bound
    # memory: 16 bytes per parameter (weights, gradients, Adam's two moments) must be available
    cfg = ModelConfig(channels=[256, 512, 1024], num_res_blocks=2)
    n = check_model_size(cfg, available=None)
    assert 30e6 < n < 200e6
    check_model_size(cfg, available=16 * n)
    with pytest.raises(ConfigError, match=r"model.channels: the U-Net's \d+\.\d M parameters need "
                                          r"about \d+\.\d GB .* but only 0.1 GB of memory"):
        check_model_size(cfg, available=100_000_000)
    from mnistdiff import files
    monkeypatch.setattr(files, "available_memory", lambda: 100_000_000)
    with pytest.raises(ConfigError, match="of memory is available"):
        load_config(None, ["model.channels=[256,512,1024]", "model.num_res_blocks=2"])
    load_config("configs/tiny.yaml")  # small models fit in 100 MB


def test_summarize_refuses_huge_models_in_one_line():
    """issue: --set model.emb_dim=10000000000 grew to 23.5 GB; channels=[100000,100000] was a
    RuntimeError traceback."""
    for override, match in [("model.emb_dim=10000000000", "model.emb_dim: got 10000000000"),
                            ("model.channels=[100000,100000]", "model.channels: got [100000"),
                            ("model.channels=[4096,4096,4096]", "model.channels: the U-Net would "
                                                                "have")]:
        assert_one_line_error(cli_capped("summarize", "-c", "configs/tiny.yaml", "--set",
                                         override), match)
    p = cli_capped("summarize", "-c", "configs/tiny.yaml")
    assert p.returncode == 0, p.stderr[-2000:]


def test_build_model_checks_the_size_of_an_unvalidated_config():
    from mnistdiff.unet import build_model
    with pytest.raises(ConfigError, match="model.channels: the U-Net would have"):
        build_model(ModelConfig(channels=[100_000, 100_000]))  # never through config validation
    with pytest.raises(ConfigError, match="model: channels must be a non-empty list"):
        build_model(ModelConfig(channels=[]))


def test_bundled_configs_and_checkpoints_stay_valid():
    from mnistdiff.checkpoint import load_checkpoint
    from mnistdiff.unet import estimate_parameters
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)
    stored = sorted((ROOT / "mnistdiff" / "assets" / "models").glob("*/model.pt"))
    assert stored
    for path in stored:
        cfg = config_from_dict(load_checkpoint(path)["config"])
        assert estimate_parameters(cfg.model) < 10_000_000


# --------------------------------------------------------------------------------- IDX files

def idx_header(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()


ZEROS_16M_GZ = gzip.compress(bytes(1 << 24), 9)  # one gzip member: 16 MiB of zeros in 16 KB


def test_an_idx_gzip_bomb_inflates_no_further_than_its_header(tmp_path):
    """issue: 3 MB -> 3 GiB took 46 s and 6.8 GB before its one line. Now: header + data + 1."""
    folder = make_idx_dataset(tmp_path / "d", n_train=1000, n_test=10)
    bomb = folder / "train-images-idx3-ubyte.gz"
    images = gzip.decompress(bomb.read_bytes())
    bomb.write_bytes(gzip.compress(images) + ZEROS_16M_GZ * 192)  # + 3 GiB of zeros, 3 MB
    assert bomb.stat().st_size < 4_000_000
    imports = "from mnistdiff.data import load_split, read_idx"
    t0 = time.perf_counter()
    line = catch_capped(f"read_idx({str(bomb)!r})", imports)
    assert time.perf_counter() - t0 < 30
    assert line.startswith("ERROR") and "IDX header says (1000, 28, 28) (784000 bytes of data) but " \
                                          "the file holds more than 784000" in line, line
    line = catch_capped(f"load_split({str(folder)!r}, verify=False)", imports)
    assert "truncated or corrupted" in line
    # the same cap lets the normal file through
    bomb.write_bytes(gzip.compress(images))
    assert catch_capped(f"load_split({str(folder)!r}, verify=False)", imports) == "OK LabelledImages"


def test_an_idx_header_that_declares_too_much_costs_nothing(tmp_path, monkeypatch):
    lying = tmp_path / "lying.gz"  # 10 M images declared (the maximum) in a 3 MB gzip
    lying.write_bytes(gzip.compress(idx_header((10_000_000, 28, 28))) + ZEROS_16M_GZ * 192)
    from mnistdiff.data import read_idx
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"holds at most \d+ \(a gzip file of \d+ bytes inflates "
                                        r"to at most 1032x that\)"):
        read_idx(lying)
    assert time.perf_counter() - t0 < 1
    cases = {
        "many.gz": (gzip.compress(idx_header((10_000_001, 28, 28))), "more than a dataset here"),
        "big": (idx_header((1000, 10_000, 10_000)), "more than a dataset here can hold"),
        "ndim": (bytes([0, 0, 8, 200]) + bytes(800), "declares 200 dimensions; images and labels"),
        "raw-short": (idx_header((10**6, 28, 28)) + bytes(100), "but the file holds 100; it is "
                                                               "truncated"),
        "empty": (b"", "not an IDX file (bad magic number)"),
        "empty.gz": (gzip.compress(b""), "not an IDX file (bad magic number)"),
        "header.gz": (gzip.compress(bytes([0, 0, 8, 3, 0, 0])), "truncated IDX header"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as e:
            read_idx(tmp_path / name)
        assert message in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    # an honest header that does not fit in memory is refused before reading
    from mnistdiff import files
    write = tmp_path / "ok"
    write.write_bytes(idx_header((100, 28, 28)) + bytes(78_400))
    monkeypatch.setattr(files, "available_memory", lambda: 10_000)
    with pytest.raises(DataError, match=r"declares \(100, 28, 28\) \(78.4 KB\) but only 10.0 KB"):
        read_idx(write)


def test_labels_files_are_checked_against_the_images_header_first(tmp_path):
    from mnistdiff.data import load_split
    folder = make_idx_dataset(tmp_path / "d", n_train=100, n_test=10)
    labels = folder / "train-labels-idx1-ubyte"
    for content, message in [
        (b"", "not an IDX file (bad magic number)"),  # a 0-byte labels file
        (idx_header((10**9,)), "more than a dataset here can hold"),  # a billion labels declared
        (idx_header((5_000_000,)) + bytes(10), "100 train images but 5000000 labels"),
        (idx_header((100,), 0x0D) + bytes(400), "expected (N, 28, 28) uint8 images and (N,) "
                                                "integer labels"),
        (idx_header((100,), 0x09) + bytes([255] * 100), "label -1 outside the 10 classes"),
    ]:
        labels.write_bytes(content)
        with pytest.raises(DataError) as e:
            load_split(folder, "train", verify=False)
        assert message in str(e.value), str(e.value)
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(idx_header((100, 32, 32)) + bytes(102_400)))
    labels.write_bytes(idx_header((100,)) + bytes(100))
    with pytest.raises(DataError, match=r"\(100, 32, 32\) uint8 / \(100,\) uint8, expected"):
        load_split(folder, "train", verify=False)


def test_streaming_keeps_the_checksum_and_gzip_errors(tmp_path):
    import hashlib

    from mnistdiff.data import read_idx, write_idx
    arr = (np.arange(60 * 28 * 28) % 251).astype(np.uint8).reshape(60, 28, 28)
    write_idx(tmp_path / "a.gz", arr)
    digest = hashlib.sha256(gzip.decompress((tmp_path / "a.gz").read_bytes())).hexdigest()
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", sha256=digest), arr)
    with pytest.raises(DataError, match="SHA-256"):
        read_idx(tmp_path / "a.gz", sha256="0" * 64)
    gz = bytearray((tmp_path / "a.gz").read_bytes())
    gz[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    (tmp_path / "crc.gz").write_bytes(bytes(gz))
    with pytest.raises(DataError, match="corrupted or truncated gzip file"):
        read_idx(tmp_path / "crc.gz")
    (tmp_path / "trail.gz").write_bytes((tmp_path / "a.gz").read_bytes() + b"garbage!")
    with pytest.raises(DataError, match="corrupted or truncated gzip file"):
        read_idx(tmp_path / "trail.gz")
    assert read_idx(tmp_path / "a.gz").flags.writeable  # no read-only buffer for torch


# --------------------------------------------------------------------------------- NPZ files

def npy(shape: tuple[int, ...], dtype, body: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    b = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == (1, 0)
     else np.lib.format.write_array_header_2_0)(b, header)
    return b.getvalue() + body


def write_npz(path: Path, members: dict[str, bytes],
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


IMAGES_100 = npy((100, 28, 28), np.uint8, bytes(100 * 784))
LABELS_100 = npy((100,), np.int64, (np.arange(100) % 10).astype(np.int64).tobytes())


@pytest.mark.parametrize("members, message", [
    # issue: a header declaring (10^9, 28, 28) over 100 images was "Unable to allocate 730 GiB"
    ({"images.npy": npy((10**9, 28, 28), np.uint8, bytes(78_400)), "labels.npy": LABELS_100},
     "1000000000 images but 100 labels"),
    ({"images.npy": npy((10**9, 28, 28), np.uint8, bytes(78_400)),
      "labels.npy": npy((10**9,), np.int64, bytes(800))}, "declares 1,000,000,000 images; at most "
                                                          "10,000,000"),
    ({"images.npy": npy((1000, 28, 28), np.uint8, bytes(78_400)),
      "labels.npy": npy((1000,), np.int64, bytes(8000))},
     "'images' declares uint8 (1000, 28, 28) (784,000 bytes) but its member holds 78,400; the "
     "file is truncated or corrupted"),
    ({"images.npy": IMAGES_100 + b"extra", "labels.npy": LABELS_100}, "but its member holds 78,405"),
    ({"images.npy": IMAGES_100, "labels.npy": npy((100,), object, b"")}, "holds Python objects"),
    ({"images.npy": b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{", "labels.npy":
      LABELS_100}, "cannot read"),  # a 2 GB header length
    ({"images.npy": b"not a npy", "labels.npy": LABELS_100}, "cannot read"),
    ({"images.npy": npy((100, 28, 28), np.uint8, bytes(784 * 100), (2, 0)),
      "labels.npy": npy((100,), np.int64, bytes(800)), **{f"x{i}": b"" for i in range(5)}},
     "OK"),
    ({"labels.npy": LABELS_100, **{f"{'n' * 200}{i}.npy": b"" for i in range(10)}},
     "no 'images' array (it holds: labels, nnnnnnnnnnnnnnnnnnnnnnnnnnn..."),
])
def test_npz_headers_are_checked_before_reading(tmp_path, members, message):
    from mnistdiff.npz import load_npz_samples
    path = write_npz(tmp_path / "s.npz", members)
    t0 = time.perf_counter()
    try:
        images, labels = load_npz_samples(path)
    except MnistdiffError as e:
        assert message in str(e), str(e)
        assert "\n" not in str(e) and len(str(e)) < 300 + len(str(path))
    else:
        assert message == "OK" and images.shape == (100, 28, 28) and labels.shape == (100,)
    assert time.perf_counter() - t0 < 2


def test_npz_members_that_zipfile_would_inflate_unbounded_are_refused(tmp_path):
    from mnistdiff.npz import load_npz_samples
    path = write_npz(tmp_path / "bz.npz", {"images.npy": IMAGES_100, "labels.npy": LABELS_100},
                     zipfile.ZIP_BZIP2)
    with pytest.raises(MnistdiffError, match="uses zip compression method 12; an NPZ is stored "
                                             "or deflated"):
        load_npz_samples(path)
    many = write_npz(tmp_path / "many.npz", {f"{i}.npy": b"" for i in range(1001)})
    with pytest.raises(MnistdiffError, match="1,001 members; a samples NPZ has 2"):
        load_npz_samples(many)
    bad = bytearray(write_npz(tmp_path / "crc.npz", {"images.npy": IMAGES_100, "labels.npy":
                                                     LABELS_100}, zipfile.ZIP_STORED).read_bytes())
    at = bytes(bad).index(bytes(100 * 784)[:1000]) + 500
    bad[at] = 7  # a pixel: the CRC-32 no longer matches
    (tmp_path / "crc.npz").write_bytes(bytes(bad))
    with pytest.raises(MnistdiffError, match="cannot read .* as an NPZ file .*CRC"):
        load_npz_samples(tmp_path / "crc.npz")


def test_npz_memory_check(tmp_path, monkeypatch):
    from mnistdiff import files
    from mnistdiff.npz import load_npz_samples
    path = write_npz(tmp_path / "s.npz", {"images.npy": IMAGES_100, "labels.npy": LABELS_100})
    monkeypatch.setattr(files, "available_memory", lambda: 50_000)
    with pytest.raises(MnistdiffError, match="100 samples need about 80.0 KB of memory but only "
                                             "50.0 KB is available"):
        load_npz_samples(path)


def test_an_unused_huge_npz_member_is_never_inflated(tmp_path):
    """issue: an NPZ with an unused 1.96 GB deflated array was inflated anyway (np.load reads
    every key). 1 GiB here (1 MB on disk) is past the cap's headroom."""
    path = write_npz(tmp_path / "junk.npz", {"images.npy": IMAGES_100, "labels.npy": LABELS_100})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            f.write(npy((1 << 30,), np.uint8, b""))
            block = bytes(1 << 24)
            for _ in range(64):
                f.write(block)
    assert path.stat().st_size < 10_000_000
    imports = "from mnistdiff.npz import load_npz_samples"
    assert catch_capped(f"load_npz_samples({str(path)!r})[0].shape", imports) == "OK Size"
    lying = write_npz(tmp_path / "lying.npz", {
        "images.npy": npy((10**9, 28, 28), np.uint8, bytes(78_400)),
        "labels.npy": npy((10**9,), np.int64, bytes(800))})
    line = catch_capped(f"load_npz_samples({str(lying)!r})", imports)
    assert line.startswith("ERROR") and "declares 1,000,000,000 images" in line
