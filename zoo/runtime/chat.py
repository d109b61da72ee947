"""A chat model's own template, rendered without transformers: jinja2 in a sandbox, as transformers renders it.

The template (``tokenizer_config.json``'s ``chat_template``, recorded in the manifest's
``preprocess.generation``) is untrusted text from the model's files: it runs in jinja2's
immutable sandbox, with the few helpers chat templates call (``raise_exception``,
``strftime_now``, a ``tojson`` that keeps non-ASCII text) and the same whitespace
settings as transformers (``trim_blocks``, ``lstrip_blocks``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zoo.errors import InputError

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Any) -> list[dict[str, str]]:
    """``[{"role": ..., "content": ...}, ...]``, checked; anything else is one InputError saying what is valid."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError("chat takes a non-empty list of messages, e.g. [{'role': 'user', 'content': 'Hello'}]")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError(f"message {index} is not {{'role': ..., 'content': '...'}} (content a string)")
        if message.get("role") not in ROLES:
            raise InputError(f"message {index} has role {message.get('role')!r}; valid roles: {', '.join(ROLES)}")
    return [dict(m) for m in messages]


def render_chat(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """The prompt text the model was trained to continue for ``messages``."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None, ensure_ascii=False, sort_keys=False: json.dumps(
        value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)
    except TemplateError as exc:
        raise InputError(f"the model's chat template refused these messages: {exc}") from exc


def _raise(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)
