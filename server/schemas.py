"""Wire schemas of the OpenAI-compatible routes: what clients send and what they get back.

Design choices:

* **Strict in, OpenAI-shaped out.** Requests are pydantic models with ``extra="forbid"``: an
  unknown field is a 400 naming it, not a silently ignored setting. Fields that OpenAI clients
  commonly send with neutral values (``user``, ``echo=false``) are accepted; a value the server
  does not serve is refused with what to do instead.
* **Log-probabilities, penalties and ``logit_bias`` in OpenAI's shapes**; the log-probabilities
  are the model's own, before bias, penalties and temperature (vLLM's default).
* **Extras, named as their origin names them:** vLLM's ``top_k``, ``min_tokens``, ``ignore_eos``,
  ``repetition_penalty``;
  LoRAX's ``adapter_id`` (an alias of ``model``); our ``mix`` (request-time weighted adapters).
  With the ``openai`` client they go in ``extra_body``.
* **Limits that depend on settings** (``max_tokens``, ``n``, prompt length) are checked by
  :mod:`.service` against ``ServerSettings``; limits that are facts of the API are here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

MAX_STOP_SEQUENCES = 8
MAX_MIX_ADAPTERS = 16
MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit; the engine's too (adapterhub.engine.types)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One part of a message's content; only text is supported."""

    type: Literal["text"]
    """Always ``"text"`` (images and audio are not supported by a text-only base)."""

    text: str = Field(max_length=1_000_000)
    """The text."""


class CalledFunction(_Strict):
    """The function an earlier assistant turn called, as the client sends it back."""

    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=1_000_000)
    """The arguments as the JSON string the call gave."""

    def for_template(self) -> dict[str, Any]:
        """``{"name", "arguments"}`` with the arguments parsed when they are a JSON object, as
        Hugging Face chat templates expect them (they write ``arguments | tojson``)."""
        try:
            parsed = json.loads(self.arguments)
        except ValueError:
            parsed = None
        return {"name": self.name, "arguments": parsed if isinstance(parsed, dict) else self.arguments}


class SentToolCall(_Strict):
    """A tool call of an earlier assistant turn."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


Content = Annotated[str, Field(max_length=4_000_000)] | Annotated[list[TextPart], Field(max_length=1024)]
"""A message's text, or a list of text parts that are joined."""


class _Message(_Strict):
    """What every message has; one model per role below, told apart by ``role`` (as OpenAI's
    own schema does), so the schema states which fields each role needs."""

    role: str
    content: Content | None
    name: str | None = Field(default=None, max_length=64)
    """Accepted for compatibility; not shown to the model."""

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as Hugging Face chat templates read it."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    """``developer`` is treated as ``system``."""
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Message):
    """An earlier assistant turn: its text, or the tools it called (content then may be null)."""

    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[SentToolCall] | None = Field(default=None, min_length=1, max_length=128)
    """The turn's calls, sent back so the model sees what it asked for."""

    def for_template(self) -> dict[str, Any]:
        message = super().for_template()
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": c.type, "function": c.function.for_template()}
                                     for c in self.tool_calls]
        return message


class ToolMessage(_Message):
    """A tool's result, answering one of an assistant turn's calls."""

    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(min_length=1, max_length=256)
    """The id of the call it answers."""

    def for_template(self) -> dict[str, Any]:
        return {**super().for_template(), "tool_call_id": self.tool_call_id}


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]
"""One chat message: a turn of the conversation, or a tool's result."""


class MixEntry(_Strict):
    """One adapter of a request-time mix."""

    ref: str = Field(min_length=1, max_length=200)
    """Adapter ref: ``name``, ``name@3`` or ``name:alias``."""

    weight: float = Field(ge=-10.0, le=10.0)
    """Weight of this adapter's LoRA delta (``sum w_i * B_i A_i x``)."""


_TOKEN_ID_KEY = r"^[0-9]{1,10}$"
LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=_TOKEN_ID_KEY)], Annotated[float, Field(ge=-100.0, le=100.0)]],
    Field(max_length=300),
    # stated whole, so that a client generated from the schema cannot send a key that is no token id
    WithJsonSchema({"type": "object", "maxProperties": 300, "propertyNames": {"pattern": _TOKEN_ID_KEY},
                    "additionalProperties": {"type": "number", "minimum": -100.0, "maximum": 100.0}}),
]


class StreamOptions(_Strict):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False
    """Send one more chunk before ``[DONE]`` with empty ``choices`` and the request's usage."""

    continuous_usage_stats: bool = False
    """vLLM's option: accepted; usage is still sent once, at the end."""


class _GenerationRequest(_Strict):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=256)
    """An adapter ref (``pirate``, ``pirate@3``, ``pirate:prod``) or the base's name."""

    adapter_id: str | None = Field(default=None, min_length=1, max_length=256)
    """LoRAX-style alias: when given it names the adapter and ``model`` is ignored."""

    mix: list[MixEntry] | None = Field(default=None, min_length=1, max_length=MAX_MIX_ADAPTERS)
    """Request-time mixing: several adapters with weights; ``model`` must then be the base."""

    max_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate; the server's default when omitted (see ``/v1/models``)."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    """Sampling temperature; 0 is greedy."""

    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""

    top_k: int = Field(default=0, ge=-1, le=1_000_000)
    """vLLM extra: sample among the k most likely tokens; 0 or -1 turns it off."""

    min_tokens: int = Field(default=0, ge=0)
    """vLLM extra: generate at least this many tokens before eos or a stop string may end."""

    ignore_eos: bool = False
    """vLLM extra: keep generating past the end-of-sequence token (benchmarks)."""

    seed: int | None = Field(default=None, ge=-(2**62), le=2**62)  # powers of two: exact as JSON numbers
    """Makes sampling reproducible for this request, whatever shares its batch."""

    stop: (
        Annotated[str, Field(min_length=1, max_length=256)]
        | Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]],
                    Field(max_length=MAX_STOP_SEQUENCES)]
        | None
    ) = None
    """Up to 8 strings that end the completion (not included in the text)."""

    n: int = Field(default=1, ge=1, le=128)
    """Completions per prompt (the server's ``max_n`` caps it)."""

    stream: bool = False
    """Stream chunks as server-sent events, ending with ``data: [DONE]``."""

    stream_options: StreamOptions | None = None
    """Streaming options (``include_usage``)."""

    user: str | None = Field(default=None, max_length=256)
    """Accepted for compatibility; not used."""

    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    """Subtracted from a token's logit once per earlier occurrence in the completion."""

    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    """Subtracted from the logit of every token the completion already holds."""

    repetition_penalty: float = Field(default=1.0, ge=0.01, le=10.0)
    """vLLM extra: logits of tokens seen in the prompt or completion are divided by it; 1 is off."""

    logit_bias: LogitBias | None = None
    """Token id (as a string of digits) -> bias added to its logit, -100 to 100."""

    # The single-field rules below are also in the schema (min_length, le=0, Literal[False]), so
    # clients generated from it cannot send what is refused; "before" validators keep the message
    # saying what to do instead of pydantic's generic one.
    @field_validator("stop", mode="before")
    @classmethod
    def _stop_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise ValueError("stop must not be an empty string; omit it or give text")
        return value

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(key), value) for key, value in (self.logit_bias or {}).items())

    @model_validator(mode="after")
    def _consistent(self) -> _GenerationRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        if self.mix is not None and self.adapter_id is not None:
            raise ValueError("give either adapter_id or mix, not both")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class JsonSchemaFormat(_Strict):
    """OpenAI's ``response_format.json_schema``."""

    name: str = Field(min_length=1, max_length=64)
    """The schema's name (OpenAI requires one; not used otherwise)."""

    description: str | None = Field(default=None, max_length=4096)
    """What the answer is for (not used)."""

    json_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    """The JSON schema every answer must match."""

    strict: bool | None = None
    """Accepted: answers always follow the schema exactly (constrained decoding)."""


class TextFormat(_Strict):
    """``response_format={"type": "text"}``: nothing enforced."""

    type: Literal["text"]

    def schema_to_enforce(self) -> dict[str, Any] | None:
        return None


class JsonObjectFormat(_Strict):
    """``response_format={"type": "json_object"}``: any JSON object, enforced token by token."""

    type: Literal["json_object"]

    def schema_to_enforce(self) -> dict[str, Any] | None:
        return {"type": "object"}


class JsonSchemaResponseFormat(_Strict):
    """``response_format={"type": "json_schema", "json_schema": {...}}``: JSON matching the
    schema, enforced token by token (llguidance)."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat

    def schema_to_enforce(self) -> dict[str, Any] | None:
        return self.json_schema.json_schema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]
"""OpenAI's ``response_format``, one shape per ``type`` as OpenAI's own schema has it, so the
OpenAPI document states which fields go with which type."""


class FunctionSpec(_Strict):
    """A function the model may call (OpenAI's ``tools[].function``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The function's name: letters, digits, ``_`` and ``-``, at most 64."""

    description: str | None = Field(default=None, max_length=8192)
    """What it does; shown to the model where the chat template renders tools."""

    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """A JSON schema of its arguments; calls are held to it token by token."""

    strict: bool | None = None
    """Accepted: arguments always match ``parameters`` (constrained decoding)."""


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Strict):
    """``tool_choice`` naming one function: the answer is a call of it."""

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    tools: list[ToolSpec] | None = Field(default=None, min_length=1, max_length=128)
    """Functions the model may call; with ``tool_choice`` "required" or a named function the
    answer is ``tool_calls`` whose arguments match their schemas."""

    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """``required`` (one call or more) or a named function; ``none`` ignores the tools. ``auto``
    is refused: letting the model choose needs its own tool-call format parsed, which this
    server does not do."""

    parallel_tool_calls: bool = True
    """With ``required``: whether the answer may hold more than one call."""

    response_format: ResponseFormat | None = None
    """Plain text (the default), ``{"type": "json_object"}``, or ``{"type": "json_schema", ...}``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    """The conversation so far, rendered with the base's own chat template."""

    max_completion_tokens: int | None = Field(default=None, ge=1)
    """OpenAI's newer name for ``max_tokens``; give one of them."""

    logprobs: bool = False
    """Return each generated token's log-probability (the model's, for the row's adapter)."""

    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    """With ``logprobs``: also the most likely tokens at each step, 0 to 20."""

    @model_validator(mode="after")
    def _one_max(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        self._check_tools()
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError(
                    f"max_tokens={self.max_tokens} and max_completion_tokens="
                    f"{self.max_completion_tokens} disagree; give one of them"
                )
            self.max_tokens = self.max_completion_tokens
        return self


    def _check_tools(self) -> None:
        choice = self.tool_choice
        if self.tools is None:
            if choice not in (None, "none"):
                raise ValueError("tool_choice needs tools; list the functions in tools")
            return
        names = [tool.function.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: function names {names!r} repeat; give each a unique name")
        if choice in (None, "auto"):
            raise ValueError(
                "tool_choice 'auto' (the default with tools) is not supported: the model would have to "
                "choose in its own tool-call format. Send tool_choice 'required', or name a function")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools {names!r}")
        if choice != "none" and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("give either response_format or a forced tool_choice, not both")

    def forced_call(self) -> tuple[str | None, dict[str, Any]] | None:
        """``(function name, schema)`` when the answer must be tool calls: a named function's
        arguments schema, or (name None) for ``required`` an array of ``{name, arguments}``."""
        choice = self.tool_choice
        if self.tools is None or choice in (None, "none", "auto"):
            return None
        specs = {tool.function.name: tool.function.parameters for tool in self.tools}
        if isinstance(choice, NamedToolChoice):
            return choice.function.name, specs[choice.function.name]
        call = [{"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
                 "required": ["name", "arguments"], "additionalProperties": False}
                for name, parameters in specs.items()]
        array: dict[str, Any] = {"type": "array", "items": {"anyOf": call}, "minItems": 1}
        if not self.parallel_tool_calls:
            array["maxItems"] = 1
        return None, array


_TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31)]], Field(min_length=1, max_length=1_000_000)]
PromptInput = (
    Annotated[str, Field(max_length=4_000_000)]
    | Annotated[list[Annotated[str, Field(max_length=4_000_000)]], Field(min_length=1, max_length=1024)]
    | _TokenIds
    | Annotated[list[_TokenIds], Field(min_length=1, max_length=1024)]
)


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: raw text in, text out (no chat template)."""

    prompt: PromptInput
    """A string, a list of strings (one completion each), or token ids (a list, or lists)."""

    echo: bool = False
    """Put the prompt before the completion, in the text and (with ``logprobs``) in the
    log-probabilities, the prompt's scored token by token; ``max_tokens=0`` then scores the
    prompt alone (what lm-evaluation-harness sends for log-likelihood tasks)."""

    max_tokens: int | None = Field(default=None, ge=0)
    """Most tokens to generate (0 only with ``echo``); the server's default when omitted."""

    suffix: str | None = Field(default=None, max_length=0)
    """Only empty is supported."""

    best_of: int | None = Field(default=None, ge=1, le=128)
    """Only equal to ``n`` (or omitted) is supported."""

    logprobs: int | None = Field(default=None, ge=0, le=5)
    """Return each token's log-probability and those of the ``logprobs`` most likely (0 to 5)."""

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens=0 only scores a prompt: it needs echo=true (or ask for at least 1)")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError(f"best_of={self.best_of} is not supported unless it equals n={self.n}")
        return self


# ---------------------------------------------------------------------------- responses


class UsageInfo(BaseModel):
    """Token counts of a whole request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """The arguments as a JSON string, as OpenAI gives them."""


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(ToolCall):
    index: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """OpenAI's ``choices[].logprobs`` of a chat completion."""

    content: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions API's ``choices[].logprobs``."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


MAX_COMPARED = 8


class CompareRequest(ChatCompletionRequest):
    """``POST /v1/compare``: one conversation answered by several models side by side, decoded
    together in one batch. Every field but ``models`` is a chat completion's, applied to each."""

    model: SkipJsonSchema[Literal[""]] = ""  # type: ignore[assignment]
    """Not used here (and not in the schema): name the models in ``models``."""

    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=MAX_COMPARED)
    """The base's name, adapter refs (``pirate``, ``pirate@2``, ``pirate:prod``): one answer each."""

    n: Literal[1] = 1
    """One answer per model (compare more models rather than more samples)."""

    @model_validator(mode="after")
    def _distinct(self) -> CompareRequest:
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise ValueError(f"models: {repeated!r} appear more than once; name each model once")
        if self.adapter_id is not None or self.mix is not None:
            raise ValueError("adapter_id and mix do not apply to a comparison; name every model in models")
        return self

    def for_model(self, model: str) -> ChatCompletionRequest:
        """The chat completion request of one column."""
        return ChatCompletionRequest.model_validate(
            {**self.model_dump(exclude={"models", "model"}, exclude_unset=True, by_alias=True), "model": model})


class VotedAnswer(_Strict):
    """One compared answer in a vote."""

    model: str | None = Field(default=None, min_length=1, max_length=256)
    """The ref that answered (``pirate``, ``pirate@2``, ``pirate:prod``); null or the base's name for the base."""
    content: str = Field(min_length=1, max_length=200_000)
    """The answer's text, as it was shown."""


class PreferenceRequest(_Strict):
    """``POST /v1/preferences``: ``chosen`` was the best answer to ``prompt``; each of
    ``rejected`` lost to it (one TRL pair per rejected answer)."""

    prompt: str = Field(min_length=1, max_length=200_000)
    """The user's message the answers reply to."""
    chosen: VotedAnswer
    rejected: list[VotedAnswer] = Field(min_length=1, max_length=MAX_COMPARED)


class ThumbRequest(_Strict):
    """``POST /v1/preferences`` with a ``label``: one answer marked good (true) or bad (false),
    stored as KTO's unpaired data (no second answer needed)."""

    prompt: str = Field(min_length=1, max_length=200_000)
    """The user's message the answer replies to."""
    completion: VotedAnswer
    label: bool
    """True: a desirable answer (thumb up); false: undesirable."""


class ThumbResponse(BaseModel):
    """What a thumb stored."""

    ref: str | None
    """The version that answered (None: the base)."""
    label: bool
    total: int
    """Thumbs in the hub's thumbs dataset now."""
    dataset: str | None
    """The thumbs file's path on the server, for an admin key: a KTO recipe's ``dataset.path``."""


class PreferenceResponse(BaseModel):
    """What a vote stored: one pair per rejected answer, with the versions the refs resolved to."""

    stored: int
    total: int
    """Pairs in the hub's preference dataset now."""
    chosen_ref: str | None
    rejected_refs: list[str | None]
    dataset: str | None
    """The dataset's path on the server, for an admin key: a DPO recipe's ``dataset.path``
    (``GET /v1/preferences`` downloads it)."""


class CompareResponse(BaseModel):
    """A whole comparison: each model's chat completion, in the order of ``models``."""

    id: str
    object: Literal["compare"] = "compare"
    created: int
    answers: list[ChatCompletionResponse]


class ChatCompletionResponse(BaseModel):
    """A whole chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _calls_only_when_made(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)  # as OpenAI's deltas: the key appears with a call
        return data


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    """A whole text completion (also the shape of each streamed chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """One entry of ``/v1/models``: the base, or an adapter version on it."""

    id: str
    """What to send as ``model``: the base name, ``name`` (latest), or ``name@N``."""

    object: Literal["model"] = "model"
    created: int
    owned_by: str = "adapterhub"
    root: str
    """The base model this runs on."""

    parent: str | None
    """The base's name for adapters; None for the base itself."""

    version: str | None = None
    """The resolved version (``name@N``) this id serves now; None for the base."""

    aliases: list[str] = Field(default_factory=list)
    """Aliases pointing at this version (``prod`` means ``name:prod`` works too)."""

    method: str | None = None
    """How the version was made (``sft``, ``dpo``, ``imported`` ...)."""

    max_model_len: int | None = None
    """Longest prompt + completion the server accepts."""

    evaluations: dict[str, float] = Field(default_factory=dict)
    """The version's newest recorded evaluations, ``task:metric`` -> value (``adapterhub eval``)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, for every 4xx and 5xx."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Invalid request (names the field)",
        401: "Missing or unknown API key",
        403: "The key's route groups leave this route out (a keys-file key with routes: [...])",
        404: "Unknown adapter or model",
        409: "Adapter incompatible with the loaded base or template",
        413: "Request body too large",
        422: "Unsafe adapter files (pickles, non-finite or oversized weights)",
        429: "Queue full or too many requests in flight for this key (Retry-After)",
        503: "Not ready (base loading) or shutting down",
    }.items()
}
"""OpenAPI ``responses=`` for generation routes: every error has the OpenAI shape."""


def json_error_responses(statuses: dict[int | str, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route whose success is not JSON (vLLM's plain-text answers).

    FastAPI documents a ``model`` response under the route's own media type, which would claim
    that errors come as ``text/plain``; naming the content explicitly keeps them JSON.
    """
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {status: {"description": text, "content": content} for status, text in statuses.items()}
