//! `weir-agent observe`: asks the agent's flows socket and prints the
//! flows, one readable line each or (`--json`) one JSON object per line.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{
    SOCKET_FILE,
    filter::{Filter, Request},
    flow::Flow,
};

/// `weir-agent observe`'s arguments, as the command line gives them.
#[derive(Debug, Default, clap::Args)]
pub struct ObserveArgs {
    /// Keep printing new flows as they come.
    #[arg(short, long)]
    pub follow: bool,
    /// Flows of this pod (`namespace/name`, or a name) at either end or as
    /// the backend.
    #[arg(long)]
    pub pod: Option<String>,
    /// Flows of pods of this namespace (with --pod NAME: that pod's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Flows to this Service (`namespace/name`).
    #[arg(long)]
    pub service: Option<String>,
    /// allowed, dropped or translated.
    #[arg(long)]
    pub verdict: Option<String>,
    /// A drop reason, as `weir-agent inspect drops` names them
    /// (policy-denied-ingress, service-no-backend, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// tcp, udp, icmp or sctp.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Either end's port, or the backend's.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only flows of the last while: 30s, 5m, 1h, 250ms.
    #[arg(long, value_parser = parse_duration_ms)]
    pub since: Option<u64>,
    /// At most this many flows of the history (default: 20 without
    /// --follow and --since, else all the agent holds).
    #[arg(long)]
    pub last: Option<usize>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// The agent's run dir, where its flows socket is.
    #[arg(long, env = "WEIR_RUN_DIR", default_value = "/run/weir")]
    pub run_dir: PathBuf,
}

/// The last flows shown when nothing else says how many.
const DEFAULT_LAST: usize = 20;

/// `30s`, `5m`, `1h`, `250ms`, or seconds, in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 1h"))?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Ok(n.saturating_mul(scale))
}

impl ObserveArgs {
    pub fn request(&self) -> Result<Request, String> {
        let filter = Filter {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            verdict: self.verdict.clone(),
            reason: self.reason.clone(),
            protocol: self.protocol.clone(),
            port: self.port,
        };
        filter.check()?;
        let last = self.last.or((!self.follow && self.since.is_none()).then_some(DEFAULT_LAST));
        Ok(Request { filter, follow: self.follow, last, since_ms: self.since })
    }
}

pub async fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let req = args.request().map_err(anyhow::Error::msg)?;
    let path = args.run_dir.join(SOCKET_FILE);
    let stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("connecting to {} (is weir-agent running on this node?)", path.display()))?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{}\n", serde_json::to_string(&req)?).as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let mut stdout = std::io::stdout().lock();
    use std::io::Write as _;
    while let Some(line) = lines.next_line().await? {
        let value: serde_json::Value = serde_json::from_str(&line).context("the agent's answer")?;
        if let Some(e) = value.get("error") {
            bail!("the agent refused the request: {}", e.as_str().unwrap_or_default());
        }
        if let Some(n) = value.get("lost") {
            eprintln!("weir-agent observe: {n} flows missed (the output was too slow)");
            continue;
        }
        if args.json {
            writeln!(stdout, "{line}")?;
        } else {
            let flow: Flow = serde_json::from_value(value).context("the agent's answer")?;
            writeln!(stdout, "{}", flow.line())?;
        }
        if args.follow {
            stdout.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("7"), Ok(7_000));
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("s").is_err());
    }

    #[test]
    fn requests_from_the_command_line() {
        let args = ObserveArgs { pod: Some("y/b".into()), verdict: Some("dropped".into()), ..Default::default() };
        let req = args.request().unwrap();
        assert_eq!(req.last, Some(DEFAULT_LAST));
        assert!(!req.follow);
        assert_eq!(req.filter.pod.as_deref(), Some("y/b"));
        let req = ObserveArgs { follow: true, ..Default::default() }.request().unwrap();
        assert_eq!(req.last, None);
        let req = ObserveArgs { since: Some(1_000), last: Some(5), ..Default::default() }.request().unwrap();
        assert_eq!((req.last, req.since_ms), (Some(5), Some(1_000)));
        assert!(ObserveArgs { protocol: Some("gre".into()), ..Default::default() }.request().is_err());
    }
}
