"""Evaluate the part of a Bicep template that is known before deployment, from pycep-parser's tree.

tests/infra_check.py --dump gives pycep's parse of every file under infra/ (run in .venv-infra);
this module follows parameters, variables and module calls from main.bicep down, so tests can ask
"what app settings does the function app get with these parameters?". What only Azure knows (a
resource's properties, a module's outputs) comes back as ``Unresolved`` carrying the expression,
for example ``Unresolved("identity.outputs.clientId")``.

pycep writes identifiers and string literals alike as Python strings: a string naming a symbol in
scope is read as that symbol, anything else as a literal. ``empty()`` of an unresolved value is
false: the template only asks it of endpoints and ids, which Azure never leaves empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


class Unresolved(str):
    """A value Azure computes at deployment; the string is the Bicep expression."""

    def __repr__(self) -> str:
        return f"Unresolved({str.__repr__(self)})"


@dataclass
class Scope:
    template: Template
    file: str
    bindings: Mapping[str, Any] = field(default_factory=dict)  # parameter values passed in
    loop: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tree(self) -> dict:
        return self.template.trees[self.file]

    def symbol(self, name: str) -> tuple[str, Any] | None:
        if name in self.loop:
            return "loop", self.loop[name]
        for kind in ("parameters", "variables", "resources", "modules"):
            if name in self.tree.get(kind, {}):
                return kind, self.tree[kind][name]
        return None

    def value(self, expr: Any) -> Any:
        return evaluate(expr, self)

    def module(self, name: str, **overrides: Any) -> Scope:
        """The scope of module ``name`` called from this file, its parameters evaluated here."""
        call = self.tree["modules"][name]
        config = call["config"].get("config", call["config"]) if "condition" in call["config"] else call["config"]
        target = str(PurePosixPath(self.file).parent / call["detail"]["path"])
        bindings = {key: self.value(expr) for key, expr in config.get("params", {}).items()}
        return Scope(self.template, target, {**bindings, **overrides})

    def condition(self, kind: str, name: str) -> Any:
        """A resource's or module's deployment condition (True when it has none)."""
        config = self.tree[kind][name]["config"]
        return self.value(config["condition"]) if config.get("condition") is not None else True


@dataclass
class Template:
    trees: dict[str, dict]
    root: Path

    def scope(self, file: str = "main.bicep", **parameters: Any) -> Scope:
        return Scope(self, file, parameters)

    def resources(self):
        """Every resource in every file: (file, symbol, declaration, body without condition/loop)."""
        for file, tree in self.trees.items():
            for name, resource in tree.get("resources", {}).items():
                config = resource["config"]
                body = config["config"] if ("condition" in config or "loop_type" in config) else config
                yield file, name, resource, body


def accessor_path(expr: Any) -> list[Any] | None:
    """``a.b.c`` as ['a', 'b', 'c']; None when expr is not a plain accessor chain."""
    if isinstance(expr, str):
        return [expr]
    operator = expr.get("operator") if isinstance(expr, dict) else None
    if not operator or operator["type"] != "property_accessor":
        return None
    head, rest = operator["operands"]["operand_1"], accessor_path(operator["operands"]["operand_2"])
    return None if rest is None or not isinstance(head, str) else [head, *rest]


def _text(expr: Any) -> str:
    path = accessor_path(expr)
    return ".".join(map(str, path)) if path else json.dumps(expr, sort_keys=True)


def _interpolate(text: str, scope: Scope) -> Any:
    unresolved = False

    def replace(match: re.Match) -> str:
        nonlocal unresolved
        value = scope.value(match.group(1).strip())
        unresolved = unresolved or isinstance(value, Unresolved)
        return f"${{{value}}}" if isinstance(value, Unresolved) else _bicep_string(value)

    result = INTERPOLATION.sub(replace, text)
    return Unresolved(result) if unresolved else result


def _key(key: str, scope: Scope) -> Any:
    """An object key: pycep keeps the quotes of quoted keys ('azd-service-name', '${id}')."""
    if len(key) >= 2 and key[0] == key[-1] == "'":
        key = key[1:-1]
    return _interpolate(key, scope) if "${" in key else key


def _bicep_string(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _function(call: dict, scope: Scope) -> Any:
    kind, args = call["type"], call["parameters"]
    if kind == "string":
        value = scope.value(args["value_to_convert"])
        return value if isinstance(value, Unresolved) else _bicep_string(value)
    if kind == "union":
        merged: dict = {}
        for key in sorted(args, key=lambda k: int(k.split("_")[1])):
            part = scope.value(args[key])
            if not isinstance(part, dict):
                return Unresolved(f"union({_text(args[key])})")
            merged.update(part)
        return merged
    if kind == "concat":
        parts = [scope.value(args[key]) for key in sorted(args, key=lambda k: int(k.split("_")[1]))]
        return [item for part in parts for item in part]
    if kind == "empty":
        value = scope.value(args["item_to_test"])
        return False if isinstance(value, Unresolved) else len(value) == 0  # endpoints, ids: never empty
    if kind == "load_json_content":
        path = scope.template.root / PurePosixPath(scope.file).parent / args["file_path"]
        return json.loads(Path(path).read_text())
    return Unresolved(f"{kind}(...)")


BINARY = {
    "and": lambda a, b: a and b, "or": lambda a, b: a or b,
    "equals": lambda a, b: a == b, "not_equals": lambda a, b: a != b,
    "greater_than": lambda a, b: a > b, "greater_than_or_equals": lambda a, b: a >= b,
    "less_than": lambda a, b: a < b, "less_than_or_equals": lambda a, b: a <= b,
}


def _operator(operator: dict, scope: Scope) -> Any:
    kind, operands = operator["type"], operator["operands"]
    if kind == "conditional":
        condition = scope.value(operands["condition"])
        if not isinstance(condition, bool):
            raise ValueError(f"condition {_text(operands['condition'])} is not known before deployment")
        return scope.value(operands["true_value" if condition else "false_value"])
    if kind == "not":
        value = scope.value(operands["bool_value"])
        return value if isinstance(value, Unresolved) else not value
    if kind in BINARY:
        left, right = scope.value(operands["operand_1"]), scope.value(operands["operand_2"])
        if isinstance(left, Unresolved) or isinstance(right, Unresolved):
            return Unresolved(f"{kind}(...)")
        return BINARY[kind](left, right)
    if kind == "property_accessor":
        path = accessor_path({"operator": operator})
        if path is None:
            return Unresolved(_text({"operator": operator}))
        value = scope.value(path[0])
        for step in path[1:]:
            if not isinstance(value, dict) or isinstance(value, Unresolved):
                return Unresolved(".".join(map(str, path)))
            value = value[step]
        return value
    return Unresolved(f"{kind}(...)")


def evaluate(expr: Any, scope: Scope) -> Any:
    if expr is None or isinstance(expr, (bool, int, float)):
        return expr
    if isinstance(expr, list):
        return [scope.value(item) for item in expr]
    if isinstance(expr, dict):
        if set(expr) == {"function"}:
            return _function(expr["function"], scope)
        if set(expr) == {"operator"}:
            return _operator(expr["operator"], scope)
        if "loop_type" in expr:
            return Unresolved("[for ...]")
        return {_key(key, scope): scope.value(value) for key, value in expr.items() if not key.startswith("__")}
    if isinstance(expr, str):
        found = scope.symbol(expr)
        if found is None:
            return _interpolate(expr, scope) if "${" in expr else expr
        kind, declaration = found
        if kind == "loop":
            return declaration
        if kind == "parameters":
            if expr in scope.bindings:
                return scope.bindings[expr]
            default = declaration.get("default")
            return Unresolved(expr) if default is None else scope.value(default)
        if kind == "variables":
            return scope.value(declaration["value"])
        return Unresolved(expr)  # a resource or module symbol
    raise TypeError(f"unexpected node {expr!r}")
