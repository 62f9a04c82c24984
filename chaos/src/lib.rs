//! Fault injection, workload generators, history recording and checkers.
//!
//! Not built yet (see the "Chaos harness" issue).
