"""The char-LM recipe: trains and samples through its real Hydra entry point, and its cached
sampler agrees with the teacher-forced full forward."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavedil.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "char_lm" / "char_lm.py"
LICENSES = Path("/usr/share/common-licenses")
TINY = [
    "model.residual_channels=16", "model.gate_channels=16", "model.skip_channels=16", "model.head_channels=32",
    "data.batch_size=4", "data.segment_length=64", "trainer.max_steps=8", "trainer.valid_every=4",
    "trainer.log_every=4", "trainer.valid_max_bytes=2000", "optim.warmup_steps=2",
]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("char_lm_recipe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


char_lm = _load_recipe()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The Debian licence texts where they exist, else a small stand-in with the same families."""
    if LICENSES.is_dir():
        return LICENSES
    root = tmp_path_factory.mktemp("texts")
    words = "the program license copyright software free terms conditions warranty any".split()
    for i, name in enumerate(["GPL-2", "GPL-3", "MIT", "BSD", "Apache-2.0", "MPL-2.0"]):
        (root / name).write_text(" ".join(words[(i + j * 7) % len(words)] for j in range(800)))
    return root


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"char_lm.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_train_then_sample_through_the_cli(corpus, tmp_path):
    run_dir = tmp_path / "run"
    out = run("train", *TINY, f"data.root={corpus}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["step"] == 8
    assert math.isfinite(summary["valid_bits_per_byte"]) and 0 < summary["valid_bits_per_byte"] < 8
    assert (run_dir / ".hydra" / "overrides.yaml").is_file(), "Hydra's run folder was not written"
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt["kind"] == "char_lm" and ckpt["model_config"]["residual_channels"] == 16
    assert set(ckpt["valid_files"]).isdisjoint(ckpt["train_files"]) and ckpt["valid_files"]

    def sample(seed: int, name: str, temperature: float = 1.0) -> bytes:
        target = tmp_path / name
        out = run("sample", f"sample.checkpoint={run_dir}", "sample.num_bytes=37", f"sample.seed={seed}",
                  f"sample.temperature={temperature}", f"sample.output={target}", "sample.prompt='The '", cwd=tmp_path)
        text = target.read_bytes()  # the continuation alone
        assert out.stdout == "The " + text.decode("utf-8", errors="replace") + "\n"  # printed after the prompt
        return text

    first = sample(3, "a.bin")
    assert len(first) == 37
    assert sample(3, "b.bin") == first  # the seed fixes the text
    assert sample(4, "c.bin") != first  # and another seed draws another text
    # Greedy decoding after training picks bytes the model saw, not arbitrary ones of the 256.
    alphabet = set(b"\n".join((corpus / name).read_bytes() for name in ckpt["train_files"]))
    greedy = sample(0, "d.bin", temperature=0.0)
    assert len(greedy) == 37 and set(greedy) <= alphabet, sorted(set(greedy) - alphabet)
    assert not list(tmp_path.glob("outputs")), "sampling must not create a run folder"


def test_cli_errors_are_one_line(tmp_path):
    proc = run("train", "data.root=/nonexistent/texts", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "data.root=" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("sample", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "sample.checkpoint=" in proc.stderr
    proc = run("fit", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "train,sample" in proc.stderr


def _tiny_lm(seed: int = 0) -> "char_lm.CharLM":
    torch.manual_seed(seed)
    config = char_lm.CharLMConfig(residual_channels=12, gate_channels=16, skip_channels=10, head_channels=20,
                                  kernel_size=3, dilations=(1, 2, 4, 1, 2, 4))
    return char_lm.CharLM(config).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_sampling_equals_teacher_forced_forward(temperature):
    lm = _tiny_lm()
    prompt = b"GNU General Public "
    text, logits = char_lm.sample_bytes(lm, 40, prompt, temperature=temperature, seed=5, return_logits=True)
    assert len(text) == 40 and logits.shape == (40, 256)
    with torch.no_grad():
        full = lm(torch.tensor([list(prompt + text)]))[0]  # (T, 256): position t predicts byte t + 1
    torch.testing.assert_close(logits, full[len(prompt) - 1 : -1], rtol=0, atol=1e-4)
    if temperature == 0:
        assert list(text) == full[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_sampling_is_seeded_and_checks_its_arguments():
    lm = _tiny_lm()
    a = char_lm.sample_bytes(lm, 30, b"x", seed=1)
    assert a == char_lm.sample_bytes(lm, 30, b"x", seed=1)
    assert a != char_lm.sample_bytes(lm, 30, b"x", seed=2)
    with pytest.raises(ValueError, match="at least one byte"):
        char_lm.sample_bytes(lm, 5, b"")
    with pytest.raises(ValueError, match="temperature must be >= 0.*got -1"):
        char_lm.sample_bytes(lm, 5, b"x", temperature=-1.0)
    with pytest.raises(ValueError, match="num_bytes must be an integer >= 1, got 0"):
        char_lm.sample_bytes(lm, 0, b"x")


def test_split_is_by_family_deterministic_and_deduplicated(tmp_path):
    texts = {"GPL-2": b"a" * 50, "GPL-3": b"b" * 50, "GPL": b"b" * 50, "LGPL-2.1": b"c" * 40,
             "MIT": b"d" * 30, "BSD": b"e" * 30, "Apache-2.0": b"f" * 60, "empty": b""}
    for name, data in texts.items():
        (tmp_path / name).write_bytes(data)
    corpus = char_lm.read_corpus(tmp_path)
    assert "GPL" in corpus and "GPL-3" not in corpus and "empty" not in corpus  # duplicate and empty dropped
    assert char_lm.file_family("LGPL-2.1") == "LGPL" and char_lm.file_family("CC0-1.0") == "CC0"
    names = list(corpus)
    sizes = [len(corpus[n]) for n in names]
    train, valid = char_lm.split_files(names, sizes, 0.3)
    assert valid and train and set(train).isdisjoint(valid)
    families = {char_lm.file_family(n) for n in valid}
    assert not families & {char_lm.file_family(n) for n in train}, "a family is on both sides"
    assert char_lm.split_files(names[::-1], sizes[::-1], 0.3) == (train[::-1], valid[::-1])
    with pytest.raises(ValueError, match=r"valid_fraction must be in \(0, 1\), got 1.5"):
        char_lm.split_files(names, sizes, 1.5)


def test_batches_are_a_function_of_seed_and_step():
    data = torch.arange(1000, dtype=torch.int64).to(torch.uint8)
    a = char_lm.batch_at(data, 7, 4, 50, seed=0)
    assert a.shape == (4, 51) and a.dtype == torch.int64
    assert torch.equal(a, char_lm.batch_at(data, 7, 4, 50, seed=0))
    assert not torch.equal(a, char_lm.batch_at(data, 8, 4, 50, seed=0))
    assert torch.equal((a[:, 1:] - a[:, :-1]) % 256, torch.ones(4, 50, dtype=torch.int64))  # contiguous windows
    with pytest.raises(ValueError, match="fewer than data.segment_length"):
        char_lm.batch_at(data[:10], 0, 2, 50, seed=0)


def test_bits_per_byte_of_an_untrained_model_is_near_eight():
    bits = char_lm.bits_per_byte(_tiny_lm(), [bytes(range(256)) * 4])
    assert 7.0 < bits < 9.0


def test_exclude_patterns_leave_files_out(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, data in {"cookie": b"a" * 40, "cookie.dat": b"\x00\x01" * 20, "sub/songs": b"c" * 30,
                       "sub/songs.dat": b"\x02" * 30, "people": b"d" * 20}.items():
        (tmp_path / name).write_bytes(data)
    assert sorted(char_lm.read_corpus(tmp_path)) == ["cookie", "cookie.dat", "people", "sub/songs", "sub/songs.dat"]
    assert sorted(char_lm.read_corpus(tmp_path, ["*.dat"])) == ["cookie", "people", "sub/songs"]
    assert sorted(char_lm.read_corpus(tmp_path, ["sub/*", "people"])) == ["cookie", "cookie.dat"]
    with pytest.raises(ValueError, match=r"holds 0 distinct non-empty files not matching data.exclude=\['\*o\*'\]"):
        char_lm.read_corpus(tmp_path, ["*o*"])


def test_compression_baselines_are_the_real_compressed_sizes():
    import bz2
    import lzma

    rng = __import__("random").Random(0)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(60)]
    train = [b" ".join(rng.choice(words) for _ in range(3000))]
    valid = [b" ".join(rng.choice(words) for _ in range(400))]
    got = char_lm.compression_baselines(train, valid)
    n = len(valid[0])
    assert got["bz2"] == 8 * len(bz2.compress(valid[0], 9)) / n
    assert got["xz"] == 8 * len(lzma.compress(valid[0], preset=9 | lzma.PRESET_EXTREME)) / n
    # the training text teaches xz the vocabulary: the held-out text then costs fewer bits
    assert got["xz_given_train"] < got["xz"]
    # eleven symbols (ten letters and the space), near-uniform: a unigram needs about log2(11) bits
    assert 3.0 < got["unigram"] < 3.6
    same = char_lm.compression_baselines(valid, valid)
    assert same["xz_given_train"] < 0.2 * same["xz"]  # a repeat of the training text is almost free


def _plain_config(*overrides: str) -> dict:
    from omegaconf import OmegaConf

    base = OmegaConf.load(SCRIPT.parent / "conf" / "char_lm.yaml")
    base.pop("defaults")
    base.pop("hydra")
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(cfg, resolve=True)


def test_time_budget_stops_with_a_final_validation_and_checkpoint(corpus, tmp_path, caplog):
    torch.set_num_threads(1)
    cfg = _plain_config(*TINY, f"data.root={corpus}", "trainer.max_steps=100000", "trainer.max_time=2",
                        "trainer.valid_every=100000", "trainer.log_every=100000")
    with caplog.at_level("INFO"):
        summary = char_lm.train(cfg, tmp_path / "run")
    assert 1 <= summary["step"] < 100000 and 2.0 <= summary["seconds"] < 30
    assert f"time budget trainer.max_time=2 s reached at step {summary['step']}" in caplog.text
    assert f"step {summary['step']}: held-out" in caplog.text  # the final validation
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt["step"] == summary["step"] and Path(summary["checkpoint"]).name == f"step_{summary['step']:08d}.pt"
    assert set(summary["baselines_bits_per_byte"]) == {"unigram", "bz2", "xz", "xz_given_train"}
    with pytest.raises(ValueError, match="trainer.max_time='ten minutes' is not a duration"):
        char_lm.train(_plain_config(*TINY, f"data.root={corpus}", "trainer.max_time=ten minutes"), tmp_path / "bad")


def test_fortunes_experiment_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(SCRIPT.parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="char_lm", overrides=["experiment=fortunes"])
    model = char_lm.CharLM(char_lm.CharLMConfig.from_dict(dict(cfg.model)))
    assert cfg.data.root == "/usr/share/games/fortunes" and list(cfg.data.exclude) == ["*.dat", "*.u8"]
    assert model.receptive_field == 311 and cfg.data.segment_length > model.receptive_field
    assert char_lm.parse_duration(cfg.trainer.max_time) == 600
