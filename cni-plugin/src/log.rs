//! Diagnostics on stderr. stdout belongs to the CNI protocol (one JSON
//! document); runtimes collect stderr into their own logs.

use std::{fmt, sync::OnceLock};

static CONTEXT: OnceLock<String> = OnceLock::new();

/// Sets what every line starts with (command, container, pod), once.
pub fn set_context(context: String) {
    let _ = CONTEXT.set(context);
}

fn line(level: &str, args: fmt::Arguments<'_>) {
    match CONTEXT.get() {
        Some(ctx) => eprintln!("weir-cni[{}] {level}: {ctx}: {args}", std::process::id()),
        None => eprintln!("weir-cni[{}] {level}: {args}", std::process::id()),
    }
}

pub fn info(args: fmt::Arguments<'_>) {
    line("info", args);
}

pub fn warn(args: fmt::Arguments<'_>) {
    line("warning", args);
}
