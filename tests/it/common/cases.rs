//! Table-driven checks that report every failing row, not only the first.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Collects the failures of a table's rows; [`Cases::finish`] panics with all of them.
#[derive(Debug, Default)]
pub struct Cases {
    failures: Vec<String>,
    rows: usize,
}

impl Cases {
    /// An empty table.
    pub fn new() -> Cases {
        Cases::default()
    }

    /// Runs the (synchronous) assertions of row `name`, recording a panic instead of
    /// propagating it.
    pub fn check(&mut self, name: &str, assertions: impl FnOnce()) {
        self.rows += 1;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(assertions)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_string());
            self.failures.push(format!("[{name}] {message}"));
        }
    }

    /// Panics listing every failed row, if any.
    pub fn finish(self) {
        if !self.failures.is_empty() {
            panic!(
                "{} of {} rows failed:\n{}",
                self.failures.len(),
                self.rows,
                self.failures.join("\n")
            );
        }
    }
}
