//! Driving the real `tessera` executable: commands that run to their end, and servers started
//! in the background whose log is read until they listen. A child process is killed when its
//! handle is dropped, so a failing test leaves nothing running.

use super::{PASSWORD, Reply, reply_to, totp_code};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a command may take to start listening, to stop after a signal, or to finish.
pub const PATIENCE: Duration = Duration::from_secs(20);

// ---- helpers: commands, running servers, finished commands ----

/// `tessera ARGS` with none of the developer's `TESSERA_*` variables (in particular no
/// `TESSERA_SECRET_KEY`): the key file of the data directory is used unless a test sets one.
pub fn tessera(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command.env_remove("TESSERA_SECRET_KEY");
    command
}

pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A child process that is killed (and reaped) when dropped, so a failing test leaves no server
/// behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both are no-ops for a child that was already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `pipe` to its end on a thread; the whole text arrives on the returned channel.
pub fn read_to_end_in_background(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = sender.send(text);
    });
    receiver
}

/// A command that ran to its end.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command that is expected to finish by itself, within [`PATIENCE`].
pub fn run(mut command: Command) -> Finished {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(command.spawn().expect("tessera starts"));
    let stdout = read_to_end_in_background(child.0.stdout.take().expect("stdout piped"));
    let stderr = read_to_end_in_background(child.0.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + PATIENCE;
    let stdout = stdout
        .recv_timeout(remaining(deadline))
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {PATIENCE:?}"));
    let stderr = stderr
        .recv_timeout(remaining(deadline))
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {PATIENCE:?}"));
    // Both pipes are closed: the process is exiting.
    let status = child.0.wait().expect("wait for tessera");
    Finished { status, stdout, stderr }
}

/// Runs a command that must succeed and returns its standard output.
pub fn run_ok(command: Command) -> String {
    succeeded(&run(command)).to_owned()
}

/// Asserts that a finished command succeeded; returns its standard output.
pub fn succeeded(finished: &Finished) -> &str {
    assert!(
        finished.status.success(),
        "{}\nstdout: {}\nstderr: {}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    &finished.stdout
}

/// Asserts a refusal: a non-zero exit and one line on stderr that contains `needle`.
pub fn refused(finished: &Finished, needle: &str) {
    assert!(!finished.status.success(), "{}", finished.stdout);
    let lines: Vec<&str> = finished.stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", finished.stderr);
    assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
}

/// A running `tessera serve`, its address and the log it wrote so far.
pub struct Server {
    pub child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    pub log: String,
    pub base: String,
    client: reqwest::Client,
}

impl Server {
    /// Starts `command` with `TESSERA_LOG=info` and reads its log until the `listening` line,
    /// which names the address.
    pub fn start(mut command: Command) -> Self {
        command
            .env("TESSERA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(command.spawn().expect("tessera starts"));
        let stderr = child.0.stderr.take().expect("stderr piped");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            lines,
            log: String::new(),
            base: String::new(),
            client: super::http_client(),
        };
        let listening = server.wait_for_line("listening");
        let address = listening
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {listening:?}"));
        let address: SocketAddr = address.parse().expect("a socket address");
        assert!(address.ip().is_loopback() && address.port() != 0, "{address}");
        server.base = format!("http://{address}");
        server
    }

    /// The next log line containing `needle`, within [`PATIENCE`].
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.lines.recv_timeout(remaining(deadline)) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.0.wait().expect("wait for tessera");
                    panic!(
                        "tessera exited ({status}) before logging {needle:?}; log:\n{}",
                        self.log
                    )
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {needle:?} within {PATIENCE:?}; log:\n{}", self.log)
                }
            }
        }
    }

    /// Sends `signal` (`-TERM`, `-INT`) with `kill`, waits within [`PATIENCE`] for the process
    /// to close its log and exit, asserts a successful exit and returns the whole log.
    pub fn stop(mut self, signal: &str) -> String {
        let pid = self.child.0.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} {pid} failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.lines.recv_timeout(remaining(deadline)) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "tessera still running {PATIENCE:?} after kill {signal}; log:\n{}",
                        self.log
                    )
                }
            }
        }
        // The log is closed: the process is exiting.
        let status = self.child.0.wait().expect("wait for tessera");
        assert!(status.success(), "exit after {signal}: {status}; log:\n{}", self.log);
        std::mem::take(&mut self.log)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        reply_to(request).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn register(&self, email: &str) -> Reply {
        self.post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await
    }

    pub async fn login(&self, email: &str) -> Reply {
        self.post("/api/auth/login", None, json!({"email": email, "password": PASSWORD}))
            .await
    }

    /// Registers `email` and logs in; returns the session token.
    pub async fn user_with_session(&self, email: &str) -> String {
        let registered = self.register(email).await;
        assert_eq!(registered.status, 201, "{}", registered.text);
        let login = self.login(email).await;
        assert_eq!(login.status, 200, "{}", login.text);
        login.body["token"].as_str().expect("token").to_owned()
    }

    /// Starts an MFA setup (the password re-authenticates); returns the setup reply.
    pub async fn mfa_setup(&self, token: &str) -> Reply {
        let setup = self
            .post(
                "/api/user/profile/mfa/setup",
                Some(token),
                json!({"password": PASSWORD}),
            )
            .await;
        assert_eq!(setup.status, 200, "{}", setup.text);
        setup
    }

    /// Registers `email` and turns TOTP MFA on (codes from the tests' own RFC 6238 helper);
    /// returns (session token, TOTP secret, backup codes).
    pub async fn user_with_mfa(&self, email: &str) -> (String, String, Vec<String>) {
        let token = self.user_with_session(email).await;
        let setup = self.mfa_setup(&token).await;
        let secret = setup.body["secret"].as_str().expect("secret").to_owned();
        let verify = self
            .post(
                "/api/user/profile/mfa/verify",
                Some(&token),
                json!({"code": totp_code(&secret, unix_now())}),
            )
            .await;
        assert_eq!(verify.status, 200, "{}", verify.text);
        let codes = verify.body["backup_codes"]
            .as_array()
            .expect("codes")
            .iter()
            .map(|code| code.as_str().expect("code").to_owned())
            .collect();
        (token, secret, codes)
    }
}

pub fn unix_now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    i64::try_from(since_epoch.as_secs()).expect("in range")
}
