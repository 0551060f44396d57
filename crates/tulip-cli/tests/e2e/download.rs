//! `tulip train` fetching a missing dataset: from a loopback mirror
//! (`$TULIP_DATA_MIRROR`) serving a generated MNIST-format dataset, and the errors with
//! `--no-download` or without a network.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::support::{run, stderr, tulip};

use tulip_data::download::{MANIFEST_ENV, MIRROR_ENV};

/// A loopback HTTP server answering `routes` (404 otherwise), one request per
/// connection; returns its base URL and the paths requested.
fn serve(routes: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            log.lock().unwrap().push(path.clone());
            let (status, body) = match routes.get(&path) {
                Some(b) => ("200 OK", b.as_slice()),
                None => ("404 Not Found", &[][..]),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(body);
        }
    });
    (base, hits)
}

/// An MNIST-format dataset as raw IDX files (the loader reads raw or gzip):
/// `(file name, bytes)`. The loader accepts it only in the true sizes, 60,000 training
/// and 10,000 test images.
fn mnist_files(n_train: usize, n_test: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut images = Vec::with_capacity(16 + n * 784);
        for v in [0x0803u32, n as u32, 28, 28] {
            images.extend_from_slice(&v.to_be_bytes());
        }
        // Byte k is k * 7 % 256, which repeats every 256 bytes: copy one period.
        let period: Vec<u8> = (0..256).map(|k| (k * 7 % 256) as u8).collect();
        for _ in 0..n * 784 / 256 {
            images.extend_from_slice(&period);
        }
        images.extend_from_slice(&period[..n * 784 % 256]);
        let mut labels = Vec::new();
        for v in [0x0801u32, n as u32] {
            labels.extend_from_slice(&v.to_be_bytes());
        }
        labels.extend((0..n).map(|i| (i % 10) as u8));
        out.push((format!("{prefix}-images-idx3-ubyte"), images));
        out.push((format!("{prefix}-labels-idx1-ubyte"), labels));
    }
    out
}

/// A manifest listing `files` as MNIST, with their real SHA-256 digests, written to
/// `dir/manifest.toml`.
fn write_manifest(dir: &Path, files: &[(String, Vec<u8>)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (name, bytes) in files {
        let tmp = dir.join(format!("hash-{name}"));
        std::fs::write(&tmp, bytes).unwrap();
        let sha = tulip_data::download::sha256_file(&tmp).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        text.push_str(&format!(
            "[[file]]\ndataset = \"mnist\"\nname = \"{name}\"\n\
             url = \"http://canonical.invalid/{name}\"\nsize = {}\nsha256 = \"{sha}\"\n\n",
            bytes.len()
        ));
    }
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every entry under `dir` (recursively).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.display().to_string());
            out.extend(tree(&p));
        }
    }
    out
}

const TINY: &[&str] = &[
    "train",
    "--dataset",
    "mnist",
    "--epochs",
    "1",
    "--limit-train",
    "16",
    "--limit-test",
    "8",
    "--batch-size",
    "8",
    "--test-batch-size",
    "8",
    "--no-eval-train",
    "--quiet",
];

#[test]
fn no_download_with_a_missing_directory_is_the_clear_not_found_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let mut args = TINY.to_vec();
    args.extend([
        "--no-download",
        "--data",
        "/nonexistent/tulip-data",
        "--log-dir",
        run_dir.to_str().unwrap(),
    ]);
    let out = run(tulip(&args).env_remove(MIRROR_ENV).env_remove(MANIFEST_ENV));
    assert!(!out.status.success());
    let err = stderr(&out);
    for w in [
        "mnist data not found",
        "/nonexistent/tulip-data",
        "cargo xtask download mnist",
    ] {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
    assert!(
        !err.contains("downloading"),
        "--no-download fetches nothing:\n{err}"
    );
    assert!(!Path::new("/nonexistent/tulip-data").exists());
}

#[test]
fn without_a_network_the_error_says_why_and_where_else_to_get_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = TINY.to_vec();
    args[2] = "fashion-mnist";
    args.extend(["--data", data.to_str().unwrap()]);
    let out = run(tulip(&args)
        .current_dir(tmp.path())
        .env(MIRROR_ENV, format!("http://127.0.0.1:{port}"))
        .env_remove(MANIFEST_ENV));
    assert!(!out.status.success());
    let err = stderr(&out);
    for w in [
        "could not connect",
        &format!("127.0.0.1:{port}/fashion-mnist/"),
        "fashion-mnist data not found",
        "apt-get install dataset-fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
    ] {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
    assert_eq!(tree(&data), Vec::<String>::new(), "nothing left behind");
}

#[test]
fn train_downloads_a_missing_dataset_from_the_mirror_and_trains() {
    let files = mnist_files(60_000, 10_000);
    let routes = files
        .iter()
        .map(|(name, bytes)| (format!("/mnist/{name}"), bytes.clone()))
        .collect();
    let (base, hits) = serve(routes);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write_manifest(tmp.path(), &files);
    let data = tmp.path().join("data");
    let train = |run: &str| {
        let mut args = TINY.to_vec();
        let run_dir = tmp.path().join(run);
        let run_dir = run_dir.to_str().unwrap().to_owned();
        args.extend(["--data", data.to_str().unwrap(), "--log-dir", &run_dir]);
        let out = crate::support::run(
            tulip(&args)
                .env(MIRROR_ENV, &base)
                .env(MANIFEST_ENV, &manifest),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };

    train("run1");
    assert_eq!(hits.lock().unwrap().len(), 4, "each file fetched once");
    for (name, bytes) in &files {
        assert_eq!(
            &std::fs::read(data.join("mnist").join(name)).unwrap(),
            bytes
        );
    }
    let (_, config) = tulip_train::RunDir::open(&tmp.path().join("run1")).unwrap();
    assert_eq!(config.dataset.name(), "mnist");
    assert!(config.download);
    let test = crate::support::csv(
        &tmp.path()
            .join("run1")
            .join(tulip_train::run_dir::files::TEST_CSV),
    );
    assert_eq!(test.1.len(), 1, "one epoch trained and evaluated");

    // Found locally now: no second download.
    train("run2");
    assert_eq!(hits.lock().unwrap().len(), 4);
}

#[test]
fn a_downloaded_dataset_of_the_wrong_size_is_refused_when_loaded() {
    // Verified against its (test) manifest, so the download succeeds; but 16 training
    // images are not MNIST, and training on them must not start.
    let files = mnist_files(16, 8);
    let routes = files
        .iter()
        .map(|(name, bytes)| (format!("/mnist/{name}"), bytes.clone()))
        .collect();
    let (base, _hits) = serve(routes);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write_manifest(tmp.path(), &files);
    let data = tmp.path().join("data");
    let run_dir = tmp.path().join("run");
    let mut args = TINY.to_vec();
    args.extend([
        "--data",
        data.to_str().unwrap(),
        "--log-dir",
        run_dir.to_str().unwrap(),
    ]);
    let out = run(tulip(&args)
        .env(MIRROR_ENV, &base)
        .env(MANIFEST_ENV, &manifest));
    assert!(!out.status.success(), "trained on a 16-image MNIST");
    let err = stderr(&out);
    for w in [
        "train-images-idx3-ubyte",
        "mnist",
        "expected 60000",
        "found 16",
    ] {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
    assert!(
        !run_dir.join(tulip_train::run_dir::files::TEST_CSV).exists(),
        "no epoch was trained"
    );
}

#[test]
fn a_mirror_cannot_bypass_the_committed_digests() {
    // Generated files under the real names, checked against the committed manifest.
    let files = mnist_files(16, 8);
    let routes = files
        .iter()
        .map(|(name, bytes)| (format!("/mnist/{name}.gz"), bytes.clone()))
        .collect();
    let (base, hits) = serve(routes);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run_dir = tmp.path().join("run");
    let mut args = TINY.to_vec();
    args.extend([
        "--data",
        data.to_str().unwrap(),
        "--log-dir",
        run_dir.to_str().unwrap(),
    ]);
    let out = run(tulip(&args).env(MIRROR_ENV, &base).env_remove(MANIFEST_ENV));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
    assert!(err.contains("wrong size"), "{err}");
    assert_eq!(hits.lock().unwrap().len(), 1, "stops at the first bad file");
    assert_eq!(tree(&data), Vec::<String>::new(), "nothing left behind");
}
