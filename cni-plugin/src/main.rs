//! weir-cni: the CNI plugin of weir (CNI spec 1.1).
//!
//! Invoked by the container runtime with `CNI_*` environment variables and
//! the network configuration on stdin; prints one JSON document on stdout (a
//! result, or an error object with exit status 1). See `error.rs` for the
//! error codes and docs/contracts.md for the configuration.

mod attachment;
mod commands;
mod config;
mod datapath;
mod env;
mod error;
mod ipam;
mod log;
mod metrics_report;
mod netlink;
mod netns;
mod policy_handoff;
mod request;
mod result;
mod version;
mod veth;

use std::{
    io::{self, Read, Write},
    process::ExitCode,
};

use serde_json::{Map, Value};

use crate::{env::Env, error::CniError, version::CniVersion};

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    log::init_trace();
    let (version, report, outcome) = run();
    // To the agent's metrics; never blocks (see metrics_report).
    if let Some(report) = report {
        report.send(outcome.as_ref().err().map(CniError::code), started.elapsed());
        log::step("metrics report");
    }
    let (reply, code) = match outcome {
        Ok(None) => return ExitCode::SUCCESS,
        Ok(Some(result)) => (result, ExitCode::SUCCESS),
        Err(err) => {
            log::warn(format_args!("failed (code {}): {err}", err.code()));
            (err.to_json(version), ExitCode::FAILURE)
        }
    };
    let mut stdout = io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &reply)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(stdout))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        log::warn(format_args!("cannot write the reply to stdout: {e}"));
        return ExitCode::FAILURE;
    }
    log::step("reply");
    code
}

/// Runs the command; also returns the spec version to answer errors in (the
/// configuration's, when it names one weir-cni speaks) and where to report
/// the outcome (None without a command or a configuration to tell where).
fn run() -> (CniVersion, Option<metrics_report::Target>, Result<Option<Value>, CniError>) {
    let mut stdin = Vec::new();
    let read = io::stdin().read_to_end(&mut stdin);
    let conf = config::decode(&stdin);
    let version = conf.as_ref().ok().and_then(|c| config::requested_version(c).ok()).unwrap_or(CniVersion::LATEST);

    let mut report = None;
    let outcome = (|| {
        read.map_err(|source| CniError::Io { what: "stdin", source })?;
        let env = Env::from_vars(std::env::vars_os())?;
        log::set_context(context(&env));
        report = conf.as_ref().ok().and_then(|c| metrics_report::Target::new(env.command, c));
        let conf = match (env.command, conf) {
            (_, Ok(conf)) => conf,
            // VERSION may come with an empty or partial stdin.
            (env::Command::Version, Err(_)) => Map::new(),
            (_, Err(e)) => return Err(e),
        };
        let request = request::parse(&env, &conf)?;
        log::step("parse request");
        commands::run(request)
    })();
    (version, report, outcome)
}

fn context(env: &Env) -> String {
    let mut ctx = env.command.as_str().to_string();
    if let (Some(id), Some(ifname)) = (&env.container_id, &env.ifname) {
        ctx.push_str(&format!(" {id}/{ifname}"));
    }
    if let Some(pod) = env.pod_label() {
        ctx.push_str(&format!(" pod {pod}"));
    }
    ctx
}
