"""What each protocol's answers mean for the rows, and strict reply parsing (no server: httpx's
MockTransport answers in-process)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from study_embed.embedders import (
    CLIENTS,
    ClientConfig,
    Disposition,
    EmbeddingError,
    RowFailure,
    check_vectors,
    parse_vectors,
)


def client(api: str, handler, max_inputs: int | None = 32) -> object:
    config = ClientConfig(
        api=api,
        url="http://embed.test",
        model="m",
        api_key=None,
        timeout=1.0,
        max_inputs=max_inputs,
    )
    http = httpx.AsyncClient(base_url=config.url, transport=httpx.MockTransport(handler))
    return CLIENTS[api](config, http=http)


def embed(api: str, handler, texts=("a", "b"), dim=None):
    return asyncio.run(client(api, handler).embed(list(texts), dim))


def answer(status: int, body) -> callable:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, content=body, headers={"content-type": "text/html"})
        return httpx.Response(status, json=body)

    return handler


def disposition(api: str, handler, **kw) -> Disposition:
    with pytest.raises(EmbeddingError) as e:
        embed(api, handler, **kw)
    return e.value.disposition


@pytest.mark.parametrize("api", ["tei", "openai", "ollama"])
@pytest.mark.parametrize(
    "status,expected",
    [
        (400, Disposition.SPLIT),
        (413, Disposition.SPLIT),
        (422, Disposition.SPLIT),
        (401, Disposition.BACK_OFF),
        (403, Disposition.BACK_OFF),
        (404, Disposition.BACK_OFF),
        (408, Disposition.BACK_OFF),
        (429, Disposition.RATE_LIMITED),
        (500, Disposition.BACK_OFF),
        (503, Disposition.BACK_OFF),
    ],
)
def test_error_statuses(api, status, expected):
    handler = answer(status, {"error": "x"})
    if status == 429:  # a wait longer than a batch waits in place: the batch goes back

        def handler(request, inner=handler):
            r = inner(request)
            r.headers["retry-after"] = "3600"
            return r

    assert disposition(api, handler) is expected


def test_teis_424_is_its_own_retry_later_and_only_teis():
    assert (
        disposition("tei", answer(424, {"error": "x", "error_type": "Backend"}))
        is Disposition.RETRY_LATER
    )
    assert disposition("openai", answer(424, {"error": "x"})) is Disposition.BACK_OFF


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
def test_no_answer_is_unreachable(exc):
    def handler(request):
        raise exc

    assert disposition("tei", handler) is Disposition.UNREACHABLE


def test_the_servers_own_words_are_in_the_message():
    with pytest.raises(EmbeddingError) as e:
        embed("openai", answer(400, {"error": {"message": "input too long", "type": "bad"}}))
    assert "input too long" in str(e.value) and "HTTP 400" in str(e.value)


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",  # a proxy's page, 200
        [[0.1, 0.2]],  # one vector for two texts
        [[0.1, "0.2"], [0.3, 0.4]],  # a number as a string
        [[0.1, True], [0.3, 0.4]],  # a boolean
        [[0.1, None], [0.3, 0.4]],
        [[], [0.3, 0.4]],
        {"embeddings": [[0.1], [0.2]]},  # another protocol's shape
    ],
)
def test_unusable_2xx_replies_are_the_servers_fault(body):
    assert disposition("tei", answer(200, body)) is Disposition.BACK_OFF


def test_openai_replies_are_sorted_by_index():
    def handler(request):
        return httpx.Response(
            200,
            json={
                "data": [
                    {"index": 1, "embedding": [0.0, 1.0]},
                    {"index": 0, "embedding": [1.0, 0.0]},
                ]
            },
        )

    a, b = embed("openai", handler)
    assert a.tolist() == [1.0, 0.0] and b.tolist() == [0.0, 1.0]


def test_openai_vectors_are_asked_for_and_read_as_base64_and_numbers_still_read():
    asked = []
    b64 = base64.b64encode(np.array([0.25, -1.5, 3.0], dtype="<f4").tobytes()).decode()

    def handler(request):
        asked.append(json.loads(request.content)["encoding_format"])
        return httpx.Response(
            200,
            json={
                "data": [
                    {"index": 0, "embedding": b64},
                    {"index": 1, "embedding": [0.5, 0.5, 0.0]},  # a server that ignores it
                ]
            },
        )

    a, b = embed("openai", handler)
    assert asked == ["base64"]
    assert a.dtype == np.float32 and a.tolist() == [0.25, -1.5, 3.0]
    assert a.flags.writeable and b.tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"\x00\x00\x80").decode(), ""])
def test_a_broken_base64_vector_makes_the_reply_unusable(bad):
    body = {"data": [{"index": 0, "embedding": bad}, {"index": 1, "embedding": bad}]}
    assert disposition("openai", answer(200, body)) is Disposition.BACK_OFF


def sized_client(api: str, limit: int, max_inputs: int | None, named: bool = True):
    """A client of a server that takes at most `limit` texts a request (TEI's 422 names it; a
    proxy's 413 does not); the sizes of the requests it was sent."""
    sizes: list[int] = []

    def handler(request):
        body = json.loads(request.content)
        n = len(body.get("inputs") or body.get("input"))
        sizes.append(n)
        if n > limit:
            if named:
                return httpx.Response(
                    422,
                    json={
                        "error": f"batch size {n} > maximum allowed batch size {limit}",
                        "error_type": "Validation",
                    },
                )
            return httpx.Response(413, content=b"<html>413 Request Entity Too Large</html>")
        if any("bad" in t for t in body.get("inputs") or body.get("input")):
            return httpx.Response(422, json={"error": "input is too long"})
        return answer(200, ok_reply(api, n))(request)

    return client(api, handler, max_inputs), sizes


def test_requests_are_cut_at_max_inputs():
    c, sizes = sized_client("tei", limit=100, max_inputs=4)
    assert len(asyncio.run(c.embed(["t"] * 10))) == 10
    assert sizes == [4, 4, 2]


@pytest.mark.parametrize("api,default", [("tei", 32), ("openai", 128), ("ollama", 128)])
def test_the_request_size_defaults_to_the_protocols(api, default):
    c, sizes = sized_client(api, limit=1000, max_inputs=None)
    asyncio.run(c.embed(["t"] * 300))
    assert sizes[0] == default and max(sizes) == default


def test_a_size_the_server_names_is_kept_from_then_on():
    c, sizes = sized_client("tei", limit=5, max_inputs=8)
    assert len(asyncio.run(c.embed(["t"] * 12))) == 12
    assert sizes == [8, 5, 3, 4]  # refused at 8, sent again as the 5 the server named
    assert c.max_inputs == 5
    sizes.clear()
    asyncio.run(c.embed(["t"] * 12))
    assert sizes == [5, 5, 2]


def test_a_size_refused_without_a_word_is_halved_until_answered():
    c, sizes = sized_client("openai", limit=3, max_inputs=8, named=False)
    assert len(asyncio.run(c.embed(["t"] * 8))) == 8
    assert sizes == [8, 4, 2, 2, 2, 2] and c.max_inputs == 2
    sizes.clear()
    asyncio.run(c.embed(["t"] * 5))
    assert sizes == [2, 2, 1]


def test_a_refused_text_is_not_taken_for_the_size():
    c, sizes = sized_client("tei", limit=100, max_inputs=4)
    with pytest.raises(EmbeddingError) as e:
        asyncio.run(c.embed(["a", "b", "bad", "c"]))
    assert e.value.disposition is Disposition.SPLIT and "input is too long" in str(e.value)
    assert sizes == [4] and c.max_inputs == 4  # a 422 that names no size is a text's


def test_a_413_whose_parts_are_refused_too_is_a_texts():
    c, sizes = sized_client("openai", limit=2, max_inputs=4, named=False)
    with pytest.raises(EmbeddingError) as e:
        asyncio.run(c.embed(["a", "b", "bad", "c"]))
    assert e.value.status == 413  # the first refusal goes up, for the worker to halve
    assert sizes == [4, 2, 2] and c.max_inputs == 4  # one half was answered, the other not
    sizes.clear()
    with pytest.raises(EmbeddingError):  # the worker's halving: no second guess about size
        asyncio.run(c.embed(["bad", "c"]))
    assert sizes == [2]


def test_parse_vectors_is_float32_and_strict():
    [v] = parse_vectors([[1, 2.5]])
    assert v.dtype == np.float32 and v.tolist() == [1.0, 2.5]
    for bad in ([["1"]], [[False]], [[[1.0]]], [{"x": 1}], ["abc"]):
        with pytest.raises(EmbeddingError):
            parse_vectors(bad)


def test_row_problems_fail_the_row_and_a_wrong_dimension_everywhere_is_the_server():
    ok = np.array([1.0, 0.0], dtype=np.float32)
    out = check_vectors(
        [
            ok,
            np.array([np.nan, 0], dtype=np.float32),
            np.zeros(2, dtype=np.float32),
            np.ones(3, dtype=np.float32),
        ],
        dim=2,
    )
    assert out[0] is ok
    assert all(isinstance(o, RowFailure) and o.retryable for o in out[1:])
    nan, zero, wide = (o.message for o in out[1:])
    assert "NaN" in nan and "zero vector" in zero and "3 dimensions" in wide
    with pytest.raises(EmbeddingError) as e:
        check_vectors([np.ones(3, dtype=np.float32)] * 2, dim=2)
    assert e.value.disposition is Disposition.BACK_OFF and "3 dimensions" in str(e.value)


def ok_reply(api: str, n: int = 1) -> dict | list:
    vectors = [[0.1, 0.2, 0.3]] * n
    if api == "tei":
        return vectors
    if api == "openai":
        return {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
    return {"embeddings": vectors}


@pytest.mark.parametrize(
    "api,path", [("tei", "/health"), ("openai", "/v1/models"), ("ollama", "/api/version")]
)
def test_health_asks_the_route_then_the_smallest_real_request(api, path):
    """A health route can say 200 while every embedding fails (a half-broken server): the
    probe is honest only with a real request behind it."""
    seen = []
    embed_status = [503]

    def handler(request):
        seen.append((request.method, request.url.path))
        if request.method == "GET":
            return httpx.Response(503 if len(seen) == 1 else 200)
        return httpx.Response(embed_status[0], json=ok_reply(api))

    c = client(api, handler)
    assert asyncio.run(c.healthy()) is False  # the route says 5xx: not asked further
    assert asyncio.run(c.healthy()) is False  # the route says 200, embedding fails
    embed_status[0] = 200
    assert asyncio.run(c.healthy()) is True
    post = CLIENTS[api].path
    assert seen == [("GET", path), ("GET", path), ("POST", post), ("GET", path), ("POST", post)]
    # a request that succeeded stands for the server's health a few seconds: no probe
    assert asyncio.run(c.healthy()) is True and len(seen) == 5


def test_a_proxys_html_error_page_on_every_route_is_not_healthy():
    def handler(request):
        return httpx.Response(
            502, content=b"<html>502 Bad Gateway</html>", headers={"content-type": "text/html"}
        )

    assert asyncio.run(client("tei", handler).healthy()) is False
