//! Typed Skiff client with endpoint failover, and informers (list + watch + cache).
//!
//! Not built yet (see the "API server" and "CLI" issues).
