"""An OpenAI-compatible HTTP server over the continuous-batching scheduler, with a web playground.

    app = create_app(lambda: load_checkpoint(ckpt_dir), ServerConfig(model_name="shakespeare"))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `lmforge serve` does

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (the checkpoint's chat format), both with
`"stream": true` as server-sent events in OpenAI's chunk format ending in `data: [DONE]`;
`GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, and the playground page at `/`. Every answer
carries `usage` (prompt, completion and total tokens; a stream puts it in its last chunk). Sampling
parameters keep the API's names: temperature, top_p, max_tokens (or max_completion_tokens), stop, seed,
n, presence_penalty, frequency_penalty; top_k, min_p and repetition_penalty are extensions.
Log-probabilities as OpenAI shapes them: chat takes `logprobs: true` and `top_logprobs` (0..20) and
answers `choices[i].logprobs.content` (token, logprob, bytes, top_logprobs), completions take
`logprobs` (0..5) and answer `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`; streamed
chunks carry the entries of the tokens they cover. The values are the model's own distribution, before
penalties, temperature and the top-k/top-p/min-p filters (scheduler.py says why).

Safe by default: the CLI binds 127.0.0.1; an optional bearer API key guards /v1/*; prompt tokens,
max_tokens, n, requests held (running + queued, then 429), body bytes (413) and the time of one
request (504) are limited; every error has OpenAI's JSON shape
`{"error": {"message", "type", "param", "code"}}` with its status (400, 401, 404 unknown model, 413,
429, 503 while the model loads, 504), and an unexpected failure answers 500 without a traceback (it
goes to the log). Each request writes one JSON access-log line to the `lmforge.serving` logger.

The model is loaded in a background thread when the app starts, so /health answers 503 until it is
ready. The text layer (UTF-8-safe detokenizing, stop strings) runs per choice on the event loop; the
scheduler thread only sees token ids and hands them over through one `Mailbox`, which wakes the event
loop once per decoding step (the scheduler flushes it) rather than once per token; a stream writes the
events that are ready as one body part. A client that disconnects cancels its generation.
Deliberately not here: batching (scheduler.py), TLS and rate limiting per user (a reverse proxy's job),
`echo`, tools and function calling.
Reference: OpenAI API reference (completions, chat completions, streaming, error codes).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import ConfigError, LmforgeError
from lmforge.inference.chat import chat_format
from lmforge.inference.sampling import SamplingParams
from lmforge.inference.text import IncrementalDetokenizer, StopStrings, default_stop_ids
from lmforge.serving.scheduler import QueueFull, Scheduler, TokenLogprobs
from lmforge.serving.scheduler import Request as Generation

log = logging.getLogger("lmforge.serving")
STATIC_DIR = Path(__file__).parent / "static"
PLAYGROUND_FILES = {"playground.js": "text/javascript", "playground.css": "text/css"}  # served by name only


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "lmforge"  # the id clients put in "model"; other ids get 404
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <api_key>"
    max_batch: int = 8  # requests decoded together (rows of the running batch)
    max_waiting: int = 32  # requests queued behind a full batch; more are answered 429
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_tokens: int = 512  # largest max_tokens a request may ask for (also the chat default's cap)
    max_n: int = 4  # largest n (choices per request)
    max_body_bytes: int = 1_000_000  # larger request bodies are answered 413
    request_timeout: float = 300.0  # seconds one request may take before it is ended (504)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens", "max_n", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server {name}={getattr(self, name)} is invalid; use an integer >= 1")
        if self.max_waiting < 0 or self.request_timeout <= 0:
            raise ConfigError("server max_waiting must be >= 0 and request_timeout > 0")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("the API key is empty; give a non-empty key or none")


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, e.g. {"error": {"message": "...", "type": "invalid_request_error",
    "param": "max_tokens", "code": null}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)


# --- request bodies (unknown fields are ignored, as OpenAI's SDKs may send newer ones) ----------------


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    top_k: int | None = Field(None, ge=1)  # extension
    min_p: float = Field(0.0, ge=0, lt=1)  # extension
    repetition_penalty: float = Field(1.0, gt=0)  # extension


class CompletionBody(SamplingFields):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)  # log-probabilities of the k most likely tokens too


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]


class ChatBody(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


# --- the app ----------------------------------------------------------------------------------------


class Served:
    """What the routes need once the model is loaded."""

    def __init__(
        self, model: Any, tokenizer: Any, meta: dict[str, Any], config: ServerConfig, mailbox: Mailbox
    ):
        self.tokenizer = tokenizer
        self.tokens = TokenTexts(tokenizer)
        self.chat = chat_format(tokenizer, meta)
        self.block_size: int = model.config.block_size
        self.max_prompt_tokens = min(config.max_prompt_tokens or self.block_size - 1, self.block_size - 1)
        self.scheduler = Scheduler(
            model, max_batch=config.max_batch, max_waiting=config.max_waiting, flush=mailbox.flush
        )
        self.scheduler.start()


def create_app(load: Callable[[], tuple[Any, Any, dict[str, Any]]], config: ServerConfig) -> FastAPI:
    """The ASGI app; `load()` returns (model, tokenizer, meta) and runs in a thread at startup."""
    state: dict[str, Any] = {"served": None, "load_error": None}

    def load_in_background() -> None:
        try:
            model, tokenizer, meta = load()
            if tokenizer is None:
                raise ConfigError("the checkpoint has no tokenizer; the server needs one for text")
            state["served"] = Served(model, tokenizer, meta, config, state["mailbox"])
            log.info(json.dumps({"event": "ready", "model": config.model_name}))
        except Exception as e:  # reported by /health and every route as 503
            state["load_error"] = str(e) if isinstance(e, LmforgeError) else type(e).__name__
            log.exception("loading the model failed")

    async def lifespan(app: FastAPI):
        state["mailbox"] = Mailbox(asyncio.get_running_loop())
        threading.Thread(target=load_in_background, name="lmforge-load", daemon=True).start()
        yield
        if state["served"] is not None:
            state["served"].scheduler.stop()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lmforge = state

    def served() -> Served:
        if state["served"] is None:
            detail = f" ({state['load_error']})" if state["load_error"] else "; retry shortly"
            raise APIError(503, f"the model is not loaded{detail}", type="service_unavailable")
        return state["served"]

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{config.model_name}'",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON", []
        else:
            message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid value')}"
        return error_response(APIError(400, message, param=".".join(where) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(APIError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(APIError(500, "internal server error", type="server_error"))

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in PLAYGROUND_FILES:
            raise APIError(404, f"no static file {name!r}", type="not_found_error")
        return FileResponse(STATIC_DIR / name, media_type=PLAYGROUND_FILES[name])

    @app.get("/health")
    async def health() -> JSONResponse:
        if state["served"] is None:
            status = "failed" if state["load_error"] else "loading"
            return JSONResponse({"status": status}, status_code=503)
        running, waiting = state["served"].scheduler.load()
        return JSONResponse({"status": "ok", "running": running, "waiting": waiting})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(config.model_name)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card(name)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        s = served()
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) or _is_ids(body.prompt) else body.prompt
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        ids = []
        for p in prompts:
            if isinstance(p, str) and not p:
                raise APIError(400, "prompt is empty; give some text to continue", param="prompt")
            if isinstance(p, str):  # encoding a long text takes a while: off the event loop
                ids.append(await asyncio.to_thread(s.tokenizer.encode, p, allowed_special="all"))
            else:
                ids.append(list(p))
        max_tokens = body.max_tokens if body.max_tokens is not None else min(16, config.max_tokens)
        job = start_job(s, body, ids, max_tokens, default_stop_ids(s.tokenizer), logprobs=body.logprobs)
        return await respond(job, body, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request):
        s = served()
        check_model(body.model)
        messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
        try:
            # the whole conversation (no silent dropping of turns: too long is a 400), off the event loop
            prompt = await asyncio.to_thread(s.chat.prompt, messages, 10**9)
        except LmforgeError as e:
            raise APIError(400, str(e), param="messages") from None
        except Exception as e:  # a Jinja template may raise on an unexpected conversation
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(config.max_tokens, s.block_size - len(prompt)))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        job = start_job(s, body, [prompt], max_tokens, s.chat.stop_ids(), logprobs=logprobs)
        return await respond(job, body, request, chat=True)

    def start_job(
        s: Served,
        body: SamplingFields,
        prompts: list[list[int]],
        max_tokens: int,
        stop_ids: Sequence[int],
        *,
        logprobs: int | None,
    ) -> Job:
        """Validate against the limits and submit n generations per prompt; -> a Job."""
        if max_tokens > config.max_tokens:
            raise APIError(
                400,
                f"max_tokens={max_tokens} exceeds this server's limit of {config.max_tokens}",
                param="max_tokens",
            )
        if body.n > config.max_n:
            raise APIError(400, f"n={body.n} exceeds this server's limit of {config.max_n}", param="n")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or "" in stop:
            raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
        for p in prompts:
            if not p:
                raise APIError(400, "prompt is empty", param="prompt")
            if min(p) < 0 or max(p) >= s.tokenizer.vocab_size:
                raise APIError(
                    400, f"prompt token ids must be in [0, {s.tokenizer.vocab_size})", param="prompt"
                )
            if len(p) > s.max_prompt_tokens:
                raise APIError(
                    400,
                    f"the prompt has {len(p)} tokens; this server accepts at most {s.max_prompt_tokens}",
                    param="prompt",
                    code="context_length_exceeded",
                )
            if len(p) + max_tokens > s.block_size:
                raise APIError(
                    400,
                    f"the prompt ({len(p)} tokens) + max_tokens ({max_tokens}) exceeds the "
                    f"model's context of {s.block_size} tokens; ask for fewer tokens",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
        try:
            base = SamplingParams(
                temperature=body.temperature,
                top_k=body.top_k,
                top_p=body.top_p,
                min_p=body.min_p,
                repetition_penalty=body.repetition_penalty,
                frequency_penalty=body.frequency_penalty,
                seed=body.seed,
            )
        except LmforgeError as e:
            raise APIError(400, str(e)) from None
        job = Job(
            s.tokenizer,
            stop,
            state["mailbox"],
            prompt_tokens=sum(map(len, prompts)),
            texts=None if logprobs is None else s.tokens,
        )
        deadline = time.monotonic() + config.request_timeout
        try:
            for p in prompts:
                for j in range(body.n):
                    seed = None if body.seed is None else body.seed + j  # distinct, reproducible choices
                    generation = Generation(
                        prompt=p,
                        params=base if seed is None else _replace_seed(base, seed),
                        max_tokens=max_tokens,
                        stop_ids=frozenset(stop_ids),
                        presence_penalty=body.presence_penalty,
                        deadline=deadline,
                        logprobs=logprobs,
                        emit=job.emitter(len(job.generations)),
                    )
                    s.scheduler.submit(generation)
                    job.generations.append(generation)
        except QueueFull:
            job.cancel()
            raise APIError(
                429,
                "the server is busy (too many requests in flight); retry shortly",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            ) from None
        return job

    async def respond(job: Job, body: SamplingFields, request: Request, *, chat: bool):
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = stream_events(job, rid, created, chat=chat, include_usage=include_usage)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            texts, finishes, entries = await job.collect()
        finally:
            watcher.cancel()
            job.cancel()
        if job.client_gone:
            return Response(status_code=499)  # nginx's "client closed request": only the access log sees it
        if "timeout" in finishes:
            raise APIError(504, f"the request took longer than {config.request_timeout:g} s", type="timeout")
        if "error" in finishes:
            raise APIError(500, "internal server error", type="server_error")
        choices = []
        for index, (text, finish) in enumerate(zip(texts, finishes, strict=True)):
            logprobs = None if job.texts is None else logprobs_field(job.texts, entries[index], chat=chat)
            if chat:
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }
                )
            else:
                choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": config.model_name,
            "choices": choices,
            "usage": job.usage(),
        }

    async def stream_events(job: Job, rid: str, created: int, *, chat: bool, include_usage: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(
            index: int, text: str | None, finish: str | None, first: bool = False, usage=None, entries=()
        ) -> str:
            logprobs = None if job.texts is None else logprobs_field(job.texts, entries, chat=chat)
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            return _sse(
                {
                    "id": rid,
                    "object": kind,
                    "created": created,
                    "model": config.model_name,
                    "choices": [choice],
                    "usage": usage,
                }
            )

        finished, ready = 0, []  # ready: events not yet written
        try:
            if chat:  # the assistant role first, as OpenAI does
                yield "".join(chunk(index, None, None, first=True) for index in range(len(job.generations)))
            async for index, text, finish, entries in job.events():
                if finish in ("timeout", "error"):
                    timeout = finish == "timeout"
                    message = "the request took too long" if timeout else "internal server error"
                    ready.append(_sse(error_body(message, "timeout" if timeout else "server_error")))
                    break
                finished += finish is not None
                # the chunk that ends the last choice carries the usage (OpenAI's chunks have the
                # field; with stream_options.include_usage a separate usage chunk follows too)
                last = finished == len(job.generations) and not include_usage
                ready.append(chunk(index, text, finish, usage=job.usage() if last else None, entries=entries))
                if job.queue.empty():  # nothing else is waiting: write what is ready as one body part
                    yield "".join(ready)
                    ready.clear()
            else:
                if include_usage:
                    ready.append(
                        _sse(
                            {
                                "id": rid,
                                "object": kind,
                                "created": created,
                                "model": config.model_name,
                                "choices": [],
                                "usage": job.usage(),
                            }
                        )
                    )
            yield "".join(ready) + "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client went away, or the stream ended: free the rows

    app.add_middleware(GuardMiddleware, config=config)  # type: ignore[arg-type]
    return app


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lmforge"}


class Mailbox:
    """Hands items from the scheduler's thread to asyncio queues on the event loop, waking the loop once
    per flush: the 16 tokens of one decoding step of 16 rows cost one wake-up, not 16."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: collections.deque[tuple[asyncio.Queue, Any]] = collections.deque()
        self.scheduled = False

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        """Put `item` on `queue` at the next flush (any thread)."""
        self.items.append((queue, item))

    def flush(self) -> None:
        """Deliver what was posted: wake the event loop unless a delivery is already due (any thread)."""
        if self.items and not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the event loop is closed: nobody waits for these items any more
                self.items.clear()

    def _deliver(self) -> None:  # on the event loop
        self.scheduled = False  # first: an item posted from now on schedules another delivery
        while self.items:
            queue, item = self.items.popleft()
            queue.put_nowait(item)


class TokenTexts:
    """Each token id as OpenAI shows it in logprobs: its text and its bytes.

    A byte-level token that is not whole UTF-8 on its own shows its bytes as backslash escapes: the
    bytes E2 80 (the start of a 3-byte character) become the 8 characters `\\xe2\\x80`, and the bytes
    field keeps [226, 128]. Cached per id.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self.cache:
            raw = self.tokenizer.decode_bytes([token])
            self.cache[token] = (raw.decode("utf-8", errors="backslashreplace"), list(raw))
        return self.cache[token]


# (token id, its log-probabilities, characters of the choice's text before it)
Entry = tuple[int, TokenLogprobs, int]


def logprobs_field(texts: TokenTexts, entries: Sequence[Entry], *, chat: bool) -> dict[str, Any]:
    """The `logprobs` of a choice (or of a streamed chunk) in OpenAI's shape, chat or legacy completions."""
    if chat:
        content = []
        for token, lp, _ in entries:
            text, raw = texts(token)
            top = [{"token": t, "logprob": v, "bytes": b} for t, b, v in ((*texts(i), v) for i, v in lp.top)]
            content.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}
    return {
        "tokens": [texts(token)[0] for token, _, _ in entries],
        "token_logprobs": [lp.logprob for _, lp, _ in entries],
        "top_logprobs": [{texts(i)[0]: v for i, v in lp.top} for _, lp, _ in entries],
        "text_offset": [offset for _, _, offset in entries],
    }


class Job:
    """The generations of one API request (n per prompt) and the text layer of each choice."""

    def __init__(
        self,
        tokenizer: Any,
        stop: list[str],
        mailbox: Mailbox,
        *,
        prompt_tokens: int,
        texts: TokenTexts | None = None,  # set when the request asked for logprobs
    ):
        self.tokenizer, self.stop, self.mailbox, self.texts = tokenizer, stop, mailbox, texts
        self.prompt_tokens = prompt_tokens
        self.generations: list[Generation] = []
        self.client_gone = False  # set when the client disconnected before the answer was ready
        self.queue: asyncio.Queue[tuple[int, int | None, str | None]] = asyncio.Queue()

    def emitter(self, index: int):
        def emit(token: int | None, finish: str | None) -> None:  # called on the scheduler's thread
            self.mailbox.post(self.queue, (index, token, finish))

        return emit

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()

    def usage(self) -> dict[str, int]:
        completion = sum(len(g.generated) for g in self.generations)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    async def events(self) -> AsyncIterator[tuple[int, str, str | None, list[Entry]]]:
        """(choice index, new text, finish reason or None, logprob entries of the tokens since the last
        event) each time a choice has new text or finishes, until every choice has finished. The token
        of a stop id is not in the text, nor in the entries."""
        n = len(self.generations)
        detoks = [IncrementalDetokenizer(self.tokenizer) for _ in range(n)]
        stops = [StopStrings(self.stop) for _ in range(n)]
        received, chars = [0] * n, [0] * n  # tokens received, characters detokenized, per choice
        pending: list[list[Entry]] = [[] for _ in range(n)]
        open_choices = set(range(n))
        while open_choices:
            index, token, finish = await self.queue.get()
            if index not in open_choices:
                continue  # tokens generated after a stop string ended this choice
            text = ""
            if token is not None and not (finish == "stop" and token in self.generations[index].stop_ids):
                if self.texts is not None:  # the scheduler appended the entry before emitting the token
                    lp = self.generations[index].token_logprobs[received[index]]
                    pending[index].append((token, lp, chars[index]))
                received[index] += 1
                piece = detoks[index].push([token])
                chars[index] += len(piece)
                text, hit = stops[index].push(piece)
                if hit:
                    self.generations[index].cancel()
                    finish = "stop"
            if finish is not None:
                if finish in ("stop", "length") and not stops[index].stopped:
                    tail, hit = stops[index].push(detoks[index].flush())
                    text += tail if hit else tail + stops[index].flush()
                if finish == "cancelled":
                    finish = "stop"  # only a stop string (or a gone client) cancels a choice
                open_choices.discard(index)
            if text or finish is not None:
                yield index, text, finish, pending[index]
                pending[index] = []

    async def collect(self) -> tuple[list[str], list[str], list[list[Entry]]]:
        texts = [""] * len(self.generations)
        finishes = [""] * len(self.generations)
        entries: list[list[Entry]] = [[] for _ in self.generations]
        async for index, text, finish, new in self.events():
            texts[index] += text
            entries[index] += new
            if finish:
                finishes[index] = finish
        return texts, finishes, entries


class GuardMiddleware:
    """ASGI middleware: body size limit (413), bearer API key on /v1/* (401), and the access log."""

    def __init__(self, app: Any, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), [0]

        async def logged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is None:
                body, refusal = await self._read_body(receive)
            if refusal is not None:
                return await error_response(refusal)(scope, receive, logged_send)
            replayed = [False]

            async def replay() -> dict:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, logged_send)
        finally:
            client = scope.get("client") or ("", 0)
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status[0],
                        "ms": round(1000 * (time.monotonic() - started), 1),
                        "client": client[0],
                    }
                )
            )

    def _refuse(self, scope: dict) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.config.max_body_bytes:
            return APIError(
                413, f"the request body exceeds {self.config.max_body_bytes} bytes", code="request_too_large"
            )
        if self.config.api_key is not None and scope["path"].startswith("/v1/"):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.config.api_key}".encode()):
                return APIError(
                    401,
                    "invalid or missing API key (send 'Authorization: Bearer KEY')",
                    type="authentication_error",
                    code="invalid_api_key",
                )
        return None

    async def _read_body(self, receive: Callable) -> tuple[bytes, APIError | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.config.max_body_bytes:
                return b"", APIError(
                    413,
                    f"the request body exceeds {self.config.max_body_bytes} bytes",
                    code="request_too_large",
                )
            if not message.get("more_body", False):
                return b"".join(chunks), None


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    while True:
        await asyncio.sleep(0.25)
        if await request.is_disconnected():
            job.client_gone = True
            job.cancel()
            return


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _is_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def _replace_seed(params: SamplingParams, seed: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=seed)


__all__ = ["APIError", "ServerConfig", "create_app", "STATIC_DIR"]
