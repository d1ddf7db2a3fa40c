"""The HTTP server: a real server on a free loopback port, a real HTTP client."""

import json
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def server(trained_run):
    """The app of ``cln-textgen serve`` on a free loopback port, in a thread."""
    import uvicorn

    from cln_textgen.commands.serve import open_socket
    from cln_textgen.generation.generator import TextGenerator
    from cln_textgen.serving.app import build_app
    from cln_textgen.serving.service import GenerationService, Limits

    service = GenerationService(TextGenerator.from_run(trained_run), trained_run,
                                Limits(max_n=8, max_new_tokens=60, max_body_bytes=2048))
    sock = open_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield url, service
    server.should_exit = True
    thread.join(timeout=10)


def post(url, path, body, **kwargs):
    return httpx.post(url + path, json=body, timeout=60, **kwargs)


def read_events(response):
    """``[(event, data), ...]`` of a server-sent event stream, read to its end."""
    events, block = [], {}
    for line in response.iter_lines():
        if not line:
            events.append((block["event"], json.loads(block["data"])))
            block = {}
        else:
            key, _, value = line.partition(": ")
            block[key] = value
    return events


def test_health_and_labels(server, trained_run):
    url, _ = server
    assert httpx.get(url + "/health").json()["status"] == "ok"
    info = httpx.get(url + "/v1/labels").json()
    assert info["labels"] == json.loads((trained_run / "labels.json").read_text()) and len(info["labels"]) == 2
    assert info["run"] == str(trained_run)
    assert info["step"] > 0 and info["defaults"]["max_new_tokens"] == 12
    assert info["null_condition"] is True  # the test run trains with label dropout
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "/v1/generate/stream" in page.text


def test_generate_equals_the_cli(server, trained_run, capsys):
    from cln_textgen.cli import main

    url, _ = server
    body = {"label": "all", "n": 2, "prompt": "这", "seed": 7, "top_k": 5, "temperature": 0.9}
    answer = post(url, "/v1/generate", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    labels = server[1].generator.labels
    assert [t["label"] for t in data["texts"]] == [labels[0]] * 2 + [labels[1]] * 2
    assert data["options"]["top_k"] == 5 and data["options"]["seed"] == 7
    assert data["run"] == str(trained_run) and data["step"] > 0
    assert all(t["text"].startswith("这") for t in data["texts"])
    capsys.readouterr()
    assert main(["generate", "--run", str(trained_run), "--label", "all", "-n", "2",
                 "--prompt", "这", "--seed", "7", "--top-k", "5", "--temperature", "0.9",
                 "--format", "jsonl"]) == 0
    cli = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert [t["text"] for t in data["texts"]] == cli


def test_a_guided_mix_equals_the_cli(server, trained_run, capsys):
    from cln_textgen.cli import main

    url, service = server
    a, b = service.generator.labels
    body = {"label": {a: 0.3, b: 0.7}, "n": 2, "seed": 3, "guidance": 2.0}
    answer = post(url, "/v1/generate", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert [t["mix"] for t in data["texts"]] == [{a: 0.3, b: 0.7}] * 2
    assert data["texts"][0]["label"] == f"{a}=0.3,{b}=0.7" and data["options"]["guidance"] == 2
    capsys.readouterr()
    assert main(["generate", "--run", str(trained_run), "--label", f"{a}=0.3,{b}=0.7", "-n", "2",
                 "--seed", "3", "--guidance", "2", "--format", "jsonl"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [t["text"] for t in data["texts"]] == [c["text"] for c in cli]
    assert cli[0]["mix"] == {a: 0.3, b: 0.7} and cli[0]["options"]["guidance"] == 2.0


@pytest.mark.parametrize("body, status, field", [
    ({"label": "neutral"}, 422, "label"),
    ({"n": 1}, 422, "label"),
    ({"label": 1}, 422, "label"),
    ({"label": "L", "temperature": -1}, 422, "temperature"),
    ({"label": "L", "top_k": "many"}, 422, "top_k"),
    ({"label": "L", "greedy": "yes"}, 422, "greedy"),
    ({"label": "L", "tempreature": 1}, 422, "tempreature"),
    ({"label": "L", "n": 9}, 422, "n"),
    ({"label": "L", "n": 2, "greedy": True}, 422, "n"),
    ({"label": "L", "min_new_tokens": 20, "max_new_tokens": 10}, 422, None),
    ({"label": "L", "max_new_tokens": 61}, 422, "max_new_tokens"),
    ({"label": "L", "prompt": "这" * 40, "max_new_tokens": 40}, 422, None),
    ({"label": "L", "prompt": "长" * 3000}, 413, None),
    (["L"], 422, None),
    ({"label": {"L": 0.5}}, 422, "label"),
    ({"label": {"L": "half"}}, 422, "label"),
    ({"label": "L", "guidance": -1}, 422, "guidance"),
    ({"label": "L", "guidance": 2, "negative_label": "neutral"}, 422, "negative_label"),
    ({"label": "L", "negative_label": "L"}, 422, "negative_label"),
    ({"label": "L", "guidance": 2, "negative_label": 0}, 422, "negative_label"),
])
def test_bad_requests_are_json_errors_naming_the_field(server, body, status, field):
    url, service = server
    name = service.generator.labels[1]
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"L"', json.dumps(name)))
    for path in ("/v1/generate", "/v1/generate/stream"):
        answer = post(url, path, body)
        assert answer.status_code == status, answer.text
        error = answer.json()
        assert error["field"] == field and error["error"]


def test_malformed_body_unknown_path_and_method(server):
    url, _ = server
    answer = httpx.post(url + "/v1/generate", content=b"{not json", timeout=30)
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    assert httpx.get(url + "/v2/nothing").status_code == 404
    assert httpx.get(url + "/v2/nothing").json()["error"]
    assert httpx.get(url + "/v1/generate").status_code == 405
    assert httpx.get(url + "/v1/generate").json()["error"]


def test_stream_pieces_join_to_the_final_texts(server):
    url, _ = server
    body = {"label": "all", "n": 2, "prompt": "这", "seed": 3}
    with httpx.stream("POST", url + "/v1/generate/stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    assert events[-1][0] == "done"
    final = events[-1][1]
    assert final == post(url, "/v1/generate", body).json()
    pieces = {}
    ended = set()
    for name, data in events[:-1]:
        assert data["label"] == final["texts"][data["row"]]["label"]
        if name == "text":
            assert data["row"] not in ended
            pieces[data["row"]] = pieces.get(data["row"], "") + data["text"]
        else:
            assert name == "end"
            ended.add(data["row"])
    assert ended == set(range(4))
    for row, sample in enumerate(final["texts"]):
        assert "这" + pieces.get(row, "") == sample["text"]


def test_eight_concurrent_clients_share_steps_and_get_their_texts_alone(server):
    url, service = server
    # Other options, prompts, lengths and guidance beside each other.
    bodies = [{"label": service.generator.labels[i % 2], "n": 1 + i % 3, "seed": i,
               "prompt": "这" * (i % 3), "max_new_tokens": 8 + 3 * i, "min_new_tokens": 8,
               **[{}, {"top_k": 5}, {"guidance": 2.0}, {"top_p": 0.8, "temperature": 0.7},
                  {"greedy": True, "n": 1, "no_repeat_ngram": 2}][i % 5]} for i in range(8)]
    expected = [post(url, "/v1/generate", body).json() for body in bodies]
    alone = service.batch_counts()
    answers = [None] * 8

    def client(i):
        answers[i] = post(url, "/v1/generate", bodies[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 8
    assert [a.json() for a in answers] == expected
    together = service.batch_counts()
    steps = together["steps"] - alone["steps"]
    assert steps < 0.7 * alone["steps"], (alone, together)  # the rows shared their steps
    assert together["largest"] > alone["largest"]


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    url, service = server
    before = service.counts()
    body = {"label": "all", "n": 8, "max_new_tokens": 60, "min_new_tokens": 60}
    with httpx.stream("POST", url + "/v1/generate/stream", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # one piece, then hang up
    for _ in range(200):
        counts = service.counts()
        if counts["cancelled"] > before["cancelled"] and counts["queued"] == 0:
            break
        time.sleep(0.05)
    assert counts["cancelled"] == before["cancelled"] + 1
    assert counts["queued"] == 0
    assert post(url, "/v1/generate", {"label": "all"}).status_code == 200


@pytest.mark.slow
def test_the_serve_command(trained_run, tmp_path):
    """``cln-textgen serve --port 0`` prints its address and answers there."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cln_textgen", "serve", "--run", str(trained_run), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if "serving" not in line:
            process.wait(timeout=30)
            pytest.fail(f"the server did not start: {line}{process.stderr.read()}")
        url = line.split(" on ")[1].strip().rstrip("/")
        assert url.startswith("http://127.0.0.1:")
        answer = post(url, "/v1/generate", {"label": "all", "n": 1, "seed": 1})
        assert answer.status_code == 200 and len(answer.json()["texts"]) == 2
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_command_errors_are_one_line(trained_run, capsys):
    import socket

    from cln_textgen.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        assert main(["serve", "--run", str(trained_run), "--port", str(port)]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and f"--port {port}" in error
    finally:
        taken.close()
    assert main(["serve", "--run", str(trained_run), "--max-n", "0"]) == 2
    assert "--max-n" in capsys.readouterr().err
