"""The JSON API on a tiny generated index: answers equal the engine's, and every refusal is a 4xx with an error."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from downloader.metadata import BBox
from tests.conftest import encode, make_image
from tests.retrieval.service.conftest import PRODUCTS, client_for, png_header_only

JPEG = "image/jpeg"


def upload(data: bytes, name: str = "street.jpg") -> dict:
    return {"image": (name, data, JPEG)}


def test_health_and_categories_count_the_index(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["photos"] == 2 * (PRODUCTS + 2) and health["categories"] == 2
    assert health["head"] is False and health["backbone"] == "tiny" and health["max_upload_mb"] == 0.5
    assert client.get("/api/categories").json() == {"categories": [
        {"name": "bags", "photos": PRODUCTS + 2, "products": PRODUCTS},
        {"name": "dresses", "photos": PRODUCTS + 2, "products": PRODUCTS}]}


def test_search_answers_what_the_engine_answers_for_the_file(client, raw_engine, tmp_path):
    photo = tmp_path / "street.jpg"
    make_image(90, 70, seed=11).save(photo, quality=90)
    response = client.post("/api/search", files=upload(photo.read_bytes()),
                           data={"bbox": "10,5,50,40", "category": "dresses", "k": "7"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = raw_engine.search(photo, k=7, category="dresses", bbox=BBox(10, 5, 50, 40))
    assert [(m["rank"], m["product"], m["photo"], m["category"]) for m in body["matches"]] == \
        [(m.rank, m.product, m.photo, m.category) for m in expected]
    np.testing.assert_allclose([m["distance"] for m in body["matches"]], [m.distance for m in expected], atol=1e-6)
    np.testing.assert_allclose([m["score"] for m in body["matches"]], [m.score for m in expected], atol=1e-6)
    assert all(m["image_url"] == f"/shop/{m['photo']}.jpg" for m in body["matches"])
    assert len({m["product"] for m in body["matches"]}) == 7
    assert body["query"] == {"bbox": [10, 5, 50, 40], "category": "dresses", "k": 7} and body["took_ms"] > 0


def test_search_defaults_to_ten_products_of_every_category_each_once(client, raw_index):
    shop = raw_index.parents[1]  # the index was built from the shop folder's vectors
    data = next(shop.glob("shop*/shop/100.jpg")).read_bytes()
    matches = client.post("/api/search", files=upload(data)).json()["matches"]
    assert len(matches) == 10 and len({m["product"] for m in matches}) == 10
    assert matches[0]["photo"] == 100 and matches[0]["distance"] == pytest.approx(0, abs=1e-5)


def test_search_with_a_head_scores_by_its_calibration(head_client, head_engine):
    data = encode(make_image(64, 64, seed=2))
    matches = head_client.post("/api/search", files=upload(data), data={"k": "3"}).json()["matches"]
    expected = head_engine.search(Image.open(io.BytesIO(data)), k=3)
    assert [m["photo"] for m in matches] == [m.photo for m in expected]
    scores = head_engine.head.calibration.score(np.array([m["distance"] for m in matches]))
    np.testing.assert_allclose([m["score"] for m in matches], scores, rtol=1e-6)


def test_compare_raw_index_is_cosine_without_a_call(client, raw_engine):
    a, b = make_image(60, 60, seed=1), make_image(60, 60, seed=5)
    response = client.post("/api/compare", files={"a": ("a.png", encode(a, "PNG"), "image/png"),
                                                   "b": ("b.png", encode(b, "PNG"), "image/png")},
                           data={"bbox_b": "5,5,40,40"})
    assert response.status_code == 200, response.text
    body = response.json()
    va, vb = raw_engine.extractor.embed([a, b.crop((5, 5, 45, 45))])
    cosine = float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))
    assert body["distance"] == pytest.approx(1 - cosine, abs=1e-5)
    assert body["score"] == pytest.approx(1 - (1 - cosine) / 2, abs=1e-5)
    assert body["same"] is None and body["threshold"] is None


def test_compare_with_a_head_uses_its_distance_score_and_threshold(head_client, head_engine):
    a, b = make_image(50, 70, seed=8), make_image(50, 70, seed=9)
    body = head_client.post("/api/compare", files={"a": ("a.png", encode(a, "PNG"), "image/png"),
                                                   "b": ("b.png", encode(b, "PNG"), "image/png")}).json()
    distance, score, same = head_engine.head.compare(*head_engine.extractor.embed([a, b]))
    assert body["distance"] == pytest.approx(float(distance[0]), abs=1e-5)
    assert body["score"] == pytest.approx(float(score[0]), abs=1e-5)
    assert body["same"] is bool(same[0]) and body["threshold"] == 0.6
    itself = head_client.post("/api/compare", files={"a": ("a.png", encode(a, "PNG"), "image/png"),
                                                     "b": ("b.png", encode(a, "PNG"), "image/png")}).json()
    assert itself["distance"] == pytest.approx(0, abs=1e-5) and itself["same"] is True


def test_shop_photos_are_served_by_id_only(client, raw_engine):
    row = int(np.flatnonzero(raw_engine.index.photos == 105)[0])
    response = client.get("/shop/105.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == JPEG
    assert response.content == open(raw_engine.index.path(row), "rb").read()
    for name in ("999", "abc", "105.jpg%00", "..%2F..%2Fmanifest", "%2E%2E"):
        refused = client.get(f"/shop/{name}.jpg")
        assert refused.status_code == 404 and "error" in refused.json(), name
    assert client.get("/shop/../manifest.jsonl").status_code == 404


@pytest.mark.parametrize("data, reason", [
    (b"", "image: empty"),
    (b"hello, this is text", "image: not an image"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "image: not an image: an HTML page"),
    (encode(make_image(80, 80))[:400], "image: truncated"),
    (png_header_only(40000, 40000), "image: image too large"),  # Pillow's own bomb limit
    (png_header_only(7000, 7000), "image: image too large"),  # over the service's 40 MP
])
def test_unusable_photos_are_400(client, data, reason):
    response = client.post("/api/search", files=upload(data))
    assert response.status_code == 400 and response.json()["error"].startswith(reason), response.text
    response = client.post("/api/compare", files={"a": ("a.jpg", encode(make_image()), JPEG), "b": ("b.jpg", data, JPEG)})
    assert response.status_code == 400 and response.json()["error"].startswith(reason.replace("image:", "b:", 1))


@pytest.mark.parametrize("bbox, reason", [
    ("1,2,3", "bbox: expected LEFT,TOP,WIDTH,HEIGHT"),
    ("a,b,c,d", "bbox: expected LEFT,TOP,WIDTH,HEIGHT"),
    ("0,0,0,10", "width and height must be positive"),
    ("-1,0,5,5", "left and top at least 0"),
    ("nan,0,5,5", "not a finite number"),
    ("500,500,10,10", "image: box (left 500.0, top 500.0, width 10.0, height 10.0) does not overlap the 64x48 image"),
])
def test_bad_boxes_are_400(client, bbox, reason):
    response = client.post("/api/search", files=upload(encode(make_image())), data={"bbox": bbox})
    assert response.status_code == 400 and reason in response.json()["error"], response.text


def test_bad_box_of_compare_names_its_field(client):
    files = {"a": ("a.jpg", encode(make_image()), JPEG), "b": ("b.jpg", encode(make_image()), JPEG)}
    response = client.post("/api/compare", files=files, data={"bbox_b": "0,0,-4,4"})
    assert response.status_code == 400 and response.json()["error"].startswith("bbox_b: ")


def test_unknown_category_is_400_naming_the_known_ones(client):
    response = client.post("/api/search", files=upload(encode(make_image())), data={"category": "hats"})
    assert response.status_code == 400
    assert response.json() == {"error": "category: no shop photo of category 'hats' in the index (it has: bags, dresses)"}


@pytest.mark.parametrize("fields, where", [({"k": "0"}, "k"), ({"k": "101"}, "k"), ({"k": "ten"}, "k")])
def test_out_of_range_parameters_are_422_with_an_error(client, fields, where):
    response = client.post("/api/search", files=upload(encode(make_image())), data=fields)
    body = response.json()
    assert response.status_code == 422 and body["error"].startswith(f"{where}: ") and body["detail"][0]["loc"][-1] == where


def test_missing_photo_is_422(client):
    response = client.post("/api/search", data={"k": "3"})
    assert response.status_code == 422 and response.json()["error"].startswith("image: ")
    response = client.post("/api/compare", files={"a": ("a.jpg", encode(make_image()), JPEG)})
    assert response.status_code == 422 and response.json()["error"].startswith("b: ")


def test_a_text_field_where_a_photo_belongs_says_so(client):
    """A form that sends ``image=...`` as text (a common client mistake) is told to send a file, in plain words."""
    response = client.post("/api/search", data={"image": "street.jpg"})
    assert response.status_code == 422
    assert response.json()["error"] == "image: expected a file upload (a multipart file field), got a text field"


def test_upload_over_the_limit_is_413_from_its_content_length(client):
    big = b"\xff" * (600 * 1024)  # the client fixture allows 0.5 MB
    response = client.post("/api/search", files=upload(big))
    assert response.status_code == 413 and response.headers["connection"] == "close"
    assert response.json()["error"].startswith("upload too large: Content-Length is ")
    files = {"a": ("a.jpg", big[:300_000], JPEG), "b": ("b.jpg", big[:300_000], JPEG)}  # both count
    assert client.post("/api/compare", files=files).status_code == 413


def test_unknown_routes_and_methods_answer_json_errors(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    response = client.get("/api/search")
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}


def test_a_failing_batch_is_a_500_with_an_error_and_the_service_goes_on(raw_engine, raw_index, monkeypatch):
    with client_for(raw_engine, raw_index, raise_server_exceptions=False) as client:
        monkeypatch.setattr(raw_engine, "search_vectors", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
        response = client.post("/api/search", files=upload(encode(make_image())))
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (RuntimeError); the server log has the details"}
        monkeypatch.undo()
        assert client.post("/api/search", files=upload(encode(make_image()))).status_code == 200


def test_one_log_line_per_request(client, caplog):
    caplog.set_level(logging.INFO, logger="retrieval.service")
    client.post("/api/search", files=upload(encode(make_image())))
    client.post("/api/search", files=upload(b"junk"))
    client.post("/api/search", files=upload(b"\0" * (600 * 1024)))
    client.get("/shop/100.jpg")
    lines = [r.getMessage() for r in caplog.records if r.name == "retrieval.service"]
    assert len(lines) == 4, lines
    assert [line.split()[1:4] for line in lines] == [
        ["POST", "/api/search", "200"], ["POST", "/api/search", "400"], ["POST", "/api/search", "413"],
        ["GET", "/shop/100.jpg", "200"]]


def test_openapi_documents_the_routes_and_the_page_is_served(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/compare", "/api/categories", "/healthz", "/shop/{photo}.jpg"} <= set(schema["paths"])
    form = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "http" not in page.text.replace("http-equiv", "")
    for asset in ("/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text, asset  # nothing from the internet
    assert json.loads(client.get("/healthz").text)["status"] == "ok"


def test_cross_origin_calls_only_from_the_origins_allowed(raw_engine, raw_index, client):
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    with client_for(raw_engine, raw_index, cors_origins=("https://shop.example",)) as shop:
        allowed = shop.options("/api/search", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        answer = shop.post("/api/search", files=upload(encode(make_image())), headers={"Origin": "https://shop.example"})
        assert answer.headers["access-control-allow-origin"] == "https://shop.example"
        other = shop.options("/api/search", headers=dict(preflight, Origin="https://elsewhere.example"))
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    answer = client.post("/api/search", files=upload(encode(make_image())), headers={"Origin": "https://shop.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_cors_origin_must_be_a_web_origin(raw_engine, raw_index):
    from retrieval.service import ServiceConfig

    with pytest.raises(ValueError, match="--cors-origin must be \\* or start with http:// or https://, got 'shop'"):
        ServiceConfig(index=raw_index, cors_origins=("shop",)).validate()


def test_head_requests_answer_like_get_without_a_body(client):
    """Health checks and link checkers use HEAD: it must not be a 405 where GET works."""
    for url in ("/healthz", "/api/categories", "/shop/105.jpg", "/"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == 200, (url, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], url
    assert client.head("/shop/999.jpg").status_code == 404
