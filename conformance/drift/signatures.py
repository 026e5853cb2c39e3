"""Method signatures as the index stores them, and the rule for when an override still fits.

A signature is encoded as one short string: its parameters joined by commas, each marked by
kind (`/x` positional-only, `x` positional-or-keyword, `*x` var-positional, `-x` keyword-only,
`**x` var-keyword) with `=` appended when it has a default, after an optional `@static` or
`@class` binding. `self,kv_cache_layout,-load=` is an instance method taking one positional
argument and one optional keyword-only one.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITIONAL_ONLY = "positional-only"
POSITIONAL_OR_KEYWORD = "positional-or-keyword"
VAR_POSITIONAL = "var-positional"
KEYWORD_ONLY = "keyword-only"
VAR_KEYWORD = "var-keyword"

#: kind → the marker it carries in the encoded form, longest markers first for decoding
_MARKERS = {
    VAR_KEYWORD: "**",
    VAR_POSITIONAL: "*",
    POSITIONAL_ONLY: "/",
    KEYWORD_ONLY: "-",
    POSITIONAL_OR_KEYWORD: "",
}
BINDINGS = ("instance", "class", "static")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    has_default: bool = False

    def encode(self) -> str:
        return _MARKERS[self.kind] + self.name + ("=" if self.has_default else "")

    @classmethod
    def decode(cls, token: str) -> Param:
        has_default = token.endswith("=")
        token = token.rstrip("=")
        for kind, marker in _MARKERS.items():
            if token.startswith(marker):
                return cls(token[len(marker) :], kind, has_default)
        raise AssertionError("the empty marker matches every token")

    def __str__(self) -> str:
        shown = {VAR_POSITIONAL: "*", VAR_KEYWORD: "**"}.get(self.kind, "") + self.name
        return shown + ("=…" if self.has_default else "")


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    binding: str = "instance"

    def encode(self) -> str:
        head = [] if self.binding == "instance" else [f"@{self.binding}"]
        return ",".join(head + [p.encode() for p in self.params])

    @classmethod
    def decode(cls, text: str) -> Signature:
        tokens = [t for t in text.split(",") if t]
        binding = "instance"
        if tokens and tokens[0].startswith("@"):
            binding = tokens.pop(0)[1:]
        return cls(tuple(Param.decode(t) for t in tokens), binding)

    @property
    def call_params(self) -> tuple[Param, ...]:
        """The parameters a caller passes: without `self`/`cls` unless the method is static."""
        if self.binding == "static" or not self.params:
            return self.params
        first = self.params[0]
        bound = first.kind in (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD)
        return self.params[1:] if bound else self.params

    def __str__(self) -> str:
        return "(" + ", ".join(str(p) for p in self.params) + ")"


def incompatibilities(base: Signature, override: Signature) -> list[str]:
    """Why a call that fits `base` could fail on `override`, one reason per parameter.

    The override must accept every named parameter of the base by name and kind (its own
    `*args` and `**kwargs` accept whatever is missing) and must not require one the base does
    not take, since vLLM calls the method as the base declares it — unless the base takes
    `*args`/`**kwargs` itself: then it declares no particular call, and the override may
    require what they would carry.
    """
    ours = override.call_params
    kinds = {p.kind for p in ours}
    var_pos, var_kw = VAR_POSITIONAL in kinds, VAR_KEYWORD in kinds
    by_name = {p.name: p for p in ours if p.kind in (POSITIONAL_OR_KEYWORD, KEYWORD_ONLY)}
    positional = [p for p in ours if p.kind in (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD)]
    problems = []
    base_kinds = {p.kind for p in base.call_params}
    base_var_pos, base_var_kw = VAR_POSITIONAL in base_kinds, VAR_KEYWORD in base_kinds
    for index, param in enumerate(base.call_params):
        if param.kind in (VAR_POSITIONAL, VAR_KEYWORD):
            # A base that takes `*args`/`**kwargs` declares no particular call: each
            # implementation takes what the engine passes it (e.g. quantization methods'
            # `embedding(self, layer, *args, **kwargs)`), so the override need not.
            continue
        problem = _unaccepted(param, index, by_name.get(param.name), positional, var_pos, var_kw)
        if problem:
            problems.append(problem)
    theirs = {p.name for p in base.call_params}
    base_positional = sum(
        p.kind in (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD) for p in base.call_params
    )
    for index, param in enumerate(ours):
        if param.has_default or param.kind in (VAR_POSITIONAL, VAR_KEYWORD):
            continue
        renamed = param.kind != KEYWORD_ONLY and index < base_positional
        # What the base's `*args` / `**kwargs` may carry, the override may name and require.
        carried = (base_var_pos and param.kind != KEYWORD_ONLY) or (
            base_var_kw and param.kind != POSITIONAL_ONLY
        )
        if param.name not in theirs and not renamed and not carried:
            problems.append(f"requires `{param.name}`, which the base method does not take")
    return problems


def _unaccepted(
    param: Param,
    index: int,
    same_name: Param | None,
    positional: list[Param],
    var_pos: bool,
    var_kw: bool,
) -> str | None:
    if param.kind == VAR_POSITIONAL:
        return None if var_pos else f"lacks `*{param.name}`"
    if param.kind == VAR_KEYWORD:
        return None if var_kw else f"lacks `**{param.name}`"
    if param.kind == POSITIONAL_ONLY:
        return None if var_pos or index < len(positional) else f"lacks positional `{param.name}`"
    if param.kind == KEYWORD_ONLY:
        return None if var_kw or same_name is not None else f"lacks keyword `{param.name}`"
    if same_name is not None and same_name.kind == KEYWORD_ONLY and not var_pos:
        return f"takes `{param.name}` as keyword-only; the base also passes it by position"
    if same_name is not None or var_pos or var_kw:
        return None
    return f"lacks `{param.name}`"
