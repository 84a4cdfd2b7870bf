"""A real Kafka-protocol broker for tests, and an independent reader of what it holds.

The broker is librdkafka's mock cluster (from the ``confluent-kafka`` wheel) in a
subprocess of its own, so a test can stall it (SIGSTOP/SIGCONT) or stop it. What
downstream systems see is read with a confluent-kafka consumer, not with our code.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

_BROKER = """
import sys
import confluent_kafka
producer = confluent_kafka.Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "",
                                     "log_level": 0})
broker = next(iter(producer.list_topics(timeout=5).brokers.values()))
print(f"{broker.host}:{broker.port}", flush=True)
sys.stdin.read()  # until the test process closes our stdin (or dies)
"""


class MockBroker:
    """One mock Kafka broker in a subprocess; ``address`` is its host:port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BROKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            # Never skip: without a broker these tests prove nothing.
            pytest.fail(f"the mock Kafka broker did not start: {err[-2000:]}", pytrace=False)
        self.address = line

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, bytes]

    @property
    def envelope(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.value)
        return loaded


def read_all(address: str, topics: list[str], *, timeout: float = 60.0) -> list[Record]:
    """Every record on ``topics``, read by a confluent-kafka consumer from the start of
    each partition to its end (high watermark) as it is when called."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": address,
        "group.id": f"test-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "log_level": 0,
    })
    out: list[Record] = []
    try:
        # Partitions assigned directly (no group rebalance to wait for); a topic that
        # does not exist has none and is read as empty.
        metadata = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                      if t in metadata.topics for p in metadata.topics[t].partitions]
        marks = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)
                 for tp in partitions}
        # The mock broker keeps about 5 MB per partition and drops older records: a test
        # that writes more could not tell a loss from that.
        dropped = {k: low for k, (low, _) in marks.items() if low > 0}
        assert not dropped, f"the mock broker dropped old records (retention): {dropped}"
        ends = {k: high for k, (_, high) in marks.items()}
        todo = {k for k, end in ends.items() if end > 0}
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, f"partitions not read to their end: {sorted(todo)}"
            for m in consumer.consume(num_messages=5000, timeout=0.5):
                if m.error():
                    continue
                out.append(Record(m.topic(), m.partition(), m.offset(), m.key().decode(),
                                  m.value(), {k: v for k, v in (m.headers() or [])}))
                if m.offset() + 1 >= ends[(m.topic(), m.partition())]:
                    todo.discard((m.topic(), m.partition()))
    finally:
        consumer.close()
    return out
