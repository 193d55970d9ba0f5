//! Diagnostics on stderr. stdout belongs to the CNI protocol (one JSON
//! document); runtimes collect stderr into their own logs.
//!
//! With `WEIR_CNI_TRACE=1` in the environment, `step` also prints how long
//! each step of a command took (for finding where the time goes; off by
//! default, and then it costs one branch per step). `WEIR_CNI_TRACE=<path>`
//! (an absolute path) appends those lines to that file instead: runtimes
//! drop a plugin's stderr when it succeeds.

use std::{
    fmt,
    sync::{Mutex, OnceLock},
    time::Instant,
};

static CONTEXT: OnceLock<String> = OnceLock::new();

/// Start and last step of the trace, when tracing is on.
static TRACE: OnceLock<Option<Mutex<(Instant, Instant)>>> = OnceLock::new();
/// Where trace lines go when `WEIR_CNI_TRACE` names a file.
static TRACE_FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();

/// Sets what every line starts with (command, container, pod), once.
pub fn set_context(context: String) {
    let _ = CONTEXT.set(context);
}

fn line(level: &str, args: fmt::Arguments<'_>) {
    // One write per line: concurrent invocations share the runtime's log.
    let text = match CONTEXT.get() {
        Some(ctx) => format!("weir-cni[{}] {level}: {ctx}: {args}\n", std::process::id()),
        None => format!("weir-cni[{}] {level}: {args}\n", std::process::id()),
    };
    eprint!("{text}");
}

pub fn info(args: fmt::Arguments<'_>) {
    line("info", args);
}

pub fn warn(args: fmt::Arguments<'_>) {
    line("warning", args);
}

/// Turns step tracing on if `WEIR_CNI_TRACE` is set to anything but `0` or
/// empty; call once, early.
pub fn init_trace() {
    TRACE_FILE
        .get_or_init(|| std::env::var_os("WEIR_CNI_TRACE").map(std::path::PathBuf::from).filter(|p| p.is_absolute()));
    TRACE.get_or_init(|| {
        std::env::var_os("WEIR_CNI_TRACE").filter(|v| !v.is_empty() && v != "0").map(|_| {
            let now = Instant::now();
            Mutex::new((now, now))
        })
    });
}

/// Records the end of a step: with tracing on, prints its duration and the
/// time since `init_trace`.
pub fn step(name: &str) {
    let Some(Some(trace)) = TRACE.get() else {
        return;
    };
    let now = Instant::now();
    let (since_start, since_last) = {
        let mut t = trace.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = std::mem::replace(&mut t.1, now);
        (now - t.0, now - last)
    };
    let args =
        format_args!("{name}: {:.3} ms (at {:.3} ms)", since_last.as_secs_f64() * 1e3, since_start.as_secs_f64() * 1e3);
    match TRACE_FILE.get() {
        Some(Some(path)) => {
            let ctx = CONTEXT.get().map(String::as_str).unwrap_or_default();
            let text = format!("weir-cni[{}] trace: {ctx}: {args}\n", std::process::id());
            // One append per line, as for stderr; tracing never fails a command.
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        }
        _ => line("trace", args),
    }
}
