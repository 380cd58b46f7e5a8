//! Child processes the bench starts: the vault and the echo server, each optionally pinned to
//! CPU 0 so that the load generator (pinned elsewhere) does not steal its time.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

/// A child server, killed when dropped.
pub(super) struct Child {
    proc: std::process::Child,
    pub(super) addr: String,
}

fn taskset() -> Option<&'static str> {
    ["/usr/bin/taskset", "/bin/taskset"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Moves this process off CPU 0, where the server runs.
pub(super) fn pin_self_away_from_cpu0() {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if let (Some(taskset), true) = (taskset(), cpus > 1) {
        let _ = Command::new(taskset)
            .args([
                "-a",
                "-cp",
                &format!("1-{}", cpus - 1),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// The last lines of a child's stderr kept, to say why it did not start.
const STDERR_LINES_KEPT: usize = 20;

impl Child {
    /// Starts this executable with `args`; it is up once it printed a line starting with
    /// `ready` (followed by its address) and, if `then` is given, a line containing `then`.
    fn spawn(
        args: &[String],
        pin: bool,
        ready: &str,
        then: Option<&str>,
    ) -> Result<(Self, Vec<String>), String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let mut cmd = match (pin, taskset()) {
            (true, Some(taskset)) => {
                let mut c = Command::new(taskset);
                c.args(["-c", "0"]).arg(&exe);
                c
            }
            _ => Command::new(&exe),
        };
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut proc = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let stdout = proc.stdout.take().ok_or("no stdout")?;
        // Stderr is drained for as long as the child runs (it must never block on a full
        // pipe); its last lines say why a child that did not start stopped.
        let stderr = proc.stderr.take().ok_or("no stderr")?;
        let last_errors = std::thread::spawn(move || {
            let mut last = std::collections::VecDeque::with_capacity(STDERR_LINES_KEPT);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if last.len() == STDERR_LINES_KEPT {
                    last.pop_front();
                }
                last.push_back(line);
            }
            Vec::from(last)
        });
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut addr = None;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = line.trim().to_owned();
            if addr.is_none() {
                addr = line
                    .strip_prefix(ready)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned);
            }
            lines.push(line);
            if addr.is_some() && then.is_none_or(|then| lines.iter().any(|l| l.contains(then))) {
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = proc.kill();
            let _ = proc.wait();
            let mut said = lines;
            said.extend(last_errors.join().unwrap_or_default());
            return Err(format!(
                "the child server did not start: {}",
                said.join(" | ")
            ));
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok((Self { proc, addr }, lines))
    }

    /// Starts a vault on a fresh data dir; returns it and its first admin token. With
    /// `audit_reads` false, the vault does not audit reads (only to measure what auditing
    /// costs; the vault records that it was started so, and its health says so). `config` is
    /// the text of its config file.
    pub(super) fn vault(
        data_dir: &Path,
        policies: &Path,
        pin: bool,
        audit_reads: bool,
        config: &str,
    ) -> Result<(Self, String), String> {
        let mut args = Self::serve_args(data_dir, policies, config)?;
        if !audit_reads {
            args.push("--danger-disable-read-audit".to_owned());
        }
        let (child, lines) = Self::spawn(
            &args,
            pin,
            "strongroom listening on ",
            Some("STRONGROOM_TOKEN="),
        )?;
        let token = lines
            .iter()
            .find_map(|l| l.split("STRONGROOM_TOKEN=").nth(1))
            .map(str::to_owned)
            .ok_or("the vault printed no admin token")?;
        Ok((child, token))
    }

    /// Starts another node of a vault whose stores `config` names (a PostgreSQL database that
    /// a first node set up): it prints no admin token. Not pinned: nodes share the CPUs.
    pub(super) fn node(data_dir: &Path, policies: &Path, config: &str) -> Result<Self, String> {
        let args = Self::serve_args(data_dir, policies, config)?;
        Self::spawn(&args, false, "strongroom listening on ", None).map(|(c, _)| c)
    }

    /// `serve` on loopback with a data dir in `data_dir` and `config` written there.
    fn serve_args(data_dir: &Path, policies: &Path, config: &str) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
        let config_path = data_dir.join("bench.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        Ok(vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            data_dir.join("data").display().to_string(),
            "--policies".to_owned(),
            policies.display().to_string(),
            "--config".to_owned(),
            config_path.display().to_string(),
        ])
    }

    /// Starts the echo server.
    pub(super) fn echo(pin: bool) -> Result<Self, String> {
        let args = [
            "bench-echo".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        Self::spawn(&args, pin, "echo listening on ", None).map(|(c, _)| c)
    }

    /// User + system CPU time of the child so far, in clock ticks.
    pub(super) fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the `(comm)`: state is 3rd overall; utime and stime are 14th and 15th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// Resident memory of the child, in KiB.
    pub(super) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// The server's pid (under `taskset -c`, taskset execs the server: same pid).
    fn pid(&self) -> u32 {
        self.proc.id()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}
