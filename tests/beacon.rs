//! Integration tests of the `beacon` role, running real `troupe` processes.
