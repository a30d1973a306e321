"""Loading exported generators: ``torch.export`` programs (``.pt2``), ONNX (``.onnx``, fp32 or INT8)
and TorchScript (``.ts``/``.torchscript``/``.jit``).

Written by :mod:`coevo.deploy.export`; read here so that loading a model never needs the
exporter. Each loaded module takes and returns NCHW RGB tensors in [-1, 1] and
has ``.arch``: the :class:`GeneratorArch` stored in the file, or None.

Loading a ``.pt2`` file is safe only after :func:`check_pt2_archive`, which
:func:`load_exported` runs first: ``torch.export.load`` itself unpickles payloads the
archive marks as pickled, resolves every call target by a dotted name under ``torch``,
``operator`` or ``math`` (``torch.os.system`` is such a name), parses shape expressions
with sympy, which evaluates them, and ``exec``s the program's guard code. The check
refuses all of these unless they are raw tensors, ATen operators and arithmetic on
shape symbols (and no guard code at all).
"""
from __future__ import annotations

import ast
import json
import logging
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..core.files import PathLike, regular_file
from ..models.generator import GeneratorArch
from ..errors import CheckpointError

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
PT2_SUFFIX = ".pt2"
ARCH_EXTRA_FILE = "coevo_arch.json"        # TorchScript and .pt2: the architecture, as JSON
PROGRAM_EXTRA_FILE = "coevo_program.json"  # .pt2: {"dtype", "channels_last", "dynamic"}
ARCH_METADATA_KEY = "coevo_arch"           # ONNX metadata_props
PRECISION_METADATA_KEY = "coevo_precision"  # ONNX metadata_props: "fp32" or "int8"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

log = logging.getLogger(__name__)


@contextmanager
def quiet_export() -> Iterator[None]:
    """Silence deprecation warnings and the ONNX exporters' INFO chatter around exporting or loading.

    torch 2.14 marks ``torch.jit`` deprecated and the ONNX optimiser logs every pass; neither
    is a problem with the exported model (the parity check is what says whether it is right).
    """
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def ort_session(path: PathLike, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                profile_prefix: Optional[str] = None) -> Any:
    """The one way coevo opens an ONNX file in ONNX Runtime: full graph optimisation, ``threads``
    intra-op threads (ORT's default when None), idle workers that do not spin, optional profiling.

    Graph optimisation happens here, at load, not in the file: a model saved after
    ORT_ENABLE_ALL holds layouts for this CPU's instruction set (NCHWc) and is only valid on
    the same kind of machine. Spinning is off because ORT's idle workers otherwise spin after
    each run and, interleaved with PyTorch, steal the cores the next model needs (measured: +50%
    on the next eager call on 2 busy cores).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxGenerator(nn.Module):
    """Runs an exported ``.onnx`` generator with ONNX Runtime behind an ``nn.Module`` face.

    Input and output: torch tensors, NCHW, RGB, [-1, 1]; the output comes back on the
    input's device. ``.arch`` is the :class:`GeneratorArch` stored in the file (None if absent).
    """

    def __init__(self, path: PathLike, providers: Optional[Sequence[str]] = None,
                 intra_op_num_threads: Optional[int] = None) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self.session = ort_session(self.path, intra_op_num_threads, providers)
        except Exception as e:
            raise CheckpointError(f"cannot open {self.path} with ONNX Runtime ({e}); the file may be "
                                  "truncated or not an ONNX model") from e
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.arch = _stored_arch(meta.get(ARCH_METADATA_KEY), self.path, ARCH_METADATA_KEY)
        # "int8" for coevo's quantised exports; files from elsewhere count as fp32
        self.precision = meta.get(PRECISION_METADATA_KEY, "fp32")

    @property
    def providers(self) -> List[str]:
        return self.session.get_providers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, providers={self.providers}, precision={self.precision}"


# ----------------------------------------------------------------------------- torch.export (.pt2)
# What check_pt2_archive lets torch.export.load see: ATen operators and getitem as call
# targets, tensors stored raw (never pickled), shape expressions made of shape symbols,
# integers and sympy's arithmetic. Anything else is refused before torch reads the file.
_SAFE_TARGET = re.compile(r"^(torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem)$")
_SYMBOL = re.compile(r"^[a-z]\d+$")  # s0, s76, ...: torch's names for dynamic sizes
# What a shape expression may call: the functions torch's deserialiser hands sympy and the
# sympy classes its expressions are written in (``Mul(Integer(4), Symbol('s76', positive=True))``).
_SYMPY_CALLS = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "IsNonOverlappingAndDenseIndicator",
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "true", "false", "True", "False", "oo", "int_oo",
})
_SAFE_AST = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator, ast.unaryop,
             ast.cmpop, ast.boolop, ast.Load, ast.keyword)
_ARCHIVE_DIRS = ("models/", "data/", "extra/", "archive_format", "archive_version", "byteorder", ".data/")


class UnsafeExportError(CheckpointError):
    """A ``.pt2`` file holds something ``torch.export.load`` would execute: it is not loaded."""


def _walk(obj: Any, key: str = "") -> Iterator[tuple]:
    """(key, value) for every leaf of a JSON document (list items inherit their list's key)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)
    else:
        yield key, obj


def _unsafe_expression(text: str) -> Optional[str]:
    """What in a shape expression sympy must not evaluate; None when it is only calls of
    :data:`_SYMPY_CALLS` on numbers, shape-symbol names and arithmetic (checked on its syntax tree)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return text[:80]
    for node in ast.walk(tree):
        if isinstance(node, _SAFE_AST):
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SYMBOL.match(node.value):
            continue
        if isinstance(node, ast.Name) and (node.id in _SYMPY_CALLS or _SYMBOL.match(node.id)):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:
            continue
        return ast.unparse(node)[:80]
    return None


def _member(name: str) -> str:
    """An archive member's path below the archive's own top folder (``archive/models/x.json`` -> ``models/x.json``)."""
    return name if name.startswith(_ARCHIVE_DIRS) else name.split("/", 1)[-1]


def check_pt2_archive(path: PathLike) -> None:
    """Refuse a ``.pt2`` file that could run code when loaded or called; raise :class:`UnsafeExportError`.

    Reads the archive's JSON and checks, before ``torch.export.load`` sees the file: no
    compiled code (AOTInductor, ExecuTorch); no pickled payloads (legacy ``.pt`` weight files,
    ``use_pickle`` entries, custom or opaque objects); sample inputs that ``torch.load``
    reads with ``weights_only=True`` (torch retries a failure with full unpickling); every
    call target an ATen operator or ``operator.getitem``; no guard code (torch ``exec``s it);
    every shape expression made of shape symbols, numbers and the sympy functions torch defines.
    """
    import io

    from ..models.archive import Archive, UntrustedArchiveError

    path = Path(path)
    try:
        Archive(path).close()  # one top folder, no duplicate or case-variant entry names, no zip bomb
    except UntrustedArchiveError as e:
        raise UnsafeExportError(str(e)) from e
    docs: Dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                inner = _member(name)
                lower = inner.lower()
                if lower.startswith(("data/aotinductor/", "data/executorch/", "data/mtia/")) \
                        or lower.endswith((".so", ".dll", ".dylib", ".cpp", ".pte")):
                    raise UnsafeExportError(f"{path} holds compiled code ({inner}); coevo loads plain "
                                            "torch.export programs only")
                if lower.endswith((".pt", ".pkl", ".pickle")):
                    if inner != "data/sample_inputs/model.pt":
                        raise UnsafeExportError(f"{path} stores pickled data ({inner}); coevo loads archives "
                                                "with raw tensors only: re-export the model")
                    try:
                        torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                    except Exception as e:
                        raise UnsafeExportError(f"{path}: its sample inputs ({inner}) are not plain tensors "
                                                f"({type(e).__name__}); refusing to load it") from e
                elif lower.endswith(".json"):  # every JSON document, whatever its folder or case
                    docs[inner] = json.loads(zf.read(name))
    except UnsafeExportError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"cannot read {path} as a torch.export archive ({e}); the file may be truncated "
                              "or not a .pt2 program") from e
    if not any(k.startswith("models/") for k in docs):
        raise CheckpointError(f"{path} holds no torch.export program (no models/*.json)")
    for inner, doc in docs.items():
        for key, value in _walk(doc):
            if key == "use_pickle" and value:
                raise UnsafeExportError(f"{path}: {inner} marks a payload as pickled; refusing to load it")
            if key == "path_name" and isinstance(value, str) and not value.startswith(("weight_", "tensor_")):
                raise UnsafeExportError(f"{path}: {inner} holds a constant that is no tensor ({value})")
            if not isinstance(value, str) or not inner.lower().startswith("models/"):
                continue
            if key == "target" and not _SAFE_TARGET.match(value):
                raise UnsafeExportError(f"{path} calls {value!r}; coevo loads programs of ATen operators only")
            if key == "guards_code":  # torch exec()s these when it builds the module
                raise UnsafeExportError(f"{path} holds guard code ({value[:80]!r}), which torch executes; coevo's "
                                        "exports have none")
            if key == "expr_str" and _unsafe_expression(value) is not None:
                raise UnsafeExportError(f"{path} holds a shape expression coevo does not evaluate: "
                                        f"{value!r} ({_unsafe_expression(value)!r})")


class ExportedProgramGenerator(nn.Module):
    """Runs a ``torch.export`` program (``.pt2``) of a generator behind an ``nn.Module`` face.

    Input and output: NCHW, RGB, [-1, 1], in the input's dtype. The program's own dtype
    (``.dtype``: float32, or float16/bfloat16 for the CUDA target) is applied on the way
    in, channels_last too when the program was exported so. ``.arch``: the stored
    :class:`GeneratorArch` (None if absent). ``.dynamic``: batch, height and width may vary.
    ``.static_shape``: the one input shape a program without dynamic sizes runs (None for a dynamic one); any
    other shape is a :class:`CheckpointError` naming what to use instead.
    """

    def __init__(self, program: Any, path: PathLike, arch: Optional[GeneratorArch] = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, dynamic: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.arch = arch
        self.dtype = dtype
        self.channels_last = channels_last
        self.dynamic = dynamic
        self.static_shape = program_static_shape(program)
        self.graph_module = program.module()

    def train(self, mode: bool = True) -> "ExportedProgramGenerator":
        # An exported graph has no training mode (its module refuses .train()/.eval()): it is always eval.
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_shape is not None and tuple(x.shape) != self.static_shape:
            raise CheckpointError(
                f"{self.path} is a torch.export program for {'x'.join(map(str, self.static_shape))} inputs only "
                f"(torch could not export it with dynamic sizes), not {'x'.join(map(str, x.shape))}: for other "
                "sizes use its ONNX export or its .pt/.safetensors weights, or load the .pt2 without "
                "--trust-model (coevo then rebuilds the network from its weights)")
        y = x.to(self.dtype)
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return self.graph_module(y).to(x.dtype).contiguous()

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, dtype={self.dtype}, channels_last={self.channels_last}"


def program_static_shape(program: Any) -> Optional[tuple]:
    """The input shape of a ``torch.export`` program whose input has no dynamic dimension; None when one is dynamic
    (or the program's input cannot be read)."""
    try:
        names = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                shape = getattr(node.meta.get("val"), "shape", None)
                if shape is None or not all(isinstance(d, int) for d in shape):
                    return None
                return tuple(int(d) for d in shape)
    except (AttributeError, TypeError):
        return None
    return None


def _json_metadata(text: str, path: PathLike, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: its {what} metadata is not valid JSON ({e}); the file is corrupt or "
                              "was not written by coevo; re-export it") from e


def _stored_arch(text: Optional[str], path: PathLike, what: str) -> Optional[GeneratorArch]:
    """The architecture (a :class:`GeneratorArch` or a U-Net's) in an export's metadata entry ``what``; None
    when absent or empty."""
    if not text:
        return None
    from ..models.archive import arch_from_dict
    from ..models.family import AnyGeneratorArch

    return arch_from_dict(AnyGeneratorArch, _json_metadata(text, path, what), path)


def load_pt2(path: PathLike) -> ExportedProgramGenerator:
    """Load a ``.pt2`` program written by :func:`coevo.deploy.export.save_torch_export`, after :func:`check_pt2_archive`."""
    path = Path(path)
    check_pt2_archive(path)
    extra = {ARCH_EXTRA_FILE: "", PROGRAM_EXTRA_FILE: ""}
    try:
        with quiet_export():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as a torch.export program ({type(e).__name__}: {e})") from e
    arch = _stored_arch(extra[ARCH_EXTRA_FILE], path, ARCH_EXTRA_FILE)
    info = _json_metadata(extra[PROGRAM_EXTRA_FILE], path, PROGRAM_EXTRA_FILE) if extra[PROGRAM_EXTRA_FILE] else {}
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: its {PROGRAM_EXTRA_FILE} is not a JSON object; re-export the model")
    dtype = DTYPES.get(info.get("dtype", "float32"), torch.float32)
    return ExportedProgramGenerator(program, path, arch=arch, dtype=dtype,
                                    channels_last=bool(info.get("channels_last", False)),
                                    dynamic=bool(info.get("dynamic", True)))


# ----------------------------------------------------------------------------- any export
def load_exported(path: PathLike, providers: Optional[Sequence[str]] = None,
                  intra_op_num_threads: Optional[int] = None, trust: bool = False) -> nn.Module:
    """Load a ``.pt2``, ``.onnx`` or ``.ts``/``.torchscript``/``.jit`` export as an eval-mode module with ``.arch``.

    ``.pt2`` runs through :class:`ExportedProgramGenerator` (checked by :func:`check_pt2_archive`
    first); ONNX through :class:`OnnxGenerator`; TorchScript loads on CPU (``torch.jit.load``).
    ``.arch`` is None for files exported without coevo's architecture entry.

    Loading a ``.pt2`` or TorchScript program can run code the file holds, so those need
    ``trust=True``: pass it only for files this process wrote or the user vouched for
    (``--trust-model``). :func:`coevo.load_generator` rebuilds untrusted ones from their weights.
    """
    path = regular_file(path, "exported model")  # missing, a folder, a pipe or a device: refused here
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxGenerator(path, providers=providers, intra_op_num_threads=intra_op_num_threads).eval()
    if suffix in (PT2_SUFFIX, *TORCHSCRIPT_SUFFIXES) and not trust:
        raise CheckpointError(f"{path}: running an exported program needs trust (it can hold code); pass "
                              "--trust-model if you trust where the file came from, or load it with "
                              "coevo.load_generator, which rebuilds the network from its weights")
    if suffix == PT2_SUFFIX:
        return load_pt2(path).eval()
    if suffix not in TORCHSCRIPT_SUFFIXES:
        raise CheckpointError(f"{path}: not an exported model (expected .pt2, .onnx or one of "
                              f"{TORCHSCRIPT_SUFFIXES})")
    extra = {ARCH_EXTRA_FILE: ""}
    try:
        with quiet_export():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as TorchScript ({e}); the file may be truncated") from e
    module.arch = _stored_arch(extra[ARCH_EXTRA_FILE], path, ARCH_EXTRA_FILE)
    return module.eval()


def check_image_to_image(model: nn.Module, x: torch.Tensor, source: PathLike) -> torch.Tensor:
    """``model(x)`` for NCHW ``x``, or :class:`CheckpointError` if ``model`` is no image-to-image generator.

    A generator returns a tensor of exactly the input's shape (same channels, same height
    and width; a model that declares its output channels, ``model.arch.out_channels``, those:
    the reference's ``--input_nc 1 --output_nc 3``). An exported file of some other network (a
    classifier, a model for other channels or sizes) fails here with a message naming ``source``,
    before it is used.
    """
    try:
        out = model(x)
    except CheckpointError:  # the model's own one-line refusal (a .pt2 program for one input shape only)
        raise
    except Exception as e:
        raise CheckpointError(
            f"{source} cannot run on a {'x'.join(map(str, x.shape))} image batch ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is not an image-to-image generator for "
            "this size (exported with a fixed input size?)") from e
    out_channels = getattr(getattr(model, "arch", None), "out_channels", None) or x.shape[1]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], out_channels, *x.shape[2:]):
        got = "x".join(map(str, out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(
            f"{source} is not an image-to-image generator: for an input of shape "
            f"{'x'.join(map(str, x.shape))} it returns {got}; coevo needs a model whose output has the "
            "input's channels, height and width")
    return out
