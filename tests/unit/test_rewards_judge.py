"""The judge reward against a local OpenAI-compatible stub: batching, caching, time-outs, templates."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reinforced.rewards import REWARDS, RewardComposer
from reinforced.rewards.judge import _CACHE
from reinforced.types import Completion, Prompt, RolloutGroup

CALLS: list[str] = []


class Stub(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        CALLS.append(content)
        if "SLOW" in content:
            time.sleep(1.0)
        if "Using only this reasoning" in content:
            reply = "7"
        else:
            reply = "Score: 1" if "Student answer:\n4\n" in content else "0"
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_judge_batch_cache_and_timeout(url):
    _CACHE.clear()
    CALLS.clear()
    p = Prompt("p", "2+2?", answer="4")
    texts = ["<answer>4</answer>", "<answer>5</answer>", "<answer>4</answer>", "<answer>SLOW</answer>"]
    out = REWARDS["judge"].batch(texts, [p] * 4, model="m", url=url, timeout_s=0.3)
    assert [r.score for r in out[:3]] == [1.0, 0.0, 1.0]
    assert out[3].score is None and "judge call failed" in out[3].info["error"]
    n = len(CALLS)
    assert n == 3  # the two identical "4" prompts are asked once
    again = REWARDS["judge"]("<answer>4</answer>", p, model="m", url=url)
    assert again.score == 1.0 and len(CALLS) == n  # served from the cache


def test_judge_template_and_errors(url):
    p = Prompt("p", "q", answer="4")
    r = REWARDS["judge"]("<answer>4</answer>", p, model="m", url=url, template="Student answer:\n{answer}\n")
    assert r.score == 1.0
    with pytest.raises(ValueError, match="placeholder 'gold' unknown"):
        REWARDS["judge"]("x", p, model="m", url=url, template="{gold}")
    dead = REWARDS["judge"]("<answer>4</answer>", p, model="m", url="http://127.0.0.1:9/v1", timeout_s=0.5)
    assert dead.score is None


def test_judge_through_composer_and_consistency_judge(url):
    _CACHE.clear()
    terms = [{"name": "math_answer", "accuracy": True},
             {"name": "judge", "weight": 0.5, "params": {"model": "m", "url": url}}]
    with RewardComposer(terms, timeout_s=5.0) as comp:
        comps = tuple(Completion(t, (1,), (0.0,), "stop") for t in ["<answer>4</answer>", "<answer>5</answer>"])
        [g], stats = comp.score([RolloutGroup(Prompt("p", "2+2?", answer="4"), comps)])
    assert g.components["judge"] == (1.0, 0.0)
    assert g.rewards == pytest.approx((1.5, 0.0)) and stats["reward/judge"] == 0.5
    r = REWARDS["consistency"]("<think>long work</think><answer>7</answer>", Prompt("p", "q"), judge_url=url)
    assert r.score == 1.0 and r.info["stated"] == "7"
