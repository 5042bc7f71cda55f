"""Proving a TorchScript archive harmless before ``torch.jit.load`` runs any of it.

An archive's program is TorchScript source: ``code/**/*.py`` holds every method of every class,
``__setstate__`` included (which ``torch.jit.load`` runs while loading, before any forward pass).
TorchScript cannot import or call Python, but its builtins include operators that touch the
file system (``torch.save`` = ``aten::save``, ``torch.from_file``), print, or talk to other
processes. Without --trust-checkpoint an archive is loaded only when every source file passes:

  lexing    the plain subset torch writes: ASCII outside string literals, simple quoted strings,
            no tabs, line continuations or semicolons (so Python's parser, used here, and
            TorchScript's see the same code)
  syntax    the statements and expressions TorchScript's printer emits, nothing else
  names     every name read is a local of its function, an archive name (``__torch__...``,
            custom C++ classes excepted) or one of TorchScript's globals (``print`` is not)
  operators every operator reachable (``torch.NAME``, ``ops.NS.NAME``, and ``x.NAME`` method
            calls, which TorchScript resolves to operators) is on the allowlist of
            :func:`safe_operator`: computational, public, no file name or other unknown string
            argument; attribute names that are operators off the list are refused anywhere

Anything not classified is refused (exit 4, naming the member, line and operator). Not checked:
what the allowed operators do with hostile arguments (torch's own checks apply), and how long
or how much memory the program takes.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import zipfile
from dataclasses import dataclass
from functools import lru_cache

MAX_CODE_BYTES = 64 << 20  # all source files of an archive together

# Operator namespaces of torch's own computational kernels (others: collectives, profiler,
# test and debug ops, libraries' custom ops).
COMPUTE_NAMESPACES = frozenset(
    {"aten", "quantized", "_quantized", "prepacked", "mkldnn", "mkldnn_prepacked", "onednn"}
)
# prim:: operators that compute or inspect values (not Print, PythonOp, rpc_*, profiling).
SAFE_PRIM = frozenset(
    """RaiseException unchecked_unwrap_optional unchecked_cast Uninitialized NumToTensor TupleIndex
    TupleUnpack StringIndex ModuleContainerIndex EnumName EnumValue data device dtype layout grad
    requires_grad itemsize nbytes min max abs id index rangelist tolist type name IfThenElse
    is_cpu is_cuda is_ipu is_maia is_meta is_mkldnn is_mps is_mtia is_nested is_quantized
    is_sparse is_sparse_csr is_vulkan is_xla is_xpu""".split()
)
# Operators refused by name: file system (save, from_file), global random state.
DENIED = frozenset({"save", "from_file", "manual_seed", "seed", "set_", "record_stream"})
# Private operators (leading underscore) that TorchScript's printer emits for ordinary code.
SAFE_PRIVATE = frozenset(
    {"_set_item", "_unwrap_optional", "_shape_as_tensor", "_size_if_not_equal", "_infer_size",
     "_dim_arange", "_list_to_tensor", "_get_tracing_state", "_has_compatible_shallow_copy_type",
     "_pad_packed_sequence", "_pack_padded_sequence", "_assert_scalar", "_assert_async",
     "_native_multi_head_attention", "_transformer_encoder_layer_fwd", "_nested_tensor_from_mask",
     "_nested_tensor_from_mask_left_aligned"}
)
SAFE_PRIVATE_FAMILIES = ("_upsample_",)  # F.interpolate's kernels
# Names of string arguments that select a mode or are string data, never a path or an address.
STRING_ARGUMENTS = frozenset(
    """self a b s t l el key substr separator string fillchar chars old new values item dict idx
    to_add input inputs msg cls message ind type device_type norm reduce mode rounding_mode driver
    padding approximate UPLO ord interpolation p pad_mode side equation indexing padding_side
    assert_msg activation attr algorithm binary_attr unary_attr unary_algorithm post_op_name
    post_op_algorithm binary_post_op unary_post_op unary_post_op_algorithm""".split()
)
# Global names TorchScript resolves in an archive's code (print is left out).
SAFE_GLOBALS = frozenset(
    """torch ops CONSTANTS __torch__ fork awaitable annotate unchecked_cast uninitialized inf nan
    infj nanj tuple float complex int bool str getattr hasattr isinstance len hex oct round hash id
    min max abs all any divmod sum list dict ord chr bin pow range zip enumerate rangelist sorted
    AssertionError _to_tensor None True False
    Tensor List Dict Tuple Optional Union NoneType Any Future Await Device Stream Final Module
    Enum NamedTuple number Storage Generator Layout ScalarType MemoryFormat QScheme""".split()
)
FILE_OPERATORS = {"save": "torch.save (aten::save), which writes a file", "from_file": "torch.from_file, which reads a file"}

_STATEMENTS = (
    ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.If, ast.For, ast.While, ast.Break,
    ast.Continue, ast.Pass, ast.Expr, ast.With, ast.Delete, ast.Assert, ast.Raise,
)
_EXPRESSIONS = (
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.Constant, ast.Attribute,
    ast.Subscript, ast.Name, ast.List, ast.Tuple, ast.Dict, ast.Slice, ast.ListComp, ast.DictComp,
    ast.Starred, ast.keyword, ast.comprehension, ast.withitem, ast.arguments, ast.arg,
    ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)
_STRING = re.compile(r'^(?:"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\')$')
_NUMBER = re.compile(r"^(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)$")
_OPERATORS = frozenset(
    "( ) [ ] { } , : . = + - * / // % ** < > <= >= == != += -= *= /= //= %= **= & | ^ ~ << >> "
    "&= |= ^= <<= >>= -> ...".split()
)


@dataclass(frozen=True)
class Finding:
    """Why an archive is refused: where, and what it would call."""

    member: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.what} ({self.member}, line {self.line})"


class _Refuse(Exception):
    def __init__(self, line: int, what: str):
        super().__init__(what)
        self.line, self.what = line, what


def _schemas(qualified: str) -> list:
    import torch

    try:
        return list(torch._C._jit_get_schemas_for_operator(qualified))
    except RuntimeError:
        return []


@lru_cache(maxsize=None)
def safe_operator(qualified: str) -> bool:
    """Whether the operator ``ns::name`` (every overload) is on the allowlist."""
    namespace, _, name = qualified.partition("::")
    if namespace == "prim":
        return name in SAFE_PRIM and bool(_schemas(qualified))
    if namespace not in COMPUTE_NAMESPACES or name in DENIED or "unsafe" in name:
        return False  # unsafe_*: no bounds checks
    private = name.startswith("_") and not name.startswith("__")
    if private and name not in SAFE_PRIVATE and not name.startswith(SAFE_PRIVATE_FAMILIES):
        return False
    schemas = _schemas(qualified)
    if not schemas:
        return False
    for schema in schemas:
        for argument in schema.arguments:
            kind = str(argument.type)
            if "Storage" in kind or "unsafe" in argument.name or ("str" in kind and argument.name not in STRING_ARGUMENTS):
                return False
    return True


@lru_cache(maxsize=1)
def unsafe_names() -> frozenset:
    """Names of registered operators off the allowlist (refused as attribute names anywhere)."""
    import torch

    names = {schema.name.partition("::")[2] for schema in torch._C._jit_get_all_schemas() if not safe_operator(schema.name)}
    # x.NAME resolves to aten::NAME (a method) or prim::NAME (a property): allowed there, allowed
    names = {n for n in names if not (safe_operator(f"aten::{n}") or safe_operator(f"prim::{n}"))}
    return frozenset(names | DENIED | {"print"})


def _describe(qualified: str) -> str:
    name = qualified.partition("::")[2]
    if name in FILE_OPERATORS:
        return f"calls {FILE_OPERATORS[name]}"
    return f"calls operator {qualified}, which ncli cannot prove harmless"


def _lex(text: str) -> None:
    """The plain subset both parsers read alike; _Refuse otherwise."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\\"):
            raise _Refuse(lineno, "has a line continuation")
        if any(c in line for c in "\r\t\f\v\x00"):
            raise _Refuse(lineno, "has a control character in its source")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise _Refuse(getattr(exc, "lineno", 0) or 0, "has source that does not parse") from None
    skip = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER, tokenize.COMMENT}
    for tok in tokens:
        line = tok.start[0]
        if tok.type in skip:
            if tok.type == tokenize.COMMENT and not tok.string.isascii():
                raise _Refuse(line, "has non-ASCII source")
            continue
        if tok.type == tokenize.NAME and tok.string.isascii() and tok.string.isidentifier():
            continue
        if tok.type == tokenize.NUMBER and _NUMBER.match(tok.string):
            continue
        if tok.type == tokenize.STRING and _STRING.match(tok.string):
            continue
        if tok.type == tokenize.OP and tok.string in _OPERATORS:
            continue
        raise _Refuse(line, f"has source ncli does not classify ({tok.string[:20]!r})")


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ['a', 'b', 'c'] when rooted at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _is_annotation_entry(targets: list) -> bool:
    return (
        len(targets) == 1 and isinstance(targets[0], ast.Subscript)
        and isinstance(targets[0].value, ast.Name) and targets[0].value.id == "__annotations__"
        and isinstance(targets[0].slice, ast.Constant)
    )


def _resolve(chain: list[str]) -> str | None:
    """The operator a ``torch.``/``ops.`` chain names, as TorchScript resolves it; '' when the
    chain is archive code (``__torch__``); None when it is neither."""
    root, rest = chain[0], chain[1:]
    if root == "__torch__":
        return "" if rest[:2] != ["torch", "classes"] else "?custom C++ class __torch__." + ".".join(rest)
    if root == "torch":
        namespace = "aten"
    elif root == "ops" and rest:
        namespace, rest = rest[0], rest[1:]
    else:
        return None
    while rest and rest[0] == "autograd":  # torch.autograd.NAME and ops.NS.autograd.NAME are aten::NAME
        namespace, rest = "aten", rest[1:]
    if len(rest) != 1:
        return "?" + ".".join(chain)
    return f"{namespace}::{rest[0]}"


class _Audit(ast.NodeVisitor):
    def __init__(self, defined: frozenset):
        self.defined = defined  # every method and function name defined in the archive
        self.locals: set[str] = set()

    # -- structure --------------------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> None:
        for stmt in node.body:
            if isinstance(stmt, (ast.ClassDef, ast.FunctionDef)):
                self.visit(stmt)
            elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
                continue  # e.g. op_version_set = 8
            else:
                raise _Refuse(stmt.lineno, f"has a top-level {type(stmt).__name__} statement")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.decorator_list or node.keywords:
            raise _Refuse(node.lineno, "has a class decorator or keyword")
        for base in node.bases:
            self._names_only(base)
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef):
                self.visit(stmt)
            elif isinstance(stmt, ast.AnnAssign):
                self._names_only(stmt.annotation)
                if stmt.value is not None:
                    self._constant(stmt.value)
            elif isinstance(stmt, ast.Assign) and _is_annotation_entry(stmt.targets):
                self._names_only(stmt.value)  # __annotations__["0"] = __torch__.<type>
            elif isinstance(stmt, ast.Assign):
                self._constant(stmt.value)
            elif not isinstance(stmt, ast.Pass):
                raise _Refuse(stmt.lineno, f"has a {type(stmt).__name__} statement in a class body")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            raise _Refuse(node.lineno, "has a decorator")
        args = node.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None and a.annotation is not None:
                self._names_only(a.annotation)
        if node.returns is not None:
            self._names_only(node.returns)
        outer = self.locals
        self.locals = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if a is not None}
        self.locals |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                self.locals.add(sub.id)
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        for stmt in node.body:
            if not isinstance(stmt, _STATEMENTS):
                raise _Refuse(stmt.lineno, f"has a {type(stmt).__name__} statement")
            if isinstance(stmt, ast.AnnAssign):
                self._names_only(stmt.annotation)
                for part in (stmt.target, stmt.value):
                    if part is not None:
                        self.visit(part)
                continue
            self.visit(stmt)
        self.locals = outer

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, (*_STATEMENTS, *_EXPRESSIONS)):
            raise _Refuse(getattr(node, "lineno", 0), f"uses {type(node).__name__}, which ncli does not classify")
        super().generic_visit(node)

    # -- what a name or an attribute may reach ---------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and node.id not in self.locals and node.id not in SAFE_GLOBALS:
            what = "calls print, which writes to the terminal" if node.id == "print" else f"uses the name {node.id!r}, which ncli does not classify"
            raise _Refuse(node.lineno, what)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        target = _resolve(chain) if chain and chain[0] not in self.locals else None
        if target is not None:
            if target.startswith("?"):
                raise _Refuse(node.lineno, f"uses {target[1:]}, which ncli does not classify")
            if target and not safe_operator(target):
                raise _Refuse(node.lineno, _describe(target))
            return  # an operator or archive code: nothing below it to check
        if node.attr in unsafe_names():
            raise _Refuse(node.lineno, _describe(f"aten::{node.attr}") if node.attr in FILE_OPERATORS else
                          f"uses .{node.attr}, which TorchScript may resolve to an operator ncli cannot prove harmless")
        self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            chain = _chain(func)
            rooted = chain is not None and chain[0] not in self.locals and _resolve(chain) is not None
            if not rooted and func.attr not in self.defined and not safe_operator(f"aten::{func.attr}"):
                raise _Refuse(node.lineno, f"calls .{func.attr}(), which ncli does not classify")
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)) or name.value in unsafe_names():
                raise _Refuse(node.lineno, f"uses {func.id}() with a name ncli does not classify")
        self.generic_visit(node)

    def _names_only(self, node: ast.AST) -> None:
        """A type annotation: names, attributes, subscripts and constants, no calls."""
        for sub in ast.walk(node):
            if not isinstance(sub, (ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant, ast.expr_context)):
                raise _Refuse(getattr(node, "lineno", 0), "has a type annotation ncli does not classify")
            if isinstance(sub, ast.Attribute):
                chain = _chain(sub)
                if chain is None or chain[0] != "__torch__" and chain[0] not in SAFE_GLOBALS:
                    raise _Refuse(sub.lineno, "has a type annotation ncli does not classify")

    def _constant(self, node: ast.AST) -> None:
        """A class attribute's value: literals only."""
        for sub in ast.walk(node):
            if not isinstance(sub, (ast.Constant, ast.List, ast.Tuple, ast.UnaryOp, ast.USub, ast.UAdd, ast.expr_context)):
                raise _Refuse(getattr(node, "lineno", 0), "has a class attribute that is not a literal")


def _code_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [info for info in archive.infolist() if info.filename.endswith(".py")]


def audit(path: str) -> Finding | None:
    """None when every source file of the archive at ``path`` passes; else the first finding."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _code_members(archive)
            if sum(info.file_size for info in members) > MAX_CODE_BYTES:
                return Finding("code/", 0, f"holds more than {MAX_CODE_BYTES >> 20} MiB of source")
            sources = {}
            for info in members:
                raw = archive.read(info)
                try:
                    sources[info.filename] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    return Finding(info.filename, 0, "has source that is not UTF-8 text")
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:
        return Finding(str(path), 0, f"cannot be read as a zip archive ({exc})")
    trees = {}
    for member, text in sources.items():
        try:
            _lex(text)
            trees[member] = ast.parse(text, filename=member)
        except _Refuse as refusal:
            return Finding(member, refusal.line, refusal.what)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return Finding(member, 0, "has source that does not parse")
    defined = frozenset(n.name for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    for member, tree in trees.items():
        try:
            _Audit(defined).visit(tree)
        except _Refuse as refusal:
            return Finding(member, refusal.line, refusal.what)
        except RecursionError:
            return Finding(member, 0, "nests too deeply to classify")
    return None
