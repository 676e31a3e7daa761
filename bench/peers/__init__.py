"""The dispatcher's peers: other ways to send the same notifications, in the same harness."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PeerResult"]


@dataclass
class PeerResult:
    name: str
    recipients: int
    deliveries: int
    seconds: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0
