//! Telemetry: counters for ops tooling (Prometheus, JSON, terminal).
