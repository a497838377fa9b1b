//! A child process that cannot outlive its test: stopped (SIGTERM, then SIGKILL) when dropped.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`Process::stop`] lets a process exit after SIGTERM before it kills it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process stopped on drop, also when a test panics.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    /// Starts `cmd` (stdin from /dev/null); panics naming `name` if it cannot start.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Self::adopt(name, child)
    }

    /// Takes over a child started elsewhere (e.g. inside a namespace).
    pub fn adopt(name: &str, child: Child) -> Self {
        Self {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether it has exited; its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|err| panic!("waiting for {}: {err}", self.name))
    }

    /// SIGTERM, then wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
