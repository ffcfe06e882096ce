"""Steps 11 and 13: delivery latency through the long-poll path, spread out and in a burst.

Latency is from the moment the orchestrator starts the send call to the moment the worker's
wait_for_messages returns it; the containers share the host's clock.
"""

from __future__ import annotations

import os
import random
import time

import lab
import pytest

SPAN_S = float(os.environ.get("S2_LATENCY_SPAN_S", "180"))  # "over a few minutes"
SPREAD_MESSAGES = 30
BURST_MESSAGES = 10


def latencies(plan_calls: list[dict], sent: list[dict], received: list[dict]) -> dict[int, float]:
    """Latency in seconds per message number (the `#n` at the end of its text)."""

    def number(text: str) -> int:
        return int(text.rsplit("#", 1)[1])

    started = {number(plan_calls[r["index"]]["args"]["message"]): r["t0"] for r in sent if r["ok"]}
    return {number(m["message"]): m["received_at"] - started[number(m["message"])] for m in received}


def deliver(workers_by_message: list[lab.Worker], tag: str, offsets: list[float], concurrent: bool) -> dict[int, float]:
    counts: dict[str, int] = {}
    for worker in workers_by_message:
        counts[worker.worker_id] = counts.get(worker.worker_id, 0) + 1
    targets = {w.worker_id: w for w in workers_by_message}
    deadline = max(offsets) + 60
    listeners = [lab.Listener(targets[i], f"{tag} #", count=n, deadline_s=deadline) for i, n in counts.items()]
    time.sleep(0.5)
    start_at = time.time() + 1.0
    calls = [
        {**lab.coordinator_call(worker, "send_to_partner", message=f"{tag} #{n}"), "at": start_at + offsets[n]}
        for n, worker in enumerate(workers_by_message)
    ]
    sent = lab.run_calls(lab.ORCHESTRATOR, lab.orchestrator_plan(calls, concurrent=concurrent), timeout=deadline + 60)
    assert all(r["ok"] for r in sent), [r for r in sent if not r["ok"]][:3]
    received = [m for listener in listeners for m in listener.messages()]
    result = latencies(calls, sent, received)
    assert sorted(result) == list(range(len(workers_by_message))), f"missing: {set(range(len(calls))) - set(result)}"
    return result


@pytest.mark.step(11, "delivery latency, 30 messages over minutes")
def test_11_latency_of_messages_to_random_workers(report, workers, run_tag):
    rng = random.Random(run_tag)
    chosen = [rng.choice(workers) for _ in range(SPREAD_MESSAGES)]
    offsets = sorted(rng.uniform(0, SPAN_S) for _ in range(SPREAD_MESSAGES))
    result = deliver(chosen, f"{run_tag} latency", offsets, concurrent=False)
    values = list(result.values())
    p50, p99 = lab.percentile(values, 0.5), lab.percentile(values, 0.99)
    report.figure(
        "11",
        f"{len(values)} messages to {len({w.worker_id for w in chosen})} workers over {SPAN_S:.0f} s: "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(values) * 1000:.0f} ms",
        target="p99 < 1 s across containers",
        met=p99 < 1.0,
    )


@pytest.mark.step(13, "burst: 10 messages at once to one worker")
def test_13_burst_to_one_worker(report, by_id, run_tag):
    one = by_id["1"]
    result = deliver([one] * BURST_MESSAGES, f"{run_tag} burst-one", [0.0] * BURST_MESSAGES, concurrent=True)
    per_message = [result[n] * 1000 for n in range(BURST_MESSAGES)]
    report.figure(
        "13",
        f"{BURST_MESSAGES} messages to worker 1 at once, per-message latency ms: "
        + ", ".join(f"{v:.0f}" for v in per_message)
        + f" (max {max(per_message):.0f})",
        target="each < 1 s",
        met=max(per_message) < 1000,
    )
