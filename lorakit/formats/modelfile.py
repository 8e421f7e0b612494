"""Ollama ``Modelfile``: FROM / ADAPTER / TEMPLATE / PARAMETER stop, the TEMPLATE derived from
the tokenizer's Jinja chat template.

A Jinja template cannot be translated to Go in general; what chat models use is a per-role
wrapper (``PRE[role] + content + POST[role]``), an optional default system turn when the first
message is not a system one, and a generation prompt. :func:`derive_chat_format` recovers those
strings by rendering probe conversations with sentinel contents, and :func:`go_template` writes
them as a Go template in the small subset :func:`render_go` evaluates. The derivation checks
itself: the Go rendering must equal the Jinja rendering on several conversations, or it refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

__all__ = ["ChatFormat", "derive_chat_format", "go_template", "render_go", "modelfile"]

_S, _U, _A, _U2 = "\x01SYS\x01", "\x01USR\x01", "\x01AST\x01", "\x01US2\x01"
Render = Callable[[list[dict], bool], str]   # (messages, add_generation_prompt) -> text


@dataclass
class ChatFormat:
    pre: dict[str, str]       # role -> text before the content
    post: dict[str, str]      # role -> text after the content
    default_system: str       # inserted when the first message is not a system one
    generation: str           # appended to prompt the assistant


def _between(text: str, left: str | None, right: str | None) -> str:
    start = 0 if left is None else text.index(left) + len(left)
    end = len(text) if right is None else text.index(right, start)
    return text[start:end]


def _msgs(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def derive_chat_format(render: Render) -> ChatFormat:
    """Recover the per-role wrapper of a chat template from renderings of probe chats."""
    try:
        u = render(_msgs(("user", _U)), False)
        u_gen = render(_msgs(("user", _U)), True)
        ua = render(_msgs(("user", _U), ("assistant", _A)), False)
        uau = render(_msgs(("user", _U), ("assistant", _A), ("user", _U2)), False)
        su = render(_msgs(("system", _S), ("user", _U)), False)
        user_post = _between(u, _U, None)
        generation = u_gen[len(u):] if u_gen.startswith(u) else None
        assistant_post = _between(ua, _A, None)
        assistant_pre = _between(ua, _U, _A)[len(user_post):]
        user_pre = _between(uau, _A, _U2)[len(assistant_post):]
        default_system = _between(u, None, _U)[:-len(user_pre) or None]
        system_pre = _between(su, None, _S)
        system_post = _between(su, _S, _U)[:-len(user_pre) or None]
    except (ValueError, IndexError) as err:
        raise ValueError(f"chat template is not a per-role wrapper Ollama can express ({err})") from None
    if generation is None or not _between(u, None, _U).endswith(user_pre):
        raise ValueError("chat template is not a per-role wrapper Ollama can express")
    fmt = ChatFormat(pre={"system": system_pre, "user": user_pre, "assistant": assistant_pre},
                     post={"system": system_post, "user": user_post, "assistant": assistant_post},
                     default_system=default_system, generation=generation)
    probes = [_msgs(("user", "hi")), _msgs(("system", "be brief"), ("user", "hi")),
              _msgs(("user", "a"), ("assistant", "b"), ("user", "c")),
              _msgs(("system", "s"), ("user", "a\nb"), ("assistant", "  x "), ("user", "{{ y }}"))]
    template = go_template(fmt)
    for messages in probes:
        if render_go(template, messages) != render(messages, True):
            raise ValueError("chat template is not a per-role wrapper Ollama can express "
                             f"(derived template differs on {messages})")
    return fmt


def _go_text(text: str) -> str:
    # "{{" would open an action; emit it through a string constant instead.
    return text.replace("{{", '{{ "{{" }}')


def go_template(fmt: ChatFormat) -> str:
    """The Go template (Ollama's ``.Messages`` form) of a chat format, without trim markers so
    every character outside an action is literal."""
    parts = ['{{ range $i, $m := .Messages }}']
    if fmt.default_system:
        parts.append('{{ if and (eq $i 0) (ne $m.Role "system") }}'
                     f'{_go_text(fmt.default_system)}{{{{ end }}}}')
    for k, role in enumerate(("system", "user", "assistant")):
        parts.append(f'{{{{ {"if" if k == 0 else "else if"} eq $m.Role "{role}" }}}}'
                     f'{_go_text(fmt.pre[role])}{{{{ $m.Content }}}}{_go_text(fmt.post[role])}')
    parts.append('{{ end }}{{ end }}')
    parts.append(_go_text(fmt.generation))
    return "".join(parts)


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def _value(term: str, env: dict):
    term = term.strip()
    if term.startswith('"'):
        return term[1:-1]
    if term.isdigit():
        return int(term)
    if term.startswith("$"):
        var, _, attr = term.partition(".")
        value = env[var]
        return value[attr.lower()] if attr else value
    raise ValueError(f"Go template term {term!r} is outside the rendered subset")


def _cond(expr: str, env: dict) -> bool:
    expr = expr.strip()
    if expr.startswith("and "):
        groups = re.findall(r"\(([^()]*)\)", expr)
        return all(_cond(g, env) for g in groups)
    op, left, right = re.match(r'(eq|ne)\s+(\S+)\s+(".*?"|\S+)$', expr).groups()
    equal = _value(left, env) == _value(right, env)
    return equal if op == "eq" else not equal


def render_go(template: str, messages: list[dict]) -> str:
    """Evaluate the subset of Go templates :func:`go_template` writes (one ``range`` over
    ``.Messages``, ``if`` / ``else if`` / ``end`` with ``eq`` / ``ne`` / ``and``, ``$m.Field``
    and string constants) on ``messages``, the way Ollama's ``text/template`` would."""
    tokens = []   # ("text", s) | ("act", s)
    pos = 0
    for m in _ACTION.finditer(template):
        tokens.append(("text", template[pos:m.start()]))
        tokens.append(("act", m.group(1).strip()))
        pos = m.end()
    tokens.append(("text", template[pos:]))

    def block(i: int, env: dict, emit: bool, out: list) -> tuple[int, str]:
        """Run tokens from i until an unmatched else/end; returns (index, that keyword)."""
        while i < len(tokens):
            kind, s = tokens[i]
            if kind == "text" or s.startswith('"') or s.startswith("$"):
                if emit:
                    out.append(s if kind == "text" else str(_value(s, env)))
                i += 1
            elif s.startswith("range "):
                body = i + 1
                items = messages if emit else []
                end = None
                for n, msg in enumerate(items):
                    end, _ = block(body, {**env, "$i": n, "$m": msg}, True, out)
                if end is None:
                    end, _ = block(body, env, False, out)
                i = end + 1
            elif s.startswith("if "):
                i = _if(i, env, emit, out)
            elif s == "end" or s.startswith("else"):
                return i, s
            else:
                raise ValueError(f"Go template action {{{{ {s} }}}} is outside the rendered subset")
        return i, ""

    def _if(i: int, env: dict, emit: bool, out: list) -> int:
        taken = False
        cond = tokens[i][1][3:]
        i += 1
        while True:
            run = emit and not taken and (cond is None or _cond(cond, env))
            i, keyword = block(i, env, run, out)
            taken = taken or run
            if keyword == "end":
                return i + 1
            cond = keyword[8:] if keyword.startswith("else if ") else None
            i += 1

    out: list[str] = []
    block(0, {}, True, out)
    return "".join(out)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(model_file: str, template: str, stops: list[str], adapter_file: str | None = None,
              system: str | None = None) -> str:
    """Text of a Modelfile: ``FROM``, optional ``ADAPTER``, ``TEMPLATE`` (in triple quotes),
    one ``PARAMETER stop`` per stop string."""
    lines = [f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    return "\n".join(lines) + "\n"
