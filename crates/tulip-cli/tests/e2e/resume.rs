//! What `tulip train --resume` accepts and refuses, one process per run, and run
//! directories that never collide. (Kills at every point of a run: `kill.rs`.)

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{stderr, tulip};
use tulip_train::run_dir::files;

/// Two short epochs of ResNet8 (6 steps each), a checkpoint every 2 steps.
const RUN: &[&str] = &[
    "--model",
    "resnet8",
    "--epochs",
    "2",
    "--limit-train",
    "48",
    "--batch-size",
    "8",
    "--limit-test",
    "20",
    "--lr",
    "0.05",
    "--checkpoint-every",
    "2",
    "--no-eval-train",
    "--quiet",
];

fn output(args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = tulip(args);
    if let Some(f) = failpoint {
        cmd.env(tulip_models::failpoint::ENV, f);
    }
    cmd.output().unwrap()
}

/// Starts a run in `dir` and kills it (`kill -9`) after its third step.
fn killed_run(dir: &Path, extra: &[&str]) {
    let mut args = vec!["train", "--log-dir", dir.to_str().unwrap()];
    args.extend_from_slice(RUN);
    args.extend_from_slice(extra);
    let out = output(&args, Some("step:3:KILL"));
    assert!(!out.status.success(), "not killed: {}", stderr(&out));
    assert!(dir.join(files::CHECKPOINT).exists());
}

/// A directory of links to the Fashion-MNIST files (a "copy" of the data that can move).
fn data_copy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let source = Path::new("/usr/share/datasets/fashion-mnist");
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn resume_refuses_flags_that_change_the_run_and_honours_moved_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let first = data_copy(&tmp.path().join("data-1"));
    killed_run(&dir, &["--data", first.to_str().unwrap()]);
    let d = dir.to_str().unwrap();

    for flags in [
        &["--lr", "0.5"][..],
        &["--epochs", "9"],
        &["--lip", "0.1"],
        &["--seed", "0"],
    ] {
        let mut args = vec!["train", "--resume", d];
        args.extend_from_slice(flags);
        let out = output(&args, None);
        assert!(!out.status.success(), "{flags:?} accepted with --resume");
        let err = stderr(&out);
        assert!(
            err.contains(flags[0]) && err.contains("--resume"),
            "{flags:?}: {err}"
        );
    }

    // The data moved: --data is the way to say where it went, and it works.
    std::fs::remove_dir_all(&first).unwrap();
    let second = data_copy(&tmp.path().join("data-2"));
    let out = output(
        &[
            "train",
            "--resume",
            d,
            "--data",
            second.to_str().unwrap(),
            "--device",
            "cpu",
            "--checkpoint-every",
            "3",
            "--quiet",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(crate::support::csv(&dir.join(files::TEST_CSV)).1.len(), 2);
}

#[test]
fn an_edited_config_is_refused_unless_allowed_and_then_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    killed_run(&dir, &[]);
    let config = dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\nlr = 0.05\n"), "{text}");
    std::fs::write(&config, text.replace("\nlr = 0.05\n", "\nlr = 0.07\n")).unwrap();

    let d = dir.to_str().unwrap();
    let out = output(&["train", "--resume", d, "--quiet"], None);
    assert!(!out.status.success(), "an edited config.toml was resumed");
    let err = stderr(&out);
    assert!(
        err.contains("config.toml") && err.contains("--allow-config-change"),
        "{err}"
    );

    let out = output(
        &["train", "--resume", d, "--allow-config-change", "--quiet"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(dir.join(files::LOG)).unwrap();
    assert!(
        log.contains("config.toml was edited")
            && log.contains("-lr = 0.05")
            && log.contains("+lr = 0.07"),
        "{log}"
    );
    let lr = crate::support::column(&crate::support::csv(&dir.join(files::TEST_CSV)), "lr");
    assert_eq!(lr, [0.07, 0.07], "the edited learning rate applied");
}

/// A frozen process holds the run: a second one is refused, naming it; once the first
/// is killed (its lock left behind), the run resumes.
#[cfg(unix)]
#[test]
fn one_process_trains_a_run_and_a_dead_ones_lock_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let mut args = vec!["train", "--log-dir", d];
    args.extend_from_slice(RUN);
    let mut first = tulip(&args)
        .env(tulip_models::failpoint::ENV, "step:2:STOP")
        .spawn()
        .unwrap();
    // Wait until the first process is frozen after its second step.
    let pid = first.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("T") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the run never froze");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let out = output(&["train", "--resume", d, "--quiet"], None);
    assert!(!out.status.success(), "two processes trained one run");
    let err = stderr(&out);
    assert!(
        err.contains("another process") && err.contains(&pid.to_string()),
        "{err}"
    );

    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        dir.join(files::LOCK).exists(),
        "the dead process's lock file stays"
    );
    let out = output(&["train", "--resume", d, "--quiet"], None);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs started in the same second get their own directories: here the directories of
/// the next seconds already hold runs.
#[test]
fn default_run_directories_never_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("runs/fashion-mnist/resnet8");
    let now = chrono::Utc::now();
    let taken: Vec<PathBuf> = (0..30)
        .map(|s| {
            parent.join(
                (now + chrono::Duration::seconds(s))
                    .format("%Y%m%d-%H%M%S")
                    .to_string(),
            )
        })
        .collect();
    for dir in &taken {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(files::CONFIG), "# another run\n").unwrap();
    }
    let mut args = vec!["train"];
    args.extend_from_slice(RUN);
    args.extend_from_slice(&["--epochs", "1"]);
    let out = tulip(&args)
        .current_dir(tmp.path())
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let new: Vec<PathBuf> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !taken.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].join(files::TEST_CSV).exists());
}
