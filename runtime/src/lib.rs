//! Inference runtime (issue: runtime). Not implemented yet.
