//! A guard for long-running children (agents, servers, containerd): stopped
//! on drop, SIGTERM first so they can clean up, SIGKILL if they do not go.

use std::{
    process::Child,
    thread,
    time::{Duration, Instant},
};

/// How long a child gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self { child: Some(child), what: what.into() }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The exit status if the child has already exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops the child now; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill with the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Leaves the child running past this guard (a kept sandbox).
    pub fn forget(mut self) {
        self.child.take();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
