//! Stdout carries JSON lines only: events and command answers, one object per line.

use std::io::Write;

use serde_json::Value;

pub fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the driver is gone; there is no one left to tell.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
