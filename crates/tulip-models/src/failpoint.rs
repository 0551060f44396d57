//! Named points at which a test can have the process killed or signalled, to prove that a
//! run survives a kill at any of them (a crash, an out-of-memory kill, a batch scheduler's
//! preemption).
//!
//! Off unless the environment variable `TULIP_FAILPOINT` is set, as `NAME:N:SIGNAL`: the
//! `N`-th time (1-based) the process passes the point `NAME`, it sends itself `SIGNAL`
//! (`KILL`, `TERM`, `INT` or `STOP`) with the system's `kill` command and waits for it.
//! `KILL` ends the process there and then, as `kill -9` from outside would; `TERM` and
//! `INT` go to the process's own handlers, as a user's Ctrl-C or a scheduler's SIGTERM
//! would; `STOP` freezes it there, holding whatever it holds, until it is killed.
//!
//! The points: `step` (after each optimisation step), `evaluate` (after each evaluation
//! batch), and `write:FILE` (inside every atomic write of a file named `FILE`, after the
//! temporary file is complete and before it is renamed into place).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a failpoint.
pub const ENV: &str = "TULIP_FAILPOINT";

struct Armed {
    name: String,
    nth: usize,
    signal: String,
    hits: AtomicUsize,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (rest, signal) = spec.rsplit_once(':')?;
            let (name, nth) = rest.rsplit_once(':')?;
            let armed = Armed {
                name: name.to_string(),
                nth: nth.parse().ok()?,
                signal: signal.to_string(),
                hits: AtomicUsize::new(0),
            };
            ["KILL", "TERM", "INT", "STOP"]
                .contains(&armed.signal.as_str())
                .then_some(armed)
        })
        .as_ref()
}

/// Passes the point `name`: signals the process if `TULIP_FAILPOINT` asks for it here.
pub fn hit(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name != name || armed.hits.fetch_add(1, Ordering::SeqCst) + 1 != armed.nth {
        return;
    }
    let pid = std::process::id().to_string();
    // After a KILL this process does not return from the wait.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{}", armed.signal))
        .arg(&pid)
        .status();
    // The handlers of TERM and INT run on their own thread: give it time to run, so the
    // signal lands at this point and not some steps later.
    std::thread::sleep(std::time::Duration::from_millis(200));
}
