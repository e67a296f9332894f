"""Schema-driven fuzzing of the whole HTTP API (Schemathesis over the app's own /openapi.json).

For every operation, a bounded number of generated requests (valid and invalid by the schema): no
answer is a 5xx, every status code is one the operation declares, and every body matches the
declared schema and content type.
"""
import json

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,  # noqa: E402
                                 status_code_conformance)

from tests.conftest import needs_shared  # noqa: E402

pytestmark = needs_shared
EXAMPLES = 50  # per operation and generation mode: bounded for CI


@pytest.fixture(scope="module")
def api_schema(flickr_index, tiny_clip):
    from retrieval import create_app, open_index

    app = create_app({"flk": open_index(flickr_index, tiny_clip)}, max_body=1 << 20)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.service.close()


WITH_INPUT = ["POST /search", "POST /search/upload", "POST /classify", "GET /items/{index}/{item_id}/image",
              "POST /items/{index}/delete"]
NO_INVALID = ["GET /health", "GET /indexes", "POST /admin/reload", "DELETE /items/{index}/{key}"]  # any input is valid
CASES = [(op, "positive") for op in NO_INVALID + WITH_INPUT] + [(op, "negative") for op in WITH_INPUT]


@pytest.mark.parametrize("label,mode", CASES)
def test_no_5xx_and_every_answer_matches_the_schema(api_schema, label, mode):
    from hypothesis import given
    from schemathesis import GenerationMode

    op = next(r.ok() for r in api_schema.get_all_operations() if r.ok().label == label)

    @given(case=op.as_strategy(GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def run(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])

    run()
def test_nan_and_infinity_are_422_with_a_json_detail(api_schema, flickr_index, tiny_clip):
    from starlette.testclient import TestClient

    from retrieval import create_app, open_index

    client = TestClient(create_app({"flk": open_index(flickr_index, tiny_clip)}))
    for field, value in (("k", "NaN"), ("lam", "NaN"), ("alpha", "Infinity"), ("alpha", "-Infinity"), ("k", "1e999")):
        r = client.post("/search", content=f'{{"text": "a dog", "{field}": {value}}}',
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["detail"][0]["loc"][-1] == field
    r = client.post("/search", content='{"embedding": [NaN, 1.0]}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "embedding" in str(r.json()["detail"])
    for template in ("{} {}", "{0}", "{name}", "{", "no field", "{:>999999999}", "{!r}", "{} {{x}}", "{}" + "x" * 400):
        r = client.post("/classify", json={"images_base64": ["x"], "classes": ["cat", "dog"], "templates": [template]})
        detail = r.json()["detail"]
        assert r.status_code == 422 and ("exactly one bare {}" in detail or "at most" in detail), (template, r.text)


# ---- hostile JSON: the class of 5xx the adversarial pass found (deep nesting, integers past int64) ----
ROUTES = {  # route -> a valid body whose fields the hostile values replace one at a time
    "/search": {"text": "a dog", "k": 3, "item_id": None, "candidates": None},
    "/classify": {"images_base64": ["x"], "classes": ["a", "b"], "neighbours": 8, "captions": 4},
    "/items/flk/delete": {"keys": ["k"]},
    "/knn-service": {"text": "a dog", "num_images": 3, "num_result_ids": 3, "indice_name": "flk",
                     "embedding_input": None, "aesthetic_score": None},
    "/metadata": {"ids": [0], "indice_name": "flk"},
}


def _nested(depth: int, leaf) -> bytes:
    return (b"[" * depth + json.dumps(leaf).encode() + b"]" * depth) if depth % 2 else \
        (b'{"a":' * depth + json.dumps(leaf).encode() + b"}" * depth)


@pytest.fixture(scope="module")
def client(flickr_index, tiny_clip):
    from fastapi.testclient import TestClient

    from retrieval import create_app, open_index

    app = create_app({"flk": open_index(flickr_index, tiny_clip)}, max_body=1 << 20)
    with TestClient(app) as c:
        yield c


def test_hostile_json_never_answers_5xx(client):
    from hypothesis import given
    from hypothesis import strategies as st

    huge = st.one_of(st.integers(min_value=2**63, max_value=2**300), st.integers(min_value=-2**300, max_value=-2**63 - 1))
    depth = st.integers(min_value=900, max_value=60_000)

    @given(route=st.sampled_from(sorted(ROUTES)), field=st.integers(0, 10), big=huge, d=depth,
           how=st.sampled_from(["field", "list", "nested-body", "nested-field"]))
    @settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    def run(route, field, big, d, how):
        body = dict(ROUTES[route])
        name = sorted(body)[field % len(body)]
        if how == "nested-body":
            raw = _nested(d, big)
        elif how == "nested-field":
            raw = json.dumps({**body, name: None}).replace('null', _nested(d, 1).decode(), 1).encode()
        else:
            raw = json.dumps({**body, name: big if how == "field" else [big] * 3}).encode()
        r = client.post(route, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (route, how, name, r.status_code, r.text[:300])
        assert 400 <= r.status_code < 500 or r.status_code == 200, (route, r.status_code)
        if r.status_code >= 400:
            assert "detail" in r.json()

    run()
    for item in (2**63, 2**70, -(2**70)):
        r = client.get(f"/items/flk/{item}/image")
        assert r.status_code == 422 and "detail" in r.json(), (item, r.text)


def test_a_filter_after_the_folder_is_gone_is_503(tmp_path, flickr_index, tiny_clip):
    import shutil

    from fastapi.testclient import TestClient

    from retrieval import create_app, open_index

    folder = tmp_path / "idx"
    shutil.copytree(flickr_index, folder)
    app = create_app({"flk": open_index(folder, tiny_clip)})
    shutil.rmtree(folder)
    with TestClient(app) as c:
        r = c.post("/search", json={"text": "a dog", "where": "caption LIKE '%dog%'"})
        assert r.status_code == 503 and "metadata" in r.json()["detail"], r.text
        r = c.post("/knn-service", json={"text": "a dog", "where": "caption LIKE '%dog%'"})
        assert r.status_code == 503 and "detail" in r.json(), r.text
