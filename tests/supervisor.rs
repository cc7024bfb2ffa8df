//! Integration tests of the `supervisor` role, running real `troupe` processes.
