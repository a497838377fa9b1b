//! One qemu VM: its command line, a process bound to the thread that started it, and its
//! serial console followed line by line for the guest's `SHOAL-VM` markers.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use crate::{Error, IoContext, Result};

pub const QEMU: &str = "qemu-system-x86_64";
/// qboot: a minimal firmware that jumps straight to the kernel's PVH entry.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Prefix of the marker lines the guest init prints on the console.
pub const MARKER: &str = "SHOAL-VM ";

/// Environment variable with extra guest kernel arguments (e.g. `initcall_debug`).
pub const KERNEL_ARGS_ENV: &str = "SHOAL_VM_KERNEL_ARGS";

/// The guest kernel's command line, before the `shoal.*` arguments: serial console, no reboot
/// on panic, a quiet console (every character is slow under TCG), and `no_timer_check`: under
/// TCG on a busy host the IO-APIC timer check can miss its ticks and panic the kernel.
pub fn kernel_args() -> String {
    let extra = std::env::var(KERNEL_ARGS_ENV).unwrap_or_default();
    format!("console=ttyS0 panic=-1 loglevel=4 no_timer_check {extra}")
        .trim_end()
        .to_string()
}

/// How the CPU is provided: hardware virtualization, or qemu's software emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// A network interface on a tap device of the cluster's namespace.
#[derive(Debug, Clone)]
pub struct TapNic {
    pub tap: String,
    pub mac: String,
}

/// Everything that defines one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub append: String,
    pub nic: Option<TapNic>,
    /// A host directory shared read-only over 9p with mount tag `shoal`.
    pub share: Option<PathBuf>,
    /// A disk image, attached with `snapshot=on` (writes stay in a temporary overlay).
    pub disk: Option<PathBuf>,
    /// The guest's console, copied to this file line by line.
    pub console_log: PathBuf,
}

impl VmConfig {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(QEMU);
        let machine = format!("pc,accel={}", self.accel.name());
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        cmd.args(["-name", &self.name, "-nodefaults", "-no-user-config"])
            .args(["-machine", &machine, "-cpu", cpu])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-bios", QBOOT])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .args(["-append", &self.append])
            .args(["-device", "virtio-rng-pci"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        match &self.nic {
            Some(nic) => {
                let netdev = format!(
                    "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                    nic.tap
                );
                let device = format!("virtio-net-pci,netdev=net0,mac={}", nic.mac);
                cmd.args(["-netdev", &netdev, "-device", &device]);
            }
            None => {
                cmd.args(["-nic", "none"]);
            }
        }
        if let Some(share) = &self.share {
            let virtfs = format!(
                "local,path={},mount_tag=shoal,security_model=none,readonly=on",
                share.display()
            );
            cmd.args(["-virtfs", &virtfs]);
        }
        if let Some(disk) = &self.disk {
            let drive = format!(
                "file={},format=raw,if=virtio,snapshot=on,cache=unsafe",
                disk.display()
            );
            cmd.args(["-drive", &drive]);
        }
        cmd
    }
}

/// A marker line seen on a guest's console, with when it was seen.
#[derive(Debug, Clone)]
pub struct Marker {
    pub at: Duration,
    pub text: String,
}

#[derive(Debug, Default)]
struct Console {
    markers: Vec<Marker>,
    tail: Vec<String>,
    closed: bool,
}

/// A running VM. Dropping it kills qemu.
#[derive(Debug)]
pub struct Vm {
    pub name: String,
    pub console_log: PathBuf,
    started: Instant,
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Lines of console kept in memory for error messages.
const TAIL_LINES: usize = 40;

impl Vm {
    /// Starts qemu from `cmd` (built by [`VmConfig::command`], possibly wrapped to enter a
    /// namespace). qemu is killed if the thread that started it ends (`PR_SET_PDEATHSIG`), so
    /// an interrupted run leaves no VM behind.
    pub fn spawn(config: &VmConfig, mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (prctl, sigprocmask) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        let log = fs::File::create(&config.console_log)
            .context(|| format!("creating {}", config.console_log.display()))?;
        let started = Instant::now();
        let mut child = shoal_harness::command::spawn(&mut cmd)?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let reader = {
            let console = Arc::clone(&console);
            std::thread::spawn(move || follow_console(stdout, stderr, log, started, &console))
        };
        Ok(Self {
            name: config.name.clone(),
            console_log: config.console_log.clone(),
            started,
            child,
            console,
            reader: Some(reader),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Markers seen so far.
    pub fn markers(&self) -> Vec<Marker> {
        self.lock().markers.clone()
    }

    /// Waits until a marker starting with `prefix` shows up (returning it), the console closes
    /// (qemu exited), or `timeout` passes.
    pub fn wait_marker(&self, prefix: &str, timeout: Duration) -> Result<Marker> {
        let deadline = Instant::now() + timeout;
        let (lock, signal) = &*self.console;
        let mut console = lock.lock().unwrap_or_else(|poison| poison.into_inner());
        loop {
            if let Some(marker) = console.markers.iter().find(|m| m.text.starts_with(prefix)) {
                return Ok(marker.clone());
            }
            if let Some(error) = console.markers.iter().find(|m| m.text.starts_with("error")) {
                return Err(self.guest_error(&error.text, &console));
            }
            if console.closed {
                return Err(self.guest_error(&format!("qemu exited before `{prefix}`"), &console));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!("{}: `{MARKER}{prefix}`", self.name),
                    timeout,
                    detail: format!("; console tail:\n{}", console.tail.join("\n")),
                });
            }
            console = signal
                .wait_timeout(console, deadline - now)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// Whether qemu is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the console.
    pub fn console_tail(&self) -> String {
        self.lock().tail.join("\n")
    }

    fn guest_error(&self, message: &str, console: &Console) -> Error {
        Error::Guest {
            node: self.name.clone(),
            message: format!("{message}; console tail:\n{}", console.tail.join("\n")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Console> {
        self.console
            .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Kills qemu and waits for it.
    pub fn kill(&mut self) {
        if let Err(err) = self.child.kill() {
            tracing::debug!(vm = %self.name, "killing qemu: {err}");
        }
        if let Err(err) = self.child.wait() {
            tracing::warn!(vm = %self.name, "waiting for qemu: {err}");
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies qemu's output (the serial console, then its own messages) to the log file and
/// records markers; wakes waiters on every marker and when qemu closes its output.
fn follow_console(
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    mut log: fs::File,
    started: Instant,
    console: &(Mutex<Console>, Condvar),
) {
    let (lock, signal) = console;
    let mut record = |line: &str| {
        let _ = writeln!(log, "[{:8.3}] {line}", started.elapsed().as_secs_f64());
        let mut state = lock.lock().unwrap_or_else(|poison| poison.into_inner());
        if state.tail.len() == TAIL_LINES {
            state.tail.remove(0);
        }
        state.tail.push(line.to_string());
        if let Some(text) = line.find(MARKER).map(|at| &line[at + MARKER.len()..]) {
            state.markers.push(Marker {
                at: started.elapsed(),
                text: text.trim().to_string(),
            });
            signal.notify_all();
        }
    };
    if let Some(stdout) = stdout {
        for line in BufReader::new(stdout)
            .split(b'\n')
            .map_while(|line| line.ok())
        {
            record(String::from_utf8_lossy(&line).trim_end());
        }
    }
    if let Some(stderr) = stderr {
        for line in BufReader::new(stderr).lines().map_while(|line| line.ok()) {
            record(&format!("qemu: {line}"));
        }
    }
    lock.lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .closed = true;
    signal.notify_all();
}

/// Whether the qemu binary and its firmware are installed.
pub fn available() -> bool {
    crate::have_program(QEMU) && Path::new(QBOOT).is_file()
}
