//! The scheduler and the controllers that run on the raft leader.
//!
//! Not built yet (see the "Scheduler and controllers" issue).
