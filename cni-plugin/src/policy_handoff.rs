//! The hand-off with weir-agent that keeps a new pod from ever being open
//! to traffic its NetworkPolicy forbids.
//!
//! For a Kubernetes pod (CNI_ARGS carries K8S_POD_NAMESPACE/K8S_POD_NAME)
//! ADD writes the endpoint entry "policy pending": the datapath passes
//! nothing but ARP for it. Once the pod is wired, ADD asks the agent over
//! `<runDir>/policy.sock` to put the pod's policy in place and clear the
//! bit, and waits (bounded) for the answer, so the pod normally starts with
//! its policy already enforced. If the agent does not answer in time the
//! ADD still succeeds and the pod starts isolated: the agent clears the bit
//! when it gets to it (it also finds the pod by its IP). Never open, at
//! worst late.
//!
//! Wire format: one JSON line each way.
//! request:  {"ifindex":12,"ip":"10.244.1.5","namespace":"x","name":"a","containerId":"..."}
//! response: {"ready":true} | {"ready":false,"reason":"..."}
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

pub const SOCKET_FILE: &str = "policy.sock";

/// How long ADD waits for the agent; longer than the agent's own wait for
/// a Pod object it has not seen yet.
pub const WAIT: Duration = Duration::from_secs(5);

/// The Kubernetes pod behind an ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod's policy is in place and the pending bit is cleared.
    Ready,
    /// The pod stays isolated until the agent catches up; why.
    Pending(String),
}

pub fn request(
    run_dir: &Path,
    ifindex: u32,
    ip: Ipv4Addr,
    pod: &PodRef,
    container_id: &str,
    wait: Duration,
) -> Outcome {
    let path = run_dir.join(SOCKET_FILE);
    let attempt = || -> std::io::Result<Outcome> {
        let mut stream = UnixStream::connect(&path)?;
        stream.set_write_timeout(Some(wait))?;
        stream.set_read_timeout(Some(wait))?;
        let line = serde_json::json!({
            "ifindex": ifindex,
            "ip": ip.to_string(),
            "namespace": pod.namespace,
            "name": pod.name,
            "containerId": container_id,
        });
        stream.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer)?;
        let value: serde_json::Value = serde_json::from_str(answer.trim())
            .map_err(|e| std::io::Error::other(format!("unreadable answer {answer:?}: {e}")))?;
        Ok(if value["ready"] == serde_json::Value::Bool(true) {
            Outcome::Ready
        } else {
            Outcome::Pending(value["reason"].as_str().unwrap_or("the agent gave no reason").to_string())
        })
    };
    match attempt() {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Pending(format!("no answer from weir-agent at {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::net::UnixListener};

    use super::*;

    fn pod() -> PodRef {
        PodRef { namespace: "x".into(), name: "a".into() }
    }

    /// A fake agent on `dir`'s socket: accepts one connection, reads the
    /// request line, answers `answer`; joining it gives the request line.
    fn agent_answering(dir: &Path, answer: &'static [u8]) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(dir.join(SOCKET_FILE)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            s.write_all(answer).unwrap();
            line
        })
    }

    #[test]
    fn ready_answer_and_request_shape() {
        let dir = tempfile::tempdir().unwrap();
        let server = agent_answering(dir.path(), b"{\"ready\":true}\n");
        let out = request(dir.path(), 12, Ipv4Addr::new(10, 244, 1, 5), &pod(), "c1", WAIT);
        assert_eq!(out, Outcome::Ready);
        let req = serde_json::from_str::<serde_json::Value>(&server.join().unwrap()).unwrap();
        assert_eq!(
            req,
            serde_json::json!({"ifindex": 12, "ip": "10.244.1.5", "namespace": "x", "name": "a", "containerId": "c1"})
        );
    }

    #[test]
    fn no_agent_or_a_silent_one_leaves_the_pod_pending() {
        let dir = tempfile::tempdir().unwrap();
        let out = request(dir.path(), 12, Ipv4Addr::new(10, 244, 1, 5), &pod(), "c1", WAIT);
        assert!(matches!(out, Outcome::Pending(ref r) if r.contains("no answer")), "{out:?}");

        let listener = UnixListener::bind(dir.path().join(SOCKET_FILE)).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            std::thread::sleep(Duration::from_millis(300));
        });
        let out = request(dir.path(), 12, Ipv4Addr::new(10, 244, 1, 5), &pod(), "c1", Duration::from_millis(100));
        assert!(matches!(out, Outcome::Pending(_)), "{out:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_refusal_carries_the_agents_reason() {
        let dir = tempfile::tempdir().unwrap();
        let server = agent_answering(dir.path(), b"{\"ready\":false,\"reason\":\"pod x/a unknown\"}\n");
        let out = request(dir.path(), 12, Ipv4Addr::new(10, 244, 1, 5), &pod(), "c1", WAIT);
        assert_eq!(out, Outcome::Pending("pod x/a unknown".into()));
        server.join().unwrap();
    }
}
