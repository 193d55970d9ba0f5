//! The prerequisites, checked before anything runs: docker and its daemon,
//! kind, kubectl. Without one, nothing is tested and the run exits 2.

use std::{process::Command, time::Duration};

use weir_testbed::exec;

/// Checks and prints the prerequisites (on stderr when one is unmet);
/// whether all are met. `rerun` is the command to run again once they are.
pub fn met(rerun: &str) -> bool {
    let (report, ok) = prerequisites_report(&check_prerequisites(find_in_path, docker_info), rerun);
    if ok {
        print!("{report}");
    } else {
        eprint!("{report}");
    }
    ok
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prereq {
    Docker,
    DockerDaemon,
    Kind,
    Kubectl,
}

impl Prereq {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::DockerDaemon => "docker daemon",
            Self::Kind => "kind",
            Self::Kubectl => "kubectl",
        }
    }

    pub fn how_to_get(self) -> &'static str {
        match self {
            Self::Docker => {
                "install Docker Engine (https://docs.docker.com/engine/install/; Debian/Ubuntu: `sudo apt-get install docker.io`), then start it"
            }
            Self::DockerDaemon => {
                "start it (`sudo systemctl start docker`, or `sudo dockerd &` without systemd) and make sure this user may use it (root, the `docker` group, or DOCKER_HOST pointing at a running daemon)"
            }
            Self::Kind => {
                "a release binary (`curl -Lo kind https://kind.sigs.k8s.io/dl/v0.29.0/kind-linux-amd64 && chmod +x kind && sudo mv kind /usr/local/bin/`; newer releases: https://kind.sigs.k8s.io/docs/user/quick-start/#installation), or `go install sigs.k8s.io/kind@v0.29.0`"
            }
            Self::Kubectl => {
                "https://kubernetes.io/docs/tasks/tools/ (e.g. `curl -LO \"https://dl.k8s.io/release/$(curl -Ls https://dl.k8s.io/release/stable.txt)/bin/linux/amd64/kubectl\" && sudo install kubectl /usr/local/bin/`)"
            }
        }
    }
}

/// One prerequisite's state: Ok(what was found) or Err(why it is unmet).
pub type PrereqState = (Prereq, Result<String, String>);

/// Checks each prerequisite in order. `find` looks a program up (its path,
/// or None); `docker_info` asks the daemon (its version, or why not) and is
/// only called when the docker client exists.
pub fn check_prerequisites(
    find: impl Fn(&str) -> Option<String>,
    docker_info: impl FnOnce() -> Result<String, String>,
) -> Vec<PrereqState> {
    let found = |p: Prereq| find(p.name()).ok_or_else(|| "not found in PATH".to_string());
    let docker = found(Prereq::Docker);
    let daemon = match &docker {
        Ok(_) => docker_info(),
        Err(_) => Err("cannot be asked without the docker client".to_string()),
    };
    vec![
        (Prereq::Docker, docker),
        (Prereq::DockerDaemon, daemon),
        (Prereq::Kind, found(Prereq::Kind)),
        (Prereq::Kubectl, found(Prereq::Kubectl)),
    ]
}

/// The table printed before anything runs; with unmet prerequisites it says
/// what to install and that nothing was tested.
pub fn prerequisites_report(states: &[PrereqState], rerun: &str) -> (String, bool) {
    let mut out = String::from("kind-e2e: prerequisites\n");
    let mut unmet = Vec::new();
    for (p, state) in states {
        match state {
            Ok(what) => out.push_str(&format!("  ok       {:<14} {what}\n", p.name())),
            Err(why) => {
                out.push_str(&format!("  MISSING  {:<14} {why}\n", p.name()));
                out.push_str(&format!("           {:<14} how: {}\n", "", p.how_to_get()));
                unmet.push(p.name());
            }
        }
    }
    if unmet.is_empty() {
        return (out, true);
    }
    out.push_str(&format!(
        "\nkind-e2e: NOTHING WAS TESTED. Missing: {}. Install what is listed above and run `{rerun}` again.\n",
        unmet.join(", ")
    ));
    (out, false)
}

/// The executable `name` in PATH.
fn find_in_path(name: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .map(|p| p.display().to_string())
}

fn docker_info() -> Result<String, String> {
    let mut cmd = Command::new("docker");
    cmd.args(["info", "--format", "{{.ServerVersion}}"]);
    match exec::output(&mut cmd, None, Duration::from_secs(30)) {
        Ok(out) if out.success() => Ok(format!("reachable (server {})", out.stdout_str().trim())),
        Ok(out) => {
            let text = format!("{}{}", out.stderr_str(), out.stdout_str());
            let first: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(2).collect();
            Err(format!("`docker info` failed ({}): {}", out.describe_status(), first.join(" / ")))
        }
        Err(e) => Err(format!("`docker info` did not run: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn found(names: &'static [&'static str]) -> impl Fn(&str) -> Option<String> {
        move |n| names.contains(&n).then(|| format!("/usr/bin/{n}"))
    }

    #[test]
    fn everything_present_means_go() {
        let states =
            check_prerequisites(found(&["docker", "kind", "kubectl"]), || Ok("reachable (server 27.0)".into()));
        assert!(states.iter().all(|(_, s)| s.is_ok()), "{states:?}");
        let (text, ok) = prerequisites_report(&states, "cargo xtask kind-e2e");
        assert!(ok);
        assert!(!text.contains("NOTHING"), "{text}");
    }

    #[test]
    fn each_missing_tool_is_named_with_how_to_get_it() {
        let asked = Cell::new(false);
        let states = check_prerequisites(found(&["kubectl"]), || {
            asked.set(true);
            Ok(String::new())
        });
        assert!(!asked.get(), "no docker client: the daemon cannot be asked");
        let unmet: Vec<Prereq> = states.iter().filter(|(_, s)| s.is_err()).map(|(p, _)| *p).collect();
        assert_eq!(unmet, [Prereq::Docker, Prereq::DockerDaemon, Prereq::Kind]);
        let (text, ok) = prerequisites_report(&states, "cargo xtask kind-e2e --ip-family dual");
        assert!(!ok);
        assert!(text.contains("NOTHING WAS TESTED"), "{text}");
        assert!(text.contains("run `cargo xtask kind-e2e --ip-family dual` again"), "{text}");
        assert!(text.contains("Missing: docker, docker daemon, kind."), "{text}");
        assert!(text.contains("go install sigs.k8s.io/kind"), "{text}");
        assert!(text.contains("ok       kubectl"), "{text}");
    }

    #[test]
    fn a_docker_client_without_a_daemon_is_not_enough() {
        let states = check_prerequisites(found(&["docker", "kind", "kubectl"]), || {
            Err("`docker info` failed: Cannot connect to the Docker daemon".into())
        });
        let (text, ok) = prerequisites_report(&states, "cargo xtask kind-e2e");
        assert!(!ok);
        assert!(text.contains("MISSING  docker daemon"), "{text}");
        assert!(text.contains("Cannot connect to the Docker daemon"), "{text}");
        assert!(text.contains("Missing: docker daemon."), "{text}");
    }
}
