//! Training pipeline (issue: trainer). Not implemented yet.
