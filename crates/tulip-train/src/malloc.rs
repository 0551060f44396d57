//! glibc malloc settings for training and evaluation processes.
//!
//! A training step allocates and frees the same few hundred megabytes of tensors every
//! step. By default glibc hands large freed blocks back to the kernel (`mmap` for big
//! allocations, trimming the heap's top), and getting them back costs a page fault and a
//! zeroed page per 4 KiB, a large share of a step on a VM (`bench/RESULTS.md`).
//! [`RETAIN_FREED_MEMORY`] tells glibc to keep what it has; the PyTorch reference
//! benchmark runs with the same settings.
//!
//! glibc reads these variables once, before `main`, and setting them from safe Rust is not
//! possible afterwards (`mallopt` is a foreign call), so the `tulip` binary re-executes
//! itself with them at start-up ([`reexec_retaining_freed_memory`]) unless the user has set
//! any of them, or `TULIP_MALLOC` (to `default` to keep glibc's own behaviour). The cost is
//! that peak memory is held until the process ends.

use std::ffi::{OsStr, OsString};

/// glibc's environment settings that keep freed memory in the process: no `mmap`ed
/// blocks, no trimming of the heap, and heap growth in steps of 1 GiB of address space.
pub const RETAIN_FREED_MEMORY: [(&str, &str); 3] = [
    ("MALLOC_MMAP_MAX_", "0"),
    ("MALLOC_TRIM_THRESHOLD_", "68719476736"),
    ("MALLOC_TOP_PAD_", "1073741824"),
];

/// Set by the re-executed process (to `retain`), or by the user (`default` keeps glibc's
/// behaviour): either way, no re-execution.
pub const TULIP_MALLOC: &str = "TULIP_MALLOC";

/// Whether a process with this environment should re-execute itself with
/// [`RETAIN_FREED_MEMORY`]: only under glibc, and only if neither `TULIP_MALLOC` nor any
/// of the settings is set (a user's own choice wins).
pub fn should_reexec(var: impl Fn(&str) -> Option<OsString>) -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && var(TULIP_MALLOC).is_none()
        && RETAIN_FREED_MEMORY.iter().all(|(k, _)| var(k).is_none())
}

/// Re-executes the current program, with the same arguments, under [`RETAIN_FREED_MEMORY`]
/// when [`should_reexec`] says so; returns only if it does not (or if the exec fails, which
/// is reported on stderr: the program then runs with glibc's defaults).
///
/// Call it first thing in `main`, before any thread, logging or tensor work.
pub fn reexec_retaining_freed_memory() {
    if !should_reexec(|k| std::env::var_os(k)) {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("warning: malloc settings not applied (no path to this program: {e})");
                return;
            }
        };
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let err = std::process::Command::new(&exe)
            .arg0(argv0)
            .args(args)
            .envs(RETAIN_FREED_MEMORY)
            .env(TULIP_MALLOC, OsStr::new("retain"))
            .exec();
        eprintln!(
            "warning: malloc settings not applied (re-executing {} failed: {err})",
            exe.display()
        );
    }
}

/// The malloc-related environment of this process, e.g. `TULIP_MALLOC=retain
/// MALLOC_MMAP_MAX_=0 …`, for a run's log; `glibc defaults` when none is set.
pub fn environment() -> String {
    let set: Vec<String> = std::iter::once(TULIP_MALLOC)
        .chain(RETAIN_FREED_MEMORY.iter().map(|(k, _)| *k))
        .filter_map(|k| Some(format!("{k}={}", std::env::var_os(k)?.to_string_lossy())))
        .collect();
    if set.is_empty() {
        "glibc defaults".into()
    } else {
        set.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn reexecs_only_when_nothing_is_set() {
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(should_reexec(env(&[("PATH", "/bin")])), glibc);
        // The re-executed process, and a user who opts out.
        assert!(!should_reexec(env(&[(TULIP_MALLOC, "retain")])));
        assert!(!should_reexec(env(&[(TULIP_MALLOC, "default")])));
        // A user's own malloc settings win, any one of them.
        for (k, _) in RETAIN_FREED_MEMORY {
            assert!(!should_reexec(env(&[(k, "1")])), "{k}");
        }
    }
}
