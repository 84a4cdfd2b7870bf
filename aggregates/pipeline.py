"""Sales pipelines: their stages, win probabilities and allowed moves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    probability: int


@dataclass(frozen=True)
class Pipeline:
    """Stages in order. A deal moves forward any number of stages, or back one."""

    name: str
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    def allowed_moves(self, current: str) -> list[str]:
        i = self.index(current)
        back = [self.stages[i - 1].name] if i > 0 else []
        return back + [s.name for s in self.stages[i + 1 :]]


PIPELINES: dict[str, Pipeline] = {
    "default": Pipeline(
        "default",
        (
            Stage("qualification", 10),
            Stage("needs_analysis", 25),
            Stage("proposal", 50),
            Stage("negotiation", 75),
        ),
    ),
    "renewal": Pipeline(
        "renewal",
        (
            Stage("review", 40),
            Stage("offer", 70),
            Stage("commitment", 90),
        ),
    ),
}
LOSS_REASONS = ("price", "competitor", "no_budget", "no_decision", "timing", "product_fit", "other")
