//! One datagram per command to weir-agent, which turns them into Prometheus
//! metrics (weir-cni lives for one command; the agent serves `/metrics`).
//!
//! Fire and forget: the socket is non-blocking and every error is ignored.
//! No agent listening, a full receive queue, a read-only run dir: nothing
//! happens, and the command is neither slowed down nor failed by it.
//!
//! Wire format (docs/contracts.md, `<runDir>/cni-metrics.sock`), one JSON
//! object per datagram:
//! `{"command":"ADD","result":"ok"|"error","code":<CNI error code, 0 when ok>,"seconds":0.0123}`

use std::{
    io,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Map, Value, json};

use crate::{config::DEFAULT_RUN_DIR, env::Command};

pub const SOCKET_FILE: &str = "cni-metrics.sock";

/// Where one command's report goes and under which name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    command: &'static str,
    socket: PathBuf,
}

impl Target {
    /// The report target for `command` run with the decoded network
    /// configuration `conf`. None for VERSION (it has no configuration, so
    /// no runDir), and when `runDir` is not a usable absolute path: then
    /// there is no telling where the agent listens.
    ///
    /// Only `runDir` is read (as `NetConf::parse` does), so a command that
    /// fails on another key of the configuration is still counted.
    pub fn new(command: Command, conf: &Map<String, Value>) -> Option<Self> {
        if command == Command::Version {
            return None;
        }
        let run_dir = match conf.get("runDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_RUN_DIR),
            Some(Value::String(s)) if Path::new(s).is_absolute() => PathBuf::from(s),
            Some(_) => return None,
        };
        Some(Self { command: command.as_str(), socket: run_dir.join(SOCKET_FILE) })
    }

    /// Sends the report; `error_code` is the CNI error code of a failed
    /// command, None when it succeeded. Never blocks, never fails.
    pub fn send(&self, error_code: Option<u32>, took: Duration) {
        let _ = self.try_send(error_code, took);
    }

    fn try_send(&self, error_code: Option<u32>, took: Duration) -> io::Result<()> {
        let report = json!({
            "command": self.command,
            "result": if error_code.is_some() { "error" } else { "ok" },
            "code": error_code.unwrap_or(0),
            "seconds": took.as_secs_f64(),
        });
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        socket.send_to(report.to_string().as_bytes(), &self.socket)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    fn conf(run_dir: &Path) -> Map<String, Value> {
        let Value::Object(map) = json!({"cniVersion": "1.1.0", "runDir": run_dir}) else { unreachable!() };
        map
    }

    #[test]
    fn the_report_reaches_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let rx = UnixDatagram::bind(dir.path().join(SOCKET_FILE)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        let target = Target::new(Command::Add, &conf(dir.path())).unwrap();
        target.send(None, Duration::from_millis(12));
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let got: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(got, json!({"command": "ADD", "result": "ok", "code": 0, "seconds": 0.012}));

        Target::new(Command::Del, &conf(dir.path())).unwrap().send(Some(109), Duration::from_micros(2500));
        let n = rx.recv(&mut buf).unwrap();
        let got: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(got, json!({"command": "DEL", "result": "error", "code": 109, "seconds": 0.0025}));
    }

    #[test]
    fn a_missing_socket_is_silently_fine() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::new(Command::Status, &conf(&dir.path().join("nope"))).unwrap();
        // The error is there to see, and the public call swallows it.
        let err = target.try_send(None, Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        target.send(Some(50), Duration::ZERO);

        // A socket file nobody reads any more (agent gone): refused, ignored.
        let path = dir.path().join(SOCKET_FILE);
        drop(UnixDatagram::bind(&path).unwrap());
        assert!(path.exists());
        let target = Target::new(Command::Gc, &conf(dir.path())).unwrap();
        assert!(target.try_send(None, Duration::ZERO).is_err());
        target.send(None, Duration::ZERO);
    }

    #[test]
    fn a_full_queue_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let _rx = UnixDatagram::bind(dir.path().join(SOCKET_FILE)).unwrap();
        let target = Target::new(Command::Check, &conf(dir.path())).unwrap();
        // Nobody reads: the receive queue fills up (a few hundred datagrams
        // at the default limits) and sending must then fail at once.
        let started = Instant::now();
        let mut refused = false;
        for _ in 0..100_000 {
            if let Err(e) = target.try_send(None, Duration::ZERO) {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                refused = true;
                break;
            }
        }
        assert!(refused, "the queue never filled up");
        target.send(None, Duration::ZERO);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn where_reports_go() {
        let empty = Map::new();
        assert_eq!(Target::new(Command::Add, &empty).unwrap().socket, PathBuf::from("/run/weir/cni-metrics.sock"));
        assert_eq!(Target::new(Command::Version, &conf(Path::new("/tmp/r"))), None);
        let mut relative = Map::new();
        relative.insert("runDir".into(), json!("run/weir"));
        assert_eq!(Target::new(Command::Add, &relative), None);
        let mut wrong = Map::new();
        wrong.insert("runDir".into(), json!(7));
        assert_eq!(Target::new(Command::Add, &wrong), None);
        let t = Target::new(Command::Gc, &conf(Path::new("/tmp/r"))).unwrap();
        assert_eq!((t.command, t.socket), ("GC", PathBuf::from("/tmp/r/cni-metrics.sock")));
    }
}
