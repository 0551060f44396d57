//! Downloads from a loopback HTTP server serving generated files in the true formats:
//! verification, unpacking, loading, no refetching, and every failure leaving nothing
//! behind. Plus the committed manifest's completeness.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tulip_data::download::{
    locate_or_download_with, Downloader, Manifest, NoProgress, Source, Unpack, SUMS_FILE,
};
use tulip_data::{load, locate, DataError, DatasetKind, SearchPaths};

use crate::{assert_msg, gz, idx_images, idx_labels, pixel, pixels};

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status and an empty body.
    Status(u16, &'static str),
    /// 200 announcing `claimed` bytes, then this shorter body, then the connection closes.
    BreaksOff { body: Vec<u8>, claimed: usize },
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers one request per connection and
/// records the paths asked for.
struct Server {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(routes: HashMap<String, Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&hits);
        // Detached: it lives as long as the test process, blocked in accept.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push(path.clone());
                let reply = routes
                    .get(&path)
                    .cloned()
                    .unwrap_or(Reply::Status(404, "Not Found"));
                let (head, body) = match reply {
                    Reply::Body(b) => (format!("200 OK\r\nContent-Length: {}", b.len()), b),
                    Reply::Status(code, why) => {
                        (format!("{code} {why}\r\nContent-Length: 0"), vec![])
                    }
                    Reply::BreaksOff { body, claimed } => {
                        (format!("200 OK\r\nContent-Length: {claimed}"), body)
                    }
                };
                let _ = write!(stream, "HTTP/1.1 {head}\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(&body);
                let _ = stream.flush();
            }
        });
        Server { addr, hits }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A manifest entry for `bytes` (canonical URLs point nowhere: tests use a mirror).
fn entry(kind: DatasetKind, name: &str, bytes: &[u8], archive_members: &[&str]) -> String {
    let mut s = format!(
        "[[file]]\ndataset = \"{kind}\"\nname = \"{name}\"\nurl = \"http://canonical.invalid/{name}\"\n\
         size = {}\nsha256 = \"{}\"\n",
        bytes.len(),
        sha256(bytes)
    );
    if !archive_members.is_empty() {
        s.push_str("unpack = \"tar.gz\"\nmembers = [");
        for m in archive_members {
            s.push_str(&format!("\"{m}\", "));
        }
        s.push_str("]\n");
    }
    s
}

/// The four gzipped IDX files of an MNIST-format dataset (`n_train`, `n_test`; `load`
/// accepts them only with the true sizes, 60,000 and 10,000).
fn idx_files(n_train: usize, n_test: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        out.push((
            format!("{prefix}-images-idx3-ubyte.gz"),
            gz(&idx_images(n as u32, 28, 28, &pixels(0, n, 784))),
        ));
        out.push((
            format!("{prefix}-labels-idx1-ubyte.gz"),
            gz(&idx_labels(&labels)),
        ));
    }
    out
}

/// A served file: name, bytes and, for an archive, its members.
type Served = (String, Vec<u8>, Vec<String>);

/// A CIFAR binary-version archive whose files hold as many records as the real ones
/// (10,000 per file; CIFAR-100's `train.bin` 50,000): record `i` of each file has label
/// `i % 10` (the fine label for CIFAR-100) and pixels `pixel(i, k)`.
fn cifar_archive(kind: DatasetKind) -> Served {
    let (name, top, files, record): (_, _, &[&str], _) = match kind {
        DatasetKind::Cifar100 => (
            "cifar-100-binary.tar.gz",
            "cifar-100-binary",
            &["train.bin", "test.bin"],
            3074,
        ),
        _ => (
            "cifar-10-binary.tar.gz",
            "cifar-10-batches-bin",
            &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
            ],
            3073,
        ),
    };
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, data).unwrap();
    };
    let mut members = Vec::new();
    for f in files {
        let n = if *f == "train.bin" { 50_000 } else { 10_000 };
        let mut data = Vec::with_capacity(n * record);
        for (i, image) in pixels(0, n, 3072).chunks_exact(3072).enumerate() {
            if record == 3074 {
                data.push(0); // CIFAR-100's coarse label, not read
            }
            data.push((i % 10) as u8); // the (fine) label
            data.extend_from_slice(image);
        }
        let path = format!("{top}/{f}");
        add(&path, &data);
        members.push(path);
    }
    add(&format!("{top}/readme.txt"), b"generated for a test\n");
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    (name.to_owned(), bytes, members)
}

/// A server serving `files` of `kind` under `/<kind>/`, and a downloader using it with a
/// manifest of exactly those files.
fn setup(kind: DatasetKind, files: &[Served]) -> (Server, Downloader) {
    let mut routes = HashMap::new();
    let mut manifest = String::new();
    for (name, bytes, members) in files {
        routes.insert(format!("/{kind}/{name}"), Reply::Body(bytes.clone()));
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        manifest.push_str(&entry(kind, name, bytes, &members));
    }
    let server = Server::start(routes);
    let manifest = Manifest::parse(&manifest, "test").unwrap();
    let dl = Downloader::new(manifest, Source::Mirror(server.base()));
    (server, dl)
}

fn idx_setup(n_train: usize, n_test: usize) -> (Vec<Served>, Server, Downloader) {
    let files: Vec<_> = idx_files(n_train, n_test)
        .into_iter()
        .map(|(n, b)| (n, b, vec![]))
        .collect();
    let (server, dl) = setup(DatasetKind::Mnist, &files);
    (files, server, dl)
}

/// Everything under `dir`, recursively, as sorted relative paths.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

#[test]
fn idx_dataset_downloads_verifies_and_loads_then_is_not_fetched_again() {
    // The true sizes: `load` accepts nothing else.
    let (files, server, dl) = idx_setup(60_000, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");

    let report = dl
        .fetch(DatasetKind::Mnist, &root, &mut NoProgress)
        .unwrap();
    assert_eq!(report.dir, root.join("mnist"));
    assert_eq!(report.fetched.len(), 4);
    assert!(report.present.is_empty());
    assert_eq!(server.hits().len(), 4);
    // Stored as served (still gzipped), with the record of the download, and nothing
    // else: no staging leftovers.
    let mut names: Vec<String> = files.iter().map(|f| format!("mnist/{}", f.0)).collect();
    names.push("mnist".into());
    names.push(format!("mnist/{SUMS_FILE}"));
    names.sort();
    assert_eq!(tree(&root), names);
    for (name, bytes, _) in &files {
        assert_eq!(
            &std::fs::read(root.join("mnist").join(name)).unwrap(),
            bytes
        );
    }

    let data = load(
        DatasetKind::Mnist,
        &locate(DatasetKind::Mnist, Some(&root)).unwrap(),
    )
    .unwrap();
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    assert_eq!(data.train.image(3)[100], pixel(3, 100));
    assert_eq!(data.train.image(59_999)[783], pixel(59_999, 783));
    assert_eq!(data.test.labels[4], 4);
    assert_eq!(data.test.labels[9_999], 9);

    let again = dl
        .fetch(DatasetKind::Mnist, &root, &mut NoProgress)
        .unwrap();
    assert!(again.fetched.is_empty());
    assert_eq!(again.present.len(), 4);
    assert_eq!(server.hits().len(), 4, "a second call must not fetch again");
}

#[test]
fn a_present_file_with_the_wrong_digest_is_fetched_again_alone() {
    let (files, server, dl) = idx_setup(3, 2);
    let tmp = tempfile::tempdir().unwrap();
    dl.fetch(DatasetKind::Mnist, tmp.path(), &mut NoProgress)
        .unwrap();
    let victim = tmp.path().join("mnist").join(&files[1].0);
    std::fs::write(&victim, b"damaged").unwrap();

    // Without an earlier record too, the new one lists the files found intact as well.
    std::fs::remove_file(tmp.path().join("mnist").join(SUMS_FILE)).unwrap();

    let report = dl
        .fetch(DatasetKind::Mnist, tmp.path(), &mut NoProgress)
        .unwrap();
    assert_eq!(report.fetched, vec![files[1].0.clone()]);
    assert_eq!(std::fs::read(&victim).unwrap(), files[1].1);
    assert_eq!(server.hits().len(), 5);
    assert_eq!(record(&tmp.path().join("mnist")), sums_of(&files));
}

/// The lines of the `SHA256SUMS` record in `dir`.
fn record(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(SUMS_FILE))
        .unwrap_or_else(|e| panic!("{}: no {SUMS_FILE}: {e}", dir.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The record `sha256sum` would write for `files`, sorted by name.
fn sums_of(files: &[Served]) -> Vec<String> {
    let mut files: Vec<&Served> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
        .iter()
        .map(|(name, bytes, _)| format!("{}  {name}", sha256(bytes)))
        .collect()
}

#[test]
fn load_refuses_a_downloaded_file_that_changed_and_data_without_a_record_loads_as_is() {
    // Raw (not gzipped) IDX files under the names the loader reads, so that changing one
    // pixel still leaves a readable dataset: only the record can tell.
    let files: Vec<Served> = idx_files(60_000, 10_000)
        .into_iter()
        .map(|(name, bytes)| {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut raw)
                .unwrap();
            (name.trim_end_matches(".gz").to_owned(), raw, vec![])
        })
        .collect();
    let (_server, dl) = setup(DatasetKind::Mnist, &files);
    let tmp = tempfile::tempdir().unwrap();
    let report = dl
        .fetch(DatasetKind::Mnist, tmp.path(), &mut NoProgress)
        .unwrap();
    let dir = report.dir;
    assert_eq!(record(&dir), sums_of(&files), "in sha256sum's format");
    load(DatasetKind::Mnist, &dir).unwrap();

    // One byte of one image changes: a valid dataset still, but not the one downloaded.
    let victim = dir.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[16 + 5] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let err = load(DatasetKind::Mnist, &dir).unwrap_err();
    assert!(
        matches!(err, DataError::ChangedSinceDownload { .. }),
        "{err}"
    );
    let expected = sha256(
        &files
            .iter()
            .find(|f| f.0 == "train-images-idx3-ubyte")
            .unwrap()
            .1,
    );
    assert_msg(
        &err,
        &[
            &victim.display().to_string(),
            &expected,
            &sha256(&bytes),
            "changed since it was downloaded and verified",
            SUMS_FILE,
        ],
    );

    // Without the record the directory is the user's data: loaded as it is.
    std::fs::remove_file(dir.join(SUMS_FILE)).unwrap();
    let data = load(DatasetKind::Mnist, &dir).unwrap();
    assert_eq!(data.train.image(0)[5], pixel(0, 5) ^ 0xff);
}

#[test]
fn a_damaged_record_is_an_error_naming_it() {
    let (_files, _server, dl) = idx_setup(3, 2);
    let tmp = tempfile::tempdir().unwrap();
    let dir = dl
        .fetch(DatasetKind::Mnist, tmp.path(), &mut NoProgress)
        .unwrap()
        .dir;
    let path = dir.join(SUMS_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("  ", " ", 1)).unwrap();
    let err = load(DatasetKind::Mnist, &dir).unwrap_err();
    assert!(matches!(err, DataError::SumsFile { .. }), "{err}");
    assert_msg(&err, &[&path.display().to_string(), "line 1"]);
}

#[test]
fn cifar_archives_are_verified_unpacked_and_load() {
    for kind in [DatasetKind::Cifar10, DatasetKind::Cifar100] {
        let archive = cifar_archive(kind);
        let (server, dl) = setup(kind, std::slice::from_ref(&archive));
        let tmp = tempfile::tempdir().unwrap();

        let report = dl.fetch(kind, tmp.path(), &mut NoProgress).unwrap();
        assert_eq!(report.fetched, vec![archive.0.clone()]);
        for m in &archive.2 {
            assert!(report.dir.join(m).is_file(), "{kind}: {m} unpacked");
        }
        assert!(
            !report.dir.join(&archive.0).exists(),
            "the archive is not kept"
        );
        assert_eq!(
            tree(tmp.path())
                .iter()
                .filter(|p| p.starts_with('.'))
                .count(),
            0
        );

        let dir = locate(kind, Some(tmp.path())).unwrap();
        let data = load(kind, &dir).unwrap();
        assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
        assert_eq!(data.test.labels[..4], [0, 1, 2, 3]);
        assert_eq!(data.train.image(2)[5], pixel(2, 5));
        // CIFAR-10's second batch starts again at record 0 of its file.
        let i = 10_001;
        let first = if kind == DatasetKind::Cifar10 { 1 } else { i };
        assert_eq!(data.train.image(i)[9], pixel(first, 9));
        assert_eq!(usize::from(data.train.labels[i]), first % 10);

        let again = dl.fetch(kind, tmp.path(), &mut NoProgress).unwrap();
        assert!(again.fetched.is_empty());
        assert_eq!(server.hits().len(), 1, "{kind}: fetched once");

        // The record lists what was unpacked (the archive is gone), as hashed then.
        let listed = record(&dir);
        for m in &archive.2 {
            let line = format!("{}  {m}", sha256(&std::fs::read(dir.join(m)).unwrap()));
            assert!(listed.contains(&line), "{kind}: {line:?} in {listed:?}");
        }
        let victim = dir.join(archive.2.last().unwrap());
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&victim, &bytes).unwrap();
        let err = load(kind, &dir).unwrap_err();
        assert!(
            matches!(err, DataError::ChangedSinceDownload { .. }),
            "{err}"
        );
        assert_msg(&err, &[&victim.display().to_string(), "changed since"]);
    }
}

/// Serves the MNIST files with `last` replaced by `reply` (the last file in manifest
/// order, so that three good files have arrived before it fails).
fn failing(reply: impl Fn(&[u8]) -> Reply) -> (Server, Downloader, String) {
    let files = idx_files(3, 2);
    let mut manifest = String::new();
    let mut routes = HashMap::new();
    for (i, (name, bytes)) in files.iter().enumerate() {
        manifest.push_str(&entry(DatasetKind::Mnist, name, bytes, &[]));
        let r = if i == files.len() - 1 {
            reply(bytes)
        } else {
            Reply::Body(bytes.clone())
        };
        routes.insert(format!("/mnist/{name}"), r);
    }
    let server = Server::start(routes);
    let dl = Downloader::new(
        Manifest::parse(&manifest, "test").unwrap(),
        Source::Mirror(server.base()),
    );
    (server, dl, files[files.len() - 1].0.clone())
}

/// Runs a download expected to fail into a fresh root and checks nothing is left.
fn fails_leaving_nothing(dl: &Downloader) -> DataError {
    let tmp = tempfile::tempdir().unwrap();
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let fresh = tmp.path().join("fresh");
    let err = dl
        .fetch(DatasetKind::Mnist, &existing, &mut NoProgress)
        .unwrap_err();
    assert_eq!(
        tree(&existing),
        Vec::<String>::new(),
        "nothing left behind: {err}"
    );
    dl.fetch(DatasetKind::Mnist, &fresh, &mut NoProgress)
        .unwrap_err();
    assert!(
        !fresh.exists(),
        "a root made for the download is removed again"
    );
    err
}

#[test]
fn a_corrupt_file_is_a_checksum_error_naming_it() {
    let (_server, dl, name) = failing(|b| {
        let mut b = b.to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        Reply::Body(b)
    });
    let err = fails_leaving_nothing(&dl);
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert_msg(&err, &[&name, "SHA-256", "/mnist/", "deleted"]);
}

#[test]
fn a_file_of_the_wrong_size_is_refused() {
    let (_server, dl, name) = failing(|b| Reply::Body(b[..b.len() - 1].to_vec()));
    let err = fails_leaving_nothing(&dl);
    assert!(matches!(err, DataError::DownloadSize { .. }), "{err}");
    assert_msg(&err, &[&name, "wrong size"]);
}

#[test]
fn a_transfer_that_breaks_off_is_a_truncated_error() {
    let (_server, dl, name) = failing(|b| Reply::BreaksOff {
        body: b[..b.len() / 2].to_vec(),
        claimed: b.len(),
    });
    let err = fails_leaving_nothing(&dl);
    assert!(matches!(err, DataError::DownloadTruncated { .. }), "{err}");
    assert_msg(&err, &[&name, "truncated", "broke off"]);
}

#[test]
fn http_errors_name_the_url_and_status() {
    for (code, why) in [(404, "Not Found"), (500, "Internal Server Error")] {
        let (server, dl, name) = failing(|_| Reply::Status(code, why));
        let err = fails_leaving_nothing(&dl);
        assert!(matches!(err, DataError::HttpStatus { .. }), "{err}");
        let url = format!("{}/mnist/{name}", server.base());
        assert_msg(&err, &[&url, &code.to_string(), why]);
    }
}

#[test]
fn no_server_is_a_could_not_connect_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // dropped: nothing listens there now
    let files: Vec<_> = idx_files(2, 2)
        .into_iter()
        .map(|(n, b)| entry(DatasetKind::Mnist, &n, &b, &[]))
        .collect();
    let dl = Downloader::new(
        Manifest::parse(&files.concat(), "test").unwrap(),
        Source::Mirror(format!("http://127.0.0.1:{port}")),
    );
    let err = fails_leaving_nothing(&dl);
    assert!(matches!(err, DataError::Connect { .. }), "{err}");
    assert_msg(
        &err,
        &["could not connect", &format!("127.0.0.1:{port}/mnist/")],
    );
}

#[test]
fn a_file_without_a_digest_is_refused_before_any_request() {
    let files = idx_files(3, 2);
    let mut manifest: String = files
        .iter()
        .map(|(n, b)| entry(DatasetKind::Mnist, n, b, &[]))
        .collect();
    manifest = manifest.replacen(&format!("sha256 = \"{}\"\n", sha256(&files[2].1)), "", 1);
    let server = Server::start(HashMap::new());
    let dl = Downloader::new(
        Manifest::parse(&manifest, "test").unwrap(),
        Source::Mirror(server.base()),
    );
    let tmp = tempfile::tempdir().unwrap();
    let err = dl
        .fetch(DatasetKind::Mnist, tmp.path(), &mut NoProgress)
        .unwrap_err();
    assert!(matches!(err, DataError::NoChecksum { .. }), "{err}");
    assert_msg(&err, &[&files[2].0, "refusing"]);
    assert!(server.hits().is_empty());
}

#[test]
fn locate_or_download_prefers_local_data_and_reports_both_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = |explicit: Option<&Path>| SearchPaths {
        explicit: explicit.map(Path::to_path_buf),
        tulip_data: None,
        cwd: tmp.path().to_path_buf(),
        system_fashion_mnist: tmp.path().join("no-system-copy"),
    };
    let kind = DatasetKind::Mnist;

    // Without a downloader: the plain not-found error.
    let err = locate_or_download_with(&paths(None), None, kind, &mut NoProgress).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");

    // With an unreachable source: both what failed and where it was looked for.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let committed = Manifest::committed().unwrap();
    let offline = Downloader::new(
        committed,
        Source::Mirror(format!("http://127.0.0.1:{port}")),
    );
    let err =
        locate_or_download_with(&paths(None), Some(&offline), kind, &mut NoProgress).unwrap_err();
    assert!(matches!(err, DataError::DownloadFailed { .. }), "{err}");
    assert_msg(
        &err,
        &[
            "could not connect",
            "Looked in",
            "data/mnist",
            "cargo xtask download",
        ],
    );
    assert!(!tmp.path().join("data").exists());

    // With a working source: downloaded into <cwd>/data/<name>, or <explicit>/<name>.
    let (_files, server, dl) = idx_setup(3, 2);
    let dir = locate_or_download_with(&paths(None), Some(&dl), kind, &mut NoProgress).unwrap();
    assert_eq!(dir, tmp.path().join("data").join("mnist"));
    let mine = tmp.path().join("mine");
    let dir =
        locate_or_download_with(&paths(Some(&mine)), Some(&dl), kind, &mut NoProgress).unwrap();
    assert_eq!(dir, mine.join("mnist"));
    assert_eq!(server.hits().len(), 8);

    // Found locally: no request at all.
    locate_or_download_with(&paths(None), Some(&dl), kind, &mut NoProgress).unwrap();
    assert_eq!(server.hits().len(), 8);
}

#[test]
fn the_committed_manifest_covers_every_dataset_with_digests() {
    let m = Manifest::committed().unwrap();
    for kind in DatasetKind::ALL {
        let files: Vec<_> = m.files_of(kind).collect();
        assert!(!files.is_empty(), "{kind} has files");
        // Touching the files (or archive members) the manifest promises must make the
        // directory count for `locate`: the manifest and the loader agree on names.
        let tmp = tempfile::tempdir().unwrap();
        for f in &files {
            let sha = f
                .sha256
                .as_deref()
                .unwrap_or_else(|| panic!("{kind} {}: no sha256", f.name));
            assert!(
                sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                "{kind} {}: {sha:?} is not a SHA-256 digest",
                f.name
            );
            assert!(f.size > 0 && f.url.starts_with("http"), "{kind} {}", f.name);
            assert!(
                f.source.is_some(),
                "{kind} {}: the digest's source is noted",
                f.name
            );
            match f.unpack {
                Unpack::None => {
                    std::fs::write(tmp.path().join(&f.name), b"").unwrap();
                }
                Unpack::TarGz => {
                    for member in &f.members {
                        let p = tmp.path().join(member);
                        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                        std::fs::write(p, b"").unwrap();
                    }
                }
            }
        }
        locate(kind, Some(tmp.path())).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}
