"""Typed results of a run: what stages, artifacts and checks produce, and the report that holds them.

``report.json`` is :class:`RunReport` dumped with the keys each part set (``schema_version`` 1: the
keys are those of the untyped report before these types existed). The writers, the sweep, the CLI and
the API read these types, or ``report.json`` validated back into them.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
# a run's status -> the exit code of the command that ran it (the CLI's documented codes)
STATUS_EXIT = {"ok": 0, "failed_checks": 1, "over_budget": 1, "int8_not_faster": 3}


class _Open(BaseModel):
    """Declared keys are checked; facts a runtime or a stage adds beside them are kept as they are."""

    model_config = ConfigDict(extra="allow")


class CheckResult(BaseModel):
    """One pass/fail statement about an artifact."""

    name: str
    ok: bool
    detail: str
    kind: str = "artifact"  # artifact | budget (the accuracy the whole run may spend: status over_budget)


class LatencyRecord(_Open):
    """An artifact's timing on one device (batch 1 and throughput), measured interleaved with the others."""

    device: str
    threads: int | None = None
    batch1: dict | None = None
    throughput: dict | None = None
    load_average: list[float | None] | None = None


class ArtifactResult(_Open):
    """A row of the report: the PyTorch reference, a simulated model, or an exported artifact."""

    name: str
    file: str | None = None
    format: str
    precision: str
    runtime: str
    size_bytes: int | None = None
    export: dict | None = None
    simulated_by: str | None = None
    accuracy: dict | None = None
    parity: dict | None = None
    latency: list[LatencyRecord] = Field(default_factory=list)
    reference: bool | None = None
    not_measured: str | None = None
    placement: dict | None = None  # INT8 artifacts: where INT8 runs and why (edgevit.stages.placement.Placement)


class StageRecord(_Open):
    """What a stage did (the report section of its name: pruning, tokens, quantization)."""

    seconds: float | None = None


class RunReport(_Open):
    """Everything a run reports (written as report.json, report.md and report.html)."""

    schema_version: int = SCHEMA_VERSION
    edgevit_version: str
    recipe: str
    description: str = ""
    seed: int = 0
    status: str
    model: dict
    data: dict
    pruning: StageRecord | None = None
    tokens: StageRecord | None = None
    quantization: StageRecord | None = None
    fp16_layernorm: dict | None = None
    results: list[ArtifactResult]
    checks: list[CheckResult]
    # FP16 / BF16 / INT8 artifacts timed on their own runtime that no "not slower than FP32" check judged (no FP32
    # artifact of that runtime beside them): one sentence each; the status line says them after "SPEED NOT CHECKED"
    speed_not_checked: list[str] = Field(default_factory=list)
    environment: dict
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain mapping with the keys that were set (report.json is this, with non-finite
        numbers written as null)."""
        return self.model_dump(exclude_unset=True)


def report_schema() -> dict[str, Any]:
    """The JSON schema of ``report.json`` (its stable keys: what :class:`RunReport` declares; stages and
    runtimes may add keys beside them)."""
    schema = RunReport.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"edgevit report.json (schema_version {SCHEMA_VERSION})"
    return schema
