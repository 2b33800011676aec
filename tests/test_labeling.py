"""The labeling server without a browser: APNG clips, leases, budgets, restarts, the
queue of a running job, and every bad request a 4xx that changes nothing (urllib)."""

from __future__ import annotations

import http.client
import io
import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner

from ray_rewards.labeling import LabelingError, LabelingService, LabelServer, encode_apng
from ray_rewards.labeling.command import label
from ray_rewards.preferences import AsyncGatherer
from ray_rewards.train import oracle, schemas, trainer

ENV = "Pendulum-v1"
LENGTH = 3


def write_pairs(folder, num_pairs: int, seed: int = 0) -> str:
    """A pipeline-like ``train_pairs`` folder: ``num_pairs`` random Pendulum pairs of
    ``LENGTH`` steps, oracle-labeled (the labeling page ignores those labels)."""
    rng = np.random.default_rng(seed)
    n = 2 * num_pairs * LENGTH
    angle = rng.uniform(-np.pi, np.pi, n)
    obs = np.stack([np.cos(angle), np.sin(angle), rng.uniform(-8, 8, n)], 1).astype(np.float32)
    transitions = {
        "obs": obs,
        "actions": rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        "new_obs": np.roll(obs, -1, 0),
        "terminateds": np.zeros(n, bool),
        "rewards": -(angle**2),
    }
    pairs = oracle.preference_pairs(
        transitions,
        np.full(2 * num_pairs, LENGTH),
        num_pairs=num_pairs,
        fragment_length=LENGTH,
        oracle=oracle.PreferenceOracle(),
        rng=rng,
    )
    schema = schemas.preference_schema(*trainer.env_spaces(ENV), LENGTH)
    return schemas.write_parquet(pairs, os.path.join(folder, "train_pairs"), schema)


def answer_files(queue_dir) -> dict[str, list]:
    """Every answer in a queue folder, as columns (``query_id``, ``preference``, ...)."""
    import pyarrow.parquet as pq

    return pq.read_table(os.path.join(queue_dir, "answers")).to_pydict()


def snapshot(*folders) -> dict[str, bytes]:
    out = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out[path] = f.read()
    return out


class Client:
    """JSON over urllib; ``(status, body)`` for every answer, errors included."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url.rstrip("/"), token

    def request(self, method, path, body=None, *, raw=None, headers=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        req = urllib.request.Request(self.url + path, data, hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method, path, body=None, **kw):
        status, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None


class Servers:
    """Label servers in threads; :meth:`close` stops them and closes their services."""

    def __init__(self) -> None:
        self.running: list[tuple[LabelServer, LabelingService]] = []

    def start(self, service, token=None, host="127.0.0.1"):
        """``(server, Client)`` of ``service`` on a free port of ``host``."""
        server = LabelServer(service, host, 0, token)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.running.append((server, service))
        return server, Client(f"http://127.0.0.1:{server.server_address[1]}", server.token)

    def close(self) -> None:
        for server, service in self.running:
            server.shutdown()
            server.server_close()
            service.close()


@pytest.fixture
def serve():
    servers = Servers()
    yield servers.start
    servers.close()


def test_apng_holds_the_frames_and_loops():
    pil = pytest.importorskip("PIL.Image")
    frames = np.random.default_rng(0).integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    image = pil.open(io.BytesIO(encode_apng(frames, fps=10)))
    assert image.is_animated and image.n_frames == 4
    assert image.info["loop"] == 0 and image.info["duration"] == 100
    for t in range(4):
        image.seek(t)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), frames[t])
    still = pil.open(io.BytesIO(encode_apng(frames[:1])))
    np.testing.assert_array_equal(np.asarray(still.convert("RGB")), frames[0])
    for bad in (frames[..., :2], frames.astype(np.float32), frames[:0]):
        with pytest.raises(ValueError, match="expected frames"):
            encode_apng(bad)


def test_leases_one_labeler_at_a_time_until_the_timeout(tmp_path):
    now = [0.0]
    service = LabelingService(write_pairs(tmp_path, 4), labeler_timeout=10, clock=lambda: now[0])
    try:
        a = service.next("ann")["query"]
        b = service.next("bob")["query"]
        assert a["id"] != b["id"]
        assert a["clips"] is None and len(a["plot"]["obs_1"]) == LENGTH  # no --env: a plot
        now[0] = 11.0  # both leases expired: the oldest query goes out again
        c = service.next("cy")["query"]
        assert c["id"] == a["id"]
        with pytest.raises(LabelingError, match="leased to another labeler") as err:
            service.answer([(a["id"], a["lease"], 1)], "ann")  # ann's lease expired, cy's holds
        assert err.value.status == 409
        # bob's expired lease is still good: nobody holds his query now.
        assert service.answer([(b["id"], b["lease"], 0)], "bob")["recorded"] == 1
        assert service.release([c["lease"]]) == 1
        assert service.answer([(a["id"], a["lease"], 0.5)], "ann")["status"]["labeled"] == 2
    finally:
        service.close()


def test_budget_counts_labels_and_leases_not_skips(tmp_path):
    service = LabelingService(write_pairs(tmp_path, 5), budget=2)
    try:
        first, second = (service.next("ann")["query"] for _ in range(2))
        assert service.next("ann")["query"] is None  # 0 labels + 2 leases = budget
        service.answer([(first["id"], first["lease"], "skip")], "ann")
        third = service.next("ann")["query"]  # a skip is no label: room for one more
        service.answer([(second["id"], second["lease"], 1)], "ann")
        service.answer([(third["id"], third["lease"], 0)], "ann")
        status = service.status("ann")
        assert status["done"] and status["labeled"] == 2 and status["yours"] == 2
        assert service.next("ann")["query"] is None
    finally:
        service.close()


def test_a_restart_writes_the_store_parts_a_crash_left_out(tmp_path):
    source = write_pairs(tmp_path, 4)
    service = LabelingService(source, store=tmp_path / "labels")
    queries = [service.next("ann")["query"] for _ in range(3)]
    ids = [q["id"] for q in queries]
    service.answer([(ids[0], queries[0]["lease"], 1)], "ann")
    service.close()
    # The server died after writing an answer file and before its store part.
    AsyncGatherer(tmp_path / "labels.queue").answer(ids[1:], [0.0, None], "bob")
    assert len(os.listdir(tmp_path / "labels")) == 1

    again = LabelingService(source, store=tmp_path / "labels")
    try:
        store = schemas.read_numpy(tmp_path / "labels")
        assert sorted(store["preference"]) == [0.0, 1.0]  # the skip is no label
        assert again.status()["labeled"] == 2 and again.status()["pending"] == 1
        fourth = again.next("ann")["query"]
        assert fourth["id"] not in ids  # answered: never served again
    finally:
        again.close()
    # The page that held the fourth query tells the next server so: its lease is
    # restored, and nobody else gets that query.
    later = LabelingService(source, store=tmp_path / "labels")
    try:
        taken = later.next("bob")["query"]  # nobody said they hold it: free
        assert taken["id"] == fourth["id"]
        later.release([taken["lease"]])
        held = [(fourth["id"], fourth["lease"])]
        assert later.next("ann", held)["query"] is None  # restored; nothing else pending
        assert later.next("bob")["query"] is None
        assert later.answer([(fourth["id"], fourth["lease"], 1)], "ann")["status"]["done"]
        assert len(os.listdir(tmp_path / "labels.queue" / "queries")) == 1  # not resubmitted
    finally:
        later.close()


def test_one_server_per_queue(tmp_path):
    source = write_pairs(tmp_path, 2)
    service = LabelingService(source)
    try:
        with pytest.raises(ValueError, match="one labeling server per queue"):
            LabelingService(source)
    finally:
        service.close()
    LabelingService(source).close()  # free again


def test_a_jobs_queue_gets_answers_its_loop_collects(tmp_path, serve):
    pytest.importorskip("pygame")
    from ray_rewards.preferences.fragments import take
    from ray_rewards.preferences.render import FragmentRenderer

    pairs = schemas.read_numpy(write_pairs(tmp_path, 3))
    pairs.pop("preference")
    job = AsyncGatherer(tmp_path / "queue", FragmentRenderer(ENV))  # the job's gatherer
    job.submit(take(pairs, [0, 1]))
    job.submit(take(pairs, [2]))
    with pytest.raises(ValueError, match="--store: only for a Parquet SOURCE"):
        LabelingService(tmp_path / "queue", store=tmp_path / "elsewhere")
    server, client = serve(LabelingService(tmp_path / "queue"))
    assert server.token is None and server.service.budget is None
    answered = {}
    for preference in (1, 0.5, "skip"):
        status, data = client.json("POST", "/api/next", {"labeler": "ann"})
        query = data["query"]
        status, clip = client.request("GET", query["clips"][1])  # the job's frames
        assert status == 200 and clip.startswith(b"\x89PNG")
        body = {"labeler": "ann", "query_id": query["id"], "lease": query["lease"]}
        assert client.json("POST", "/api/answer", {**body, "preference": preference})[0] == 200
        answered[query["id"]] = preference
    assert client.json("POST", "/api/next", {"labeler": "ann"})[1]["query"] is None
    labeled, labels = job.collect()
    assert dict(zip(labeled["query_id"], labels)) == {
        q: p for q, p in answered.items() if p != "skip"
    }


def test_bad_requests_get_4xx_and_change_nothing(tmp_path, serve):
    service = LabelingService(write_pairs(tmp_path, 3), store=tmp_path / "labels")
    server, client = serve(service, token="s3cret")
    status, data = client.json("POST", "/api/next", {"labeler": "ann"})
    query = data["query"]
    good = {"labeler": "ann", "query_id": query["id"], "lease": query["lease"], "preference": 1}
    assert client.json("POST", "/api/answer", good)[0] == 200
    other = client.json("POST", "/api/next", {"labeler": "ann"})[1]["query"]
    before = snapshot(tmp_path / "labels", tmp_path / "labels.queue")

    def other_answer(**changes):
        return {"labeler": "ann", "query_id": other["id"], "lease": other["lease"]} | changes

    anonymous = Client(client.url)
    wrong = Client(client.url, token="guess")
    cases = [
        (anonymous.json("GET", "/api/status"), 401, "unauthorized"),
        (anonymous.json("POST", "/api/answer", other_answer(preference=1)), 401, "unauthorized"),
        (wrong.json("GET", "/"), 401, "unauthorized"),
        (anonymous.json("GET", f"/clip/{other['id']}/1.png"), 401, "unauthorized"),
        (client.json("POST", "/api/answer", good), 409, "already_answered"),  # replayed
        (client.json("POST", "/api/answer", good | {"lease": None}), 409, "already_answered"),
        (client.json("POST", "/api/answer", good | {"query_id": "feed-000001"}), 404, None),
        (client.json("POST", "/api/answer", other_answer(preference=0.3)), 400, "bad_preference"),
        (client.json("POST", "/api/answer", other_answer(preference=True)), 400, None),
        (client.json("POST", "/api/answer", other_answer(preference="1")), 400, None),
        (client.json("POST", "/api/answer", other_answer(preference=1, labeler=" ")), 400, None),
        (client.json("POST", "/api/answer", other_answer(preference=1, labeler=7)), 400, None),
        (client.json("POST", "/api/answer", {"labeler": "ann", "preference": 1}), 400, None),
        (client.json("POST", "/api/answer", {"labeler": "ann", "answers": []}), 400, None),
        (
            client.json(
                "POST",
                "/api/answer",
                {"labeler": "ann", "answers": [other_answer(preference=1), good]},
            ),
            409,  # all or nothing: the good half of the batch is not written either
            "already_answered",
        ),
        (
            client.json("POST", "/api/answer", raw=b'{"labeler": "ann", "preference": NaN'),
            400,
            None,
        ),
        (
            client.json(
                "POST",
                "/api/answer",
                raw=json.dumps(other_answer()).replace("}", ', "preference": NaN}').encode(),
            ),
            400,
            "bad_json",
        ),
        (client.json("POST", "/api/answer", raw=b"[1, 2]"), 400, "bad_json"),
        (client.json("POST", "/api/answer", raw=b"\xff\xfe"), 400, "bad_json"),
        (
            client.json(
                "POST",
                "/api/answer",
                raw=json.dumps(other_answer(preference=1)).encode(),
                headers={"Content-Type": "text/plain"},
            ),
            415,
            None,
        ),
        (client.json("POST", "/api/answer", raw=b"x" * 70_000), 413, "too_large"),
        (client.json("GET", "/api/answer"), 405, None),
        (client.json("GET", "/etc/passwd"), 404, "not_found"),
        (client.json("GET", "/clip/..%2F..%2F..%2Fetc%2Fpasswd/1.png"), 400, "bad_clip_path"),
        (client.json("GET", "/clip/%2e%2e/1.png"), 400, "bad_clip_path"),
        (client.json("GET", f"/clip/{other['id']}/3.png"), 400, "bad_clip_path"),
        (client.json("GET", "/clip/feed-000001/1.png"), 404, "unknown_query"),
        (client.json("GET", f"/clip/{other['id']}/1.png"), 404, "no_frames"),  # no --env
        (client.json("POST", "/api/release", {"leases": "all"}), 400, None),
    ]
    # A path with dot segments as it stands (urllib would send it that way too).
    port = server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "GET", "/clip/../../../etc/passwd", headers={"Authorization": "Bearer s3cret"}
    )
    response = connection.getresponse()
    cases.append(((response.status, json.loads(response.read())), 400, "bad_clip_path"))
    for i, ((status, body), expected, code) in enumerate(cases):
        assert status == expected, (i, status, body)
        assert isinstance(body["error"], str) and body["error"], (i, body)
        assert code is None or body["code"] == code, (i, body)
    assert snapshot(tmp_path / "labels", tmp_path / "labels.queue") == before
    # The other query is still answerable after all that.
    assert client.json("POST", "/api/answer", other_answer(preference=0))[0] == 200
    assert sorted(schemas.read_numpy(tmp_path / "labels")["preference"]) == [0.0, 1.0]


def test_token_cookie_and_hosts(tmp_path, serve):
    source = write_pairs(tmp_path, 2)
    # Any address but loopback: a token is made and required.
    server, client = serve(LabelingService(source, store=tmp_path / "a"), host="0.0.0.0")
    assert server.token and server.login_url.endswith(f"?token={server.token}")
    assert Client(client.url).json("GET", "/api/status")[0] == 401
    assert client.json("GET", "/api/status")[0] == 200
    # The page's link sets a cookie (and leaves the address bar) ...
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.request("GET", f"/?token={server.token}")
    response = connection.getresponse()
    response.read()
    assert response.status == 303 and response.getheader("Location") == "/"
    cookie = response.getheader("Set-Cookie").split(";")[0]
    assert "HttpOnly" in response.getheader("Set-Cookie")
    # ... which then opens everything.
    assert Client(client.url).json("GET", "/api/status", headers={"Cookie": cookie})[0] == 200
    status, page = Client(client.url).request("GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b"Which fragment is better?" in page

    # Loopback without a token: only requests that name a loopback host (DNS rebinding).
    _, local = serve(LabelingService(source, store=tmp_path / "b"))
    assert local.json("GET", "/api/status")[0] == 200
    status, body = local.json("GET", "/api/status", headers={"Host": "evil.example:80"})
    assert status == 403 and body["code"] == "bad_host"


def test_command_reports_bad_sources(tmp_path):
    runner = CliRunner()
    result = runner.invoke(label, [str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such file or directory" in result.output
    (tmp_path / "other").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other" / "part.parquet")
    result = runner.invoke(label, [str(tmp_path / "other")])
    assert result.exit_code == 1 and "neither a queue folder" in result.output
    assert "Traceback" not in result.output
