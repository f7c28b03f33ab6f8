"""``convert()``: a Hugging Face checkpoint to one or more GGUF files.

source -> config + arch table -> validated weights -> vocab -> streamed float
GGUF -> llama.cpp quantizer -> atomic rename. The checkpoint is read once, however
many types are asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import gguf

from edgekit.atomic import atomic_output, check_free_space, check_writable, output_directory, scratch_file
from edgekit.convert.archs import Arch, arch_for, check_config
from edgekit.convert.hparams import HParams, check_shapes, count_blocks, read_hparams
from edgekit.convert.naming import CONVERTER, default_filename, llama_cpp_name, model_metadata
from edgekit.convert.quantize import FLOAT_TYPES, QUANT_TYPES, quant_type, quantize
from edgekit.convert.rope import rope_tensors, write_rope_keys
from edgekit.convert.safetensors import WeightSet
from edgekit.convert.vocab import Vocab, load_vocab, read_json_object, write_vocab
from edgekit.convert.writer import PackedArrays, TensorPlan, generated, write_gguf
from edgekit.errors import CorruptFile, EdgekitError, MissingFiles, UnsupportedModel
from edgekit.progress import ProgressFn

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ConvertedFile:
    """One GGUF file that :func:`convert` wrote."""

    path: Path
    type: str
    size: int
    n_params: int = 0
    tensor_types: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def sha256(self) -> str:
        """The file's SHA-256 (computed on demand: it reads the whole file)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def as_dict(self, with_sha256: bool = True) -> dict:
        out = {"path": str(self.path.resolve()), "type": self.type, "size": self.size, "n_params": self.n_params}
        if with_sha256:
            out["sha256"] = self.sha256()
        return out


@dataclass
class Checkpoint:
    """A validated HF checkpoint, ready to convert."""

    directory: Path
    config: dict
    arch: Arch
    hparams: HParams
    weights: WeightSet
    vocab: Vocab
    name_map: gguf.TensorNameMap  # HF -> GGUF tensor names, for the layers the weights hold
    repo_id: str | None = None
    url: str | None = None


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint (following the shard index); refuse pickles."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        # Shard names must be plain file names in the checkpoint directory (never a path out of it).
        if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(n, str) and n and n == Path(n).name and n not in (".", "..") for n in weight_map.values()
        ):
            raise CorruptFile(f"{index.name} has no weight_map from tensor names to shard file names",
                              "Download model.safetensors.index.json again.")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise MissingFiles(f"{directory} lacks the weight shards {', '.join(missing)}",
                               "Download the missing shards listed in model.safetensors.index.json.")
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsupportedModel(
            f"{directory} has only PyTorch pickle weights ({', '.join(pickles[:3])}); edgekit never unpickles them "
            "because loading a pickle can run arbitrary code",
            "Convert them to safetensors first, or use a revision of the model that has .safetensors files.",
        )
    raise MissingFiles(f"{directory} has no model weights (*.safetensors)", "Point at a complete checkpoint directory.")


def open_checkpoint(directory: Path, repo_id: str | None = None, url: str | None = None) -> Checkpoint:
    """Read and validate everything about a checkpoint before any output is written."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFiles(f"{directory} is not a directory", "Pass a checkpoint directory or a Hub repo id (owner/name).")
    if not (directory / "config.json").is_file():
        raise MissingFiles(f"{directory} has no config.json", "Point at a Hugging Face checkpoint directory.")
    config = read_json_object(directory / "config.json")
    arch = arch_for(config)
    hparams = read_hparams(config, arch.sliding_window)
    check_config(arch, config, hparams)
    rope_tensors(hparams)  # refuses factor lists of the wrong length before any work
    files = weight_files(directory)
    weights = WeightSet(files)
    # Check the config's counts against the weights before any work proportional to them.
    if "tie_word_embeddings" not in config:
        # transformers leaves out a value equal to its base default (tied), as Gemma 3's config.json does;
        # the weights say it: no lm_head.weight means the embedding is the output.
        hparams = replace(hparams, tied_embeddings="lm_head.weight" not in weights)
    n_blocks = count_blocks(weights.names(), arch.block_pattern, hparams)
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_blocks)
    check_shapes(hparams, weights.tensors.values(), name_map, arch.fused_ffn)
    token_config = dict(config)
    if (directory / "generation_config.json").is_file():
        generation = read_json_object(directory / "generation_config.json")
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_config.setdefault(key, generation.get(key))
    vocab = load_vocab(directory, hparams.vocab_size, token_config)
    return Checkpoint(directory, config, arch, hparams, weights, vocab, name_map, repo_id, url)


def plan_tensors(ckpt: Checkpoint, out_type: str) -> list[TensorPlan]:
    """Map every checkpoint tensor to its GGUF name and storage type; refuse unknown tensors."""
    hp = ckpt.hparams
    names = ckpt.name_map
    plans: list[TensorPlan] = []
    for hf_name, ref in ckpt.weights.tensors.items():
        if hf_name.endswith(ckpt.arch.skip_suffixes):
            continue
        if hf_name == "lm_head.weight" and hp.tied_embeddings:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedModel(f"tensor {hf_name!r} in {ref.file.name} has no GGUF equivalent for {ckpt.arch.hf_name}")
        if ref.dtype not in ("BF16", "F16", "F32"):
            raise UnsupportedModel(f"{ref.file.name}, tensor {hf_name!r}: dtype {ref.dtype} can't be converted",
                                   "Use a bf16, f16 or f32 checkpoint.")
        heads = 0
        if ckpt.arch.permute_qk and ".attn_q." in name:
            heads = hp.n_head
        elif ckpt.arch.permute_qk and ".attn_k." in name:
            heads = hp.n_head_kv
        # 1-D tensors (norms, biases) stay F32, as llama.cpp's converter keeps them.
        storage = "F32" if len(ref.shape) < 2 else out_type
        shift = ckpt.arch.norm_shift if name.endswith("norm.weight") else 0.0
        plans.append(TensorPlan(name, ref, storage, heads, shift))
    plans += [generated(name, values) for name, values in rope_tensors(hp).items()]
    _check_complete(ckpt, {p.name for p in plans})
    return plans


def _check_complete(ckpt: Checkpoint, present: set[str]) -> None:
    hp = ckpt.hparams
    needed = ["token_embd.weight", "output_norm.weight"]
    if not hp.tied_embeddings:
        needed.append("output.weight")
    needed += [f"blk.{i}.{part}.weight" for i in range(hp.n_layer) for part in ckpt.arch.block_tensors]
    missing = [n for n in needed if n not in present]
    if missing:
        raise MissingFiles(f"the checkpoint lacks {len(missing)} tensors, first {missing[0]}",
                           "The weights are incomplete; download all shards again.")


def _write_hparams(writer: gguf.GGUFWriter, ckpt: Checkpoint) -> None:
    hp = ckpt.hparams
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    if ckpt.arch.write_rope_dims or hp.n_rot != hp.head_dim:
        writer.add_rope_dimension_count(hp.n_rot)
    if ckpt.arch.write_vocab_size:
        writer.add_vocab_size(len(ckpt.vocab.tokens))
    if hp.head_dim != hp.n_embd // hp.n_head:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    write_rope_keys(writer, hp)
    if hp.sliding_window:
        writer.add_sliding_window(hp.sliding_window)
        writer.add_sliding_window_pattern(list(hp.swa_layers))
        writer.add_rope_freq_base_swa(hp.rope_theta_swa or 10000.0)  # transformers' default rope_local_base_freq
    if hp.logit_softcap:
        writer.add_final_logit_softcapping(hp.logit_softcap)


def _setup(ckpt: Checkpoint, meta: gguf.Metadata, file_type: int):
    def setup(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(writer)
        writer.add_string("edgekit.converter", CONVERTER)
        _write_hparams(writer, ckpt)
        writer.add_file_type(file_type)
        write_vocab(writer, ckpt.vocab)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    return setup


def check_vocab(ckpt: Checkpoint, name: str) -> None:
    """Refuse a vocabulary llama.cpp would tokenize differently (:mod:`edgekit.convert.vocab_check`), in a
    model named ``name`` (the output's general.name, which llama.cpp reads token attributes from)."""
    with _vocab_checked(ckpt, name, None) as proven:
        proven()


@contextlib.contextmanager
def _vocab_checked(ckpt: Checkpoint, name: str, packed: PackedArrays | None) -> Iterator[Callable[[], None]]:
    """:func:`check_vocab` in two halves (:func:`~edgekit.convert.vocab_check.tokenization_check`): the
    reference tokenizer's refusal before this yields, llama.cpp's from the yielded ``proven()``. ``packed``
    keeps the vocabulary's arrays packed for the model's own files (:func:`write_gguf`)."""
    from edgekit.convert.vocab_check import tokenization_check

    def setup(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        _write_hparams(writer, ckpt)
        write_vocab(writer, ckpt.vocab)

    with tokenization_check(ckpt.vocab, lambda path: write_gguf(path, setup, [], ckpt.arch.gguf_name,
                                                                packed=packed)) as proven:
        yield proven


def _parse_types(quant: str | Sequence[str], max_kld: float | None) -> list[str]:
    """Normalise the requested types: llama.cpp types and recipe names; ``auto`` becomes a recipe."""
    from edgekit.convert.recipes import get_recipe, is_recipe

    names = quant.split(",") if isinstance(quant, str) else list(quant)
    types = []
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if is_recipe(name):
            name = get_recipe(name, max_kld=max_kld).name
        else:
            quant_type(name)  # validates, raising with the list of known types and recipes
        if name not in types:
            types.append(name)
    if not types:
        raise EdgekitError("no output type given", "Pass e.g. -q q4_k_m,q8_0.")
    return types


def _base_type(types: list[str], source_dtype: str) -> str:
    """The float type the checkpoint is written as once; quantized outputs are made from it."""
    floats = [t for t in types if t in FLOAT_TYPES]
    preferred = {"BF16": "bf16", "F16": "f16"}.get(source_dtype, "f16")
    if preferred in floats:
        return preferred
    return floats[0] if floats else preferred


def _type_label(type_name: str) -> str:
    """How a type or recipe is spelled in file names and summaries (Q4_K_M, Q4-BEST)."""
    return QUANT_TYPES[type_name].name if type_name in QUANT_TYPES else type_name.upper()


def _estimate_bytes(n_params: int, type_name: str) -> int:
    if type_name in QUANT_TYPES:
        bits = QUANT_TYPES[type_name].bits_per_weight
    else:  # a recipe: its bits per weight as measured in recipes.py's quality table (SmolLM2-135M)
        from edgekit.convert.recipes import get_recipe

        measured = get_recipe(type_name).measured
        bits = measured.bpw if measured else 8.5  # an unmeasured recipe: no more than all Q8_0
    return int(n_params * bits / 8) + (16 << 20)


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    quant: str | Sequence[str] = ("q4_k_m",),
    *,
    force: bool = False,
    threads: int | None = None,
    max_kld: float | None = None,
    progress: ProgressFn | None = None,
) -> list[ConvertedFile]:
    """Convert a Hugging Face checkpoint to GGUF, once per requested type.

    Args:
        src: a checkpoint directory, or a Hub repo id ``owner/name[@revision]``.
        out: an output directory (default: the current one), or a ``.gguf`` path
            when exactly one type is asked for.
        quant: types, as a list or comma-separated: f32, f16, bf16, q8_0, q6_k,
            q5_k_m, q4_k_m, q4_0, ... (see ``QUANT_TYPES``), or a recipe from
            ``edgekit.convert.recipes.RECIPES``; ``auto`` is the fastest recipe whose
            measured KL divergence is within ``max_kld``.
        force: overwrite existing outputs.
        threads: threads for llama.cpp's quantizer (default: all cores).
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        The files written, in the order of ``quant``.
    """
    from edgekit.convert.source import resolve_source  # imports huggingface_hub only for Hub ids

    types = _parse_types(quant, max_kld)
    source = resolve_source(str(src), progress=progress)
    ckpt = open_checkpoint(source.path, source.repo_id, source.url)
    base = _base_type(types, ckpt.weights.dtype)
    plans = plan_tensors(ckpt, base.upper())
    n_params = sum(p.ref.n_elements for p in plans)
    meta = model_metadata(ckpt.directory, n_params, ckpt.repo_id, ckpt.url)
    meta.name = llama_cpp_name(meta.name, ckpt.vocab)
    packed: PackedArrays = {}  # the vocabulary is packed once for the check and every file written
    with contextlib.ExitStack() as stack:
        # The check's llama.cpp half runs while the tensors stream; no output appears before it has passed.
        vocab_proven = stack.enter_context(_vocab_checked(ckpt, meta.name, packed))
        out_path = Path(out) if out is not None else Path.cwd()
        if out_path.suffix == ".gguf":
            if len(types) != 1:
                raise EdgekitError(f"{out_path} names one file but {len(types)} types were asked for",
                                   "Pass a directory with -o when converting to several types.")
            targets = {types[0]: out_path}
        else:
            targets = {t: out_path / default_filename(meta, _type_label(t)) for t in types}
        for target in targets.values():
            check_writable(target, force)
        directory = stack.enter_context(output_directory(next(iter(targets.values())).parent))
        needed = sum(_estimate_bytes(n_params, t) for t in types)
        if base not in targets:
            needed += _estimate_bytes(n_params, base)
        check_free_space(directory, needed)

        written: list[ConvertedFile] = []
        setup = _setup(ckpt, meta, quant_type(base).ftype)

        def finish(path: Path, type_name: str) -> None:
            written.append(ConvertedFile(path, _type_label(type_name), path.stat().st_size, n_params))

        # Other float types are written from the checkpoint directly, not requantized.
        for t in types:
            if t in FLOAT_TYPES and t != base:
                with atomic_output(targets[t]) as tmp:
                    other = plan_tensors(ckpt, t.upper())
                    write_gguf(tmp, _setup(ckpt, meta, quant_type(t).ftype), other, ckpt.arch.gguf_name, progress, packed)
                    vocab_proven()
                finish(targets[t], t)

        if base in targets:
            with atomic_output(targets[base]) as tmp:
                write_gguf(tmp, setup, plans, ckpt.arch.gguf_name, progress, packed)
                vocab_proven()
            base_file = targets[base]
            finish(base_file, base)
            _quantize_all(base_file, types, targets, n_params, threads, progress, finish)
        else:
            with scratch_file(directory, f".{base}.gguf") as tmp:
                write_gguf(tmp, setup, plans, ckpt.arch.gguf_name, progress, packed)
                vocab_proven()
                _quantize_all(tmp, types, targets, n_params, threads, progress, finish)
        order = {_type_label(t): i for i, t in enumerate(types)}
        return sorted(written, key=lambda f: order[f.type])


def _quantize_all(base_file: Path, types, targets, n_params, threads, progress, finish) -> None:
    from edgekit.convert.tensor_quant import quantize_with_recipe

    for t in types:
        if t in FLOAT_TYPES:
            continue
        if t not in QUANT_TYPES:  # a recipe
            quantize_with_recipe(base_file, targets[t], t, progress=progress, threads=threads)
        else:
            with atomic_output(targets[t]) as tmp:
                quantize(base_file, tmp, t, threads=threads, expected_bytes=_estimate_bytes(n_params, t),
                         progress=progress, stage=f"quantize {quant_type(t).name}")
        finish(targets[t], t)
