//! Integration tests of the `broker` role, running real `troupe` processes.
