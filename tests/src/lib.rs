//! Cross-crate scenarios for Phoenix Memory.
//!
//! This crate holds tests that drive the real binaries (see `tests/`). The in-process
//! Kubernetes API server and the `phoenix-sandbox` program join it with their issues.

use std::path::PathBuf;

/// Path of a binary built by this workspace (`phoenix-node`, `phoenix-operator`), next to the
/// test executable's own directory.
pub fn workspace_binary(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().unwrap_or_default();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
