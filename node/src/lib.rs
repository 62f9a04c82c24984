//! The node daemon: agent loop, container runtime (libcontainer, out of process),
//! images, volumes, probes, logs and pod network.
//!
//! Not built yet (see the "Node daemon" issue).
