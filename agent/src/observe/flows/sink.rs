//! The flow log: JSON lines to stdout or a file, the file rotated to
//! `<path>.1` (one old file kept) when the next line would take it past
//! its size. Written by a thread of its own from a bounded queue, so a slow
//! disk never holds up the ring buffer's reader (what does not fit in the
//! queue is counted and not logged).
use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use tracing::warn;

use super::flow::Flow;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

impl FromStr for LogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("empty".into()),
            "stdout" | "-" => Ok(Self::Stdout),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// The log file and its rotation.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`; `max_bytes` 0: never rotated.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), max_bytes, file, size })
    }

    /// `<path>.1`.
    pub fn rotated_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Writes one line (`line` ends with a newline), rotating first if it
    /// would not fit; a line longer than the limit goes into a new file.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, self.rotated_path())?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// The queue into the log thread.
pub struct FlowLog {
    tx: mpsc::SyncSender<Arc<Flow>>,
    /// Flows not logged: the queue was full, or writing failed.
    pub dropped: Arc<AtomicU64>,
}

const QUEUE: usize = 8192;

/// Writes one line where the log goes.
type WriteLine = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;

impl FlowLog {
    /// Starts the log thread; fails if the file cannot be opened.
    pub fn start(target: &LogTarget, max_bytes: u64) -> io::Result<Self> {
        let mut out: WriteLine = match target {
            LogTarget::Stdout => {
                let mut stdout = io::stdout();
                Box::new(move |line| stdout.write_all(line))
            }
            LogTarget::File(path) => {
                let mut file = RotatingFile::open(path, max_bytes)?;
                Box::new(move |line| file.write_line(line))
            }
        };
        let (tx, rx) = mpsc::sync_channel::<Arc<Flow>>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let failed = dropped.clone();
        std::thread::Builder::new().name("flow-log".into()).spawn(move || {
            let mut warned = false;
            while let Ok(flow) = rx.recv() {
                let Ok(mut line) = serde_json::to_vec(&*flow) else { continue };
                line.push(b'\n');
                if let Err(e) = out(&line) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if !warned {
                        warn!(error = %e, "flow log not written");
                        warned = true;
                    }
                } else {
                    warned = false;
                }
            }
        })?;
        Ok(Self { tx, dropped })
    }

    pub fn send(&self, flow: &Arc<Flow>) {
        if self.tx.try_send(flow.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_to_one_old_file_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/flows.log");
        let mut f = RotatingFile::open(&path, 25).unwrap();
        f.write_line(b"0123456789\n").unwrap(); // 11
        f.write_line(b"abcdefghij\n").unwrap(); // 22
        assert!(!f.rotated_path().exists());
        f.write_line(b"ABCDEFGHIJ\n").unwrap(); // 33 > 25: rotated first
        assert_eq!(std::fs::read_to_string(f.rotated_path()).unwrap(), "0123456789\nabcdefghij\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ABCDEFGHIJ\n");
        f.write_line(b"klmnopqrst\n").unwrap();
        f.write_line(b"KLMNOPQRST\n").unwrap(); // the old .1 is replaced
        assert_eq!(std::fs::read_to_string(f.rotated_path()).unwrap(), "ABCDEFGHIJ\nklmnopqrst\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "KLMNOPQRST\n");
        // A line longer than the limit still gets written.
        f.write_line(&[b'x'; 40]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 40);
        // Reopened: appends, counting what is there.
        drop(f);
        let mut f = RotatingFile::open(&path, 50).unwrap();
        f.write_line(b"12345\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 46);
        f.write_line(b"zzzzz\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "zzzzz\n");

        // Never rotated with a limit of 0.
        let path = dir.path().join("all.log");
        let mut f = RotatingFile::open(&path, 0).unwrap();
        for _ in 0..100 {
            f.write_line(b"0123456789\n").unwrap();
        }
        assert!(!f.rotated_path().exists());
    }

    #[test]
    fn targets_parse() {
        assert_eq!("stdout".parse::<LogTarget>(), Ok(LogTarget::Stdout));
        assert_eq!("/var/log/weir/flows.log".parse(), Ok(LogTarget::File("/var/log/weir/flows.log".into())));
        assert!("".parse::<LogTarget>().is_err());
    }

    #[test]
    fn the_log_thread_writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let log = FlowLog::start(&LogTarget::File(path.clone()), 0).unwrap();
        let flow = Arc::new(crate::observe::flows::filter::tests::flow("x/a", "y/b", "dropped"));
        log.send(&flow);
        log.send(&flow);
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                let back: Flow = serde_json::from_str(text.lines().next().unwrap()).unwrap();
                assert_eq!(back, *flow);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
