//! Shared process-level harness for the integration tests.
