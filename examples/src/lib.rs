//! Runnable examples of the outbox toolkit; see the `examples/` folder.
