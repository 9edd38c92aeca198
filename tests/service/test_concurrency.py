"""8 concurrent clients x 25 asks with random cancels: exactly one terminal message per job."""

from __future__ import annotations

import random
import threading
import time

import pytest

from lrs_focus import protocol as P
from lrs_focus.client import Client, ServiceError

N_CLIENTS, N_ASKS = 8, 25


@pytest.mark.slow
def test_concurrent_clients_with_random_cancels(make_server, fake):
    engine = fake.FakeEngine(stage_s=0.003)
    server = make_server(engine=engine, queue_size=4)  # < 8 clients: some asks meet `busy`
    outcomes: dict[str, str] = {}
    late: list[dict] = []
    busy = [0]
    failures: list[BaseException] = []
    lock = threading.Lock()

    def run_client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with Client(server.endpoint, timeout_s=10) as client:
                for i in range(N_ASKS):
                    while True:
                        try:
                            acc = client.submit("/a.tif", f"client {seed} ask {i}")
                            break
                        except ServiceError as exc:
                            assert exc.code == P.BUSY, exc.code
                            with lock:
                                busy[0] += 1
                            time.sleep(rng.uniform(0.001, 0.01))
                    cancel_at = time.monotonic() + rng.uniform(0, 0.04) if rng.random() < 0.35 else None
                    try:
                        result = client.wait(acc, should_cancel=(lambda t=cancel_at: t is not None and time.monotonic() > t))
                        outcome = "result"
                        assert result["job_id"] == acc["job_id"]
                    except ServiceError as exc:
                        assert exc.code in (P.CANCELLED,), exc.code
                        assert exc.reply["job_id"] == acc["job_id"]
                        outcome = exc.code
                    with lock:
                        assert acc["job_id"] not in outcomes, "job id reused"
                        outcomes[acc["job_id"]] = outcome
                # after everything: nothing about a finished job may still arrive, except cancel acks
                while (msg := client.receive(0.3)) is not None:
                    late.append(msg)
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run_client, args=(seed,)) for seed in range(N_CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert not failures, failures[0]
    assert len(outcomes) == N_CLIENTS * N_ASKS
    assert [m for m in late if m["type"] != "cancelling"] == [], "a job got more than one terminal message"
    with Client(server.endpoint, timeout_s=5) as c:
        status = c.status()
    assert status["jobs_done"] == N_CLIENTS * N_ASKS and status["queued"] == [] and status["running"] is None
    assert engine.max_active == 1, "jobs must run one at a time"
    n_cancel = sum(o == "cancelled" for o in outcomes.values())
    print(f"{len(outcomes)} jobs in {elapsed:.1f} s: {len(outcomes) - n_cancel} results, {n_cancel} cancelled, "
          f"{busy[0]} busy replies")
    assert 0 < n_cancel < len(outcomes)
