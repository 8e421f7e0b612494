"""The OpenAI request bodies the server accepts, validated once, and the error shape it answers
with (``{"error": {"message", "type", "param", "code"}}``).

Unknown fields are ignored (clients send many); fields that would change the result and that
the server does not implement (``n > 1``, ``logprobs``, ``echo``, penalties, tools, ...) are
refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorakit.serve.sampling import SEED_RANGE, SamplingParams

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error", 499: "client_closed_request",
                503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    """An error answered to the client with ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        kind = _ERROR_TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: Union[str, list[str], None] = Field(default=None, validate_default=True)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    logprobs: Union[bool, int, None] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

    def sampling(self, max_tokens: int | None, default: int, cap: int) -> SamplingParams:
        n = max_tokens if max_tokens is not None else min(default, cap)
        if n > cap:
            raise APIError(400, f"max_tokens {n} exceeds this server's limit of {cap}", "max_tokens")
        try:
            return SamplingParams(max_tokens=n, temperature=self.temperature, top_p=self.top_p,
                                  seed=self.seed, stop=tuple(self.stop))
        except ValueError as err:  # the fields are checked above; this is the library's own check
            raise APIError(400, str(err), str(err).split()[0]) from None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = Field(default=False, le=False)
    suffix: str | None = Field(default=None, max_length=0)
    best_of: int | None = Field(default=None, ge=1, le=1)

    def prompts(self) -> list[Union[str, list[int]]]:
        """The prompts as a list (one string or one token list each)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list | None = Field(default=None, max_length=0)

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str | None = None


def check_json(data, where: str = "") -> None:
    """Refuse strings that are not valid Unicode (a lone UTF-16 surrogate such as ``"\\ud800"``
    is legal JSON, but no tokenizer or file system takes it), naming the field they are in."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as err:
            raise APIError(400, f"{where or 'body'}: string holds a lone surrogate "
                                f"({data[err.start]!r} at character {err.start}), which is not valid "
                                "Unicode", where or None) from None
    elif isinstance(data, dict):
        for key, value in data.items():
            check_json(key, where)
            check_json(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_json(value, f"{where}.{i}" if where else str(i))


def parse(model: type[BaseModel], data) -> BaseModel:
    """Validate ``data`` as ``model``; a failure is a 400 naming the field."""
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        message = first["msg"]
        if first["type"] in ("less_than_equal", "greater_than_equal", "too_long") and where in _UNSUPPORTED:
            message = _UNSUPPORTED[where]
        raise APIError(400, f"{where}: {message}", where) from None


_UNSUPPORTED = {
    "n": "only n=1 is supported",
    "best_of": "only best_of=1 is supported",
    "echo": "echo is not supported",
    "suffix": "suffix is not supported",
    "frequency_penalty": "frequency_penalty is not supported (must be 0)",
    "presence_penalty": "presence_penalty is not supported (must be 0)",
    "tools": "tools are not supported",
}
