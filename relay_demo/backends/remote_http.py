"""The HTTP side of the remote engine (``remote.py``): the client, one streamed completion per reader thread,
and which failures mean "the model is unavailable".

    client = open_client(api_key=None, connect_timeout_s=5, read_timeout_s=60)
    served = get_json(client, url + "/v1/models", url)["data"]
    check_tokenizer(client, url, model, tokenizer, "path/it/came/from")
    reader = Stream(client, url, body, index, inbox); reader.start()   # (index, kind, payload) into inbox

Failures: no connection, a timeout, a 5xx, an error event or a stream cut before its finish raise (or
post) :class:`~relay_demo.backends.base.ModelUnavailable` naming the server; a 4xx (our request is wrong,
waiting would not help) raises ``RuntimeError`` with the server's message.
"""

from __future__ import annotations

import json
import os
import queue
import threading

from .base import ModelUnavailable

PROBE = "Hello, relay 17 * 23 = ?\n<call>8</call>"  # must encode the same on the server and here


def open_client(api_key: str | None, connect_timeout_s: float, read_timeout_s: float, max_connections: int):
    """One connection pool per engine; ``read_timeout_s`` bounds each silence of a stream, not its length."""
    import httpx

    key = api_key or os.environ.get("RELAY_REMOTE_API_KEY")
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"authorization": f"Bearer {key}"} if key else None,
    )


def unavailable(url: str, e: Exception) -> ModelUnavailable:
    if isinstance(e, ModelUnavailable):
        return e
    name = type(e).__name__
    what = "did not answer in time" if "Timeout" in name else "failed"
    what = "cannot be reached" if "Connect" in name else what
    return ModelUnavailable(f"the model server at {url} {what} ({type(e).__name__}: {e})")


def error_from(url: str, err: dict) -> Exception:
    code = err.get("code")
    msg = f"the model server at {url} answered {code}: {err.get('message')}"
    if isinstance(code, int) and 400 <= code < 500:
        return RuntimeError(msg)
    return ModelUnavailable(msg)


def http_error(url: str, resp) -> Exception:
    try:
        err = resp.json().get("error") or {}
    except ValueError:
        err = {"message": resp.text[:200]}
    err.setdefault("code", resp.status_code)
    return error_from(url, err)


class Stream(threading.Thread):
    """Reads one streamed completion into ``out`` as (index, kind, payload): ``("tokens", choice)`` per
    choice chunk, ``("usage", usage)``, then ``("end", None)``, or ``("error", exception)``. Setting ``stop``
    makes it close the stream at the next line, which makes vLLM abort the request."""

    def __init__(self, client, url: str, body: dict, index: int, out: queue.Queue):
        super().__init__(name=f"remote-stream-{index}", daemon=True)
        self.client, self.url, self.body, self.index, self.out = client, url, body, index, out
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._read()
        except Exception as e:  # noqa: BLE001 - every failure must reach the engine, not die in this thread
            if not self.stop.is_set():
                self.out.put(
                    (self.index, "error", e if isinstance(e, RuntimeError) else unavailable(self.url, e))
                )

    def _read(self) -> None:
        with self.client.stream("POST", self.url + "/v1/completions", json=self.body) as resp:
            if resp.status_code != 200:
                resp.read()
                raise http_error(self.url, resp)
            finished = None
            for line in resp.iter_lines():
                if self.stop.is_set():
                    return  # leaving the block closes the stream
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:  # an error after the 200: the engine failed mid-answer
                    raise error_from(self.url, chunk["error"])
                if chunk.get("usage") is not None:
                    self.out.put((self.index, "usage", chunk["usage"]))
                for choice in chunk.get("choices") or ():
                    finished = finished or choice.get("finish_reason")
                    self.out.put((self.index, "tokens", choice))
            if finished is None:
                raise ModelUnavailable(f"the model server at {self.url} ended the stream before the answer")
        self.out.put((self.index, "end", None))


def get_json(client, url: str, base: str) -> dict:
    """GET a JSON document from the server at ``base``."""
    import httpx

    try:
        resp = client.get(url)
    except httpx.HTTPError as e:
        raise unavailable(base, e) from e
    if resp.status_code == 401:
        raise ValueError(f"{base} refused the API key (set RELAY_REMOTE_API_KEY or pass api_key)")
    if resp.status_code != 200:
        raise http_error(base, resp)
    try:
        return resp.json()
    except ValueError:
        raise ValueError(f"{url} did not answer JSON: is it a vLLM OpenAI server?") from None


def check_tokenizer(client, url: str, model: str, tok, where: str) -> None:
    """The server's tokenizer must encode the probe as the local one does (no /tokenize: unchecked)."""
    import httpx

    try:
        resp = client.post(
            url + "/tokenize", json={"model": model, "prompt": PROBE, "add_special_tokens": False}
        )
    except httpx.HTTPError as e:
        raise unavailable(url, e) from e
    if resp.status_code == 404:
        return
    theirs = resp.json().get("tokens") if resp.status_code == 200 else None
    ours = tok.encode(PROBE, add_special_tokens=False)
    if theirs != ours:
        raise ValueError(
            f"the tokenizer at {where} does not match the model served at {url} (probe {PROBE!r}: "
            f"{ours[:8]}... here, {(theirs or [])[:8]}... there); student and teacher share one tokenizer"
        )
