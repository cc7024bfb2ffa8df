//! Integration tests of the `ipc` role, running real `troupe` processes.
