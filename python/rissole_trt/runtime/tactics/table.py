"""The tactic table: per layer and bucket the chosen candidate and every candidate's measurement,
and its JSON form (``tactics.json`` of a built engine)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TacticTable:
    """Per layer and bucket (rows per call): the chosen candidate and what every candidate measured."""

    precision: str
    layers: dict[str, dict[str, dict]] = field(default_factory=dict)  # layer -> str(rows) -> record
    # str(rows) -> {"chosen": rows per call, "ms": {str(rows per call): ms of the whole network}}
    calls: dict[str, dict] = field(default_factory=dict)

    def choice(self, layer: str, rows: int) -> str:
        return self.layers[layer][str(rows)]["chosen"]

    def rows_per_call(self, rows: int) -> int:
        """How many rows one call of the network takes when ``rows`` arrive (``rows``: no split)."""
        return int(self.calls.get(str(rows), {}).get("chosen", rows))

    def to_dict(self) -> dict:
        return {"precision": self.precision, "layers": self.layers, "calls": self.calls}

    @classmethod
    def from_dict(cls, doc: dict) -> "TacticTable":
        return cls(doc["precision"], doc["layers"], doc["calls"])

    def decisions(self) -> dict[str, dict[str, dict]]:
        """Per layer and bucket: what was chosen and why (the fastest within tolerance; the runner-up
        within tolerance, and the candidates that were faster but outside the tolerance)."""
        out: dict[str, dict[str, dict]] = {}
        for layer, per_rows in self.layers.items():
            for rows, record in per_rows.items():
                timed = record["candidates"]
                chosen = record["chosen"]
                ok = sorted((c for c, r in timed.items() if r["excess"] <= 1.0), key=lambda c: timed[c]["ms"])
                runner_up = next((c for c in ok if c != chosen), None)
                out.setdefault(layer, {})[rows] = {
                    "chosen": chosen, "ms": timed[chosen]["ms"],
                    "runner_up": runner_up, "runner_up_ms": None if runner_up is None else timed[runner_up]["ms"],
                    "faster_outside_tolerance": sorted(c for c, r in timed.items()
                                                       if r["excess"] > 1.0 and r["ms"] < timed[chosen]["ms"])}
        return out

    def summary(self) -> dict[str, int]:
        """How many (layer, bucket) pairs each candidate won."""
        counts: dict[str, int] = {}
        for per_rows in self.layers.values():
            for record in per_rows.values():
                counts[record["chosen"]] = counts.get(record["chosen"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
