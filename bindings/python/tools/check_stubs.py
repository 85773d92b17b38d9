"""Fails when python/openledger/__init__.pyi disagrees with the built module.

Checks that the stub and the module export the same public names, that every class has the same
public methods and properties in both (plus ``__len__`` / ``__init__`` where either has them),
that exception classes have the same base, and that functions and methods take the same
parameter names (from the module's ``__text_signature__``).

Usage: python tools/check_stubs.py  (with the package installed)
"""

import ast
import inspect
import pathlib
import sys

import openledger
from openledger import _openledger

STUB = pathlib.Path(__file__).resolve().parent.parent / "python" / "openledger" / "__init__.pyi"
SPECIAL = {"__len__", "__init__"}


def public(names):
    return {n for n in names if not n.startswith("_") or n in SPECIAL}


def stub_params(fn):
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return [n for n in names if n not in ("self", "cls")]


def runtime_params(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [n for n in sig.parameters if n not in ("self", "cls", "$self", "$cls")]


def main():
    tree = ast.parse(STUB.read_text())
    problems = []
    stub_names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
            stub_names.add(node.name)
        # Module constants: `NAME: int`.
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not node.target.id.startswith("_"):
                stub_names.add(node.target.id)
    module_names = {n for n in dir(_openledger) if not n.startswith("_")}
    exported = set(openledger.__all__)
    for name in sorted(module_names ^ stub_names):
        where = "module" if name in module_names else "stub"
        problems.append(f"{name}: only in the {where}")
    for name in sorted(exported ^ module_names):
        problems.append(f"{name}: __all__ and the native module differ")

    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in module_names:
            rt = runtime_params(getattr(_openledger, node.name))
            if rt is not None and rt != stub_params(node):
                problems.append(f"{node.name}: parameters {stub_params(node)} in the stub, {rt} in the module")
        if not isinstance(node, ast.ClassDef) or node.name not in module_names:
            continue
        cls = getattr(_openledger, node.name)
        if issubclass(cls, BaseException):
            stub_base = node.bases[0].id if node.bases else None
            if stub_base != cls.__bases__[0].__name__:
                problems.append(f"{node.name}: base {stub_base} in the stub, {cls.__bases__[0].__name__} in the module")
            continue
        members = {m.name: m for m in node.body if isinstance(m, ast.FunctionDef)}
        runtime = public(n for n in vars(cls))
        if "__init__" in members:
            runtime.add("__init__")  # #[new] shows up as __new__
        runtime.discard("__new__")
        for name in sorted(public(members) ^ runtime):
            where = "module" if name in runtime else "stub"
            problems.append(f"{node.name}.{name}: only in the {where}")
        for name, fn in members.items():
            if name.startswith("_") or name not in vars(cls):
                continue
            attr = inspect.getattr_static(cls, name)
            if isinstance(attr, (staticmethod, classmethod)):
                attr = getattr(cls, name)
            if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
                if callable(attr) and not hasattr(attr, "__get__") or inspect.isroutine(attr):
                    problems.append(f"{node.name}.{name}: a property in the stub, a method in the module")
                continue
            rt = runtime_params(attr)
            if rt is not None and rt != stub_params(fn):
                problems.append(f"{node.name}.{name}: parameters {stub_params(fn)} in the stub, {rt} in the module")
        if "__init__" in members:
            rt = runtime_params(cls)
            if rt is not None and rt != stub_params(members["__init__"]):
                problems.append(f"{node.name}(): parameters {stub_params(members['__init__'])} in the stub, {rt} in the module")

    if problems:
        print(f"{STUB.name} is stale:", *problems, sep="\n  ")
        return 1
    print(f"{STUB.name}: {len(stub_names)} names agree with the module")
    return 0


if __name__ == "__main__":
    sys.exit(main())
