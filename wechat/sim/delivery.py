"""Simulator notification delivery: after the triggering request has finished,
a background thread POSTs signed callbacks to ``notify_url`` and retries on
non-2xx following WeChat's schedule, compressed by ``time_scale``."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

log = logging.getLogger(__name__)

# WeChat's documented retry schedule (seconds): 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h.
WECHAT_RETRY_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)

Transport = Callable[[str, dict[str, str], bytes], int]
Signer = Callable[[bytes], dict[str, str]]


@dataclass
class Delivery:
    url: str
    body: bytes
    event_type: str
    notification_id: str
    attempts: int = 0
    statuses: list[int] = field(default_factory=list)
    delivered: bool = False
    abandoned: bool = False


def requests_transport(session: requests.Session | None = None, timeout_s: float = 5.0) -> Transport:
    """POST with requests; a connection error counts as status 0."""
    session = session or requests.Session()

    def post(url: str, headers: dict[str, str], body: bytes) -> int:
        try:
            return session.post(url, data=body, headers=headers, timeout=timeout_s).status_code
        except requests.RequestException as exc:
            log.info("simulator notify to %s failed: %s", url, exc)
            return 0

    return post


class NotificationDispatcher:
    """A heap of due deliveries drained by one daemon thread."""

    def __init__(
        self,
        signer: Signer,
        transport: Transport | None = None,
        initial_delay_s: float = 0.2,
        retry_schedule_s: tuple[float, ...] = WECHAT_RETRY_SCHEDULE_S,
        time_scale: float = 0.01,
    ) -> None:
        self.signer = signer
        self.transport = transport or requests_transport()
        self.initial_delay_s = initial_delay_s
        self.retry_schedule_s = retry_schedule_s
        self.time_scale = time_scale
        self.deliveries: list[Delivery] = []
        self._heap: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._stopped = False

    def schedule(self, delivery: Delivery, delay_s: float | None = None) -> Delivery:
        due = time.monotonic() + (self.initial_delay_s if delay_s is None else delay_s)
        with self._cond:
            if delivery not in self.deliveries:
                self.deliveries.append(delivery)
            heapq.heappush(self._heap, (due, next(self._seq), delivery))
            self._ensure_thread()
            self._cond.notify_all()
        return delivery

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Block until nothing is pending or in flight (tests and demos)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._heap or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="wechat-sim-notify", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            delivery = self._next_due()
            if delivery is None:
                return
            try:
                self._attempt(delivery)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _next_due(self) -> Delivery | None:
        with self._cond:
            while not self._stopped:
                if self._heap and self._heap[0][0] <= time.monotonic():
                    self._in_flight += 1
                    return heapq.heappop(self._heap)[2]
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                self._cond.wait(wait)
            return None

    def _attempt(self, delivery: Delivery) -> None:
        headers = {"Content-Type": "application/json", **self.signer(delivery.body)}
        status = self.transport(delivery.url, headers, delivery.body)
        delivery.attempts += 1
        delivery.statuses.append(status)
        if 200 <= status < 300:
            delivery.delivered = True
            return
        index = delivery.attempts - 1
        if index >= len(self.retry_schedule_s):
            delivery.abandoned = True
            return
        self.schedule(delivery, self.retry_schedule_s[index] * self.time_scale)
