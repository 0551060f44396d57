//! `cargo xtask download <dataset>... [--dir data] [--mirror URL]`.
//!
//! A thin front end to [`tulip_data::download`], which does the work (and is what
//! `tulip train` uses when a dataset is missing): fetch, verify against
//! `data/manifest.toml`, unpack into `<dir>/<dataset>/`, all or nothing per dataset.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};
use tulip_data::download::{BarProgress, Downloader, Manifest, NoProgress, Progress, Source};
use tulip_data::DatasetKind;

/// Arguments of `cargo xtask download`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cargo xtask download mnist
  cargo xtask download all --dir /srv/data
  cargo xtask download cifar10 --mirror http://mirror.example/tulip   # <URL>/cifar10/<file>")]
pub struct DownloadArgs {
    /// Datasets to fetch (`all` for every one).
    #[arg(required = true, value_name = "DATASET", value_parser = parse_target)]
    datasets: Vec<Target>,
    /// Data root: each dataset goes into DIR/<dataset>/ (where `tulip` looks by default).
    #[arg(long, value_name = "DIR", default_value = tulip_data::download::DEFAULT_ROOT)]
    dir: PathBuf,
    /// Fetch every file from URL/<dataset>/<file> instead of its canonical URL (default:
    /// $TULIP_DATA_MIRROR if set). Files are verified against the manifest either way.
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
}

/// A dataset or every dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    All,
    One(DatasetKind),
}

fn parse_target(s: &str) -> Result<Target, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(Target::All);
    }
    DatasetKind::from_str(s, true)
        .map(Target::One)
        .map_err(|_| {
            let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
            format!(
                "unknown dataset {s:?}: expected one of {}, or all",
                names.join(", ")
            )
        })
}

impl DownloadArgs {
    /// The datasets asked for, each once, in the order of [`DatasetKind::ALL`].
    fn kinds(&self) -> Vec<DatasetKind> {
        DatasetKind::ALL
            .into_iter()
            .filter(|k| {
                self.datasets
                    .iter()
                    .any(|t| *t == Target::All || *t == Target::One(*k))
            })
            .collect()
    }

    fn source(&self) -> Source {
        match &self.mirror {
            Some(url) => Source::Mirror(url.clone()),
            None => Source::from_env(),
        }
    }
}

/// Fetches every dataset asked for; one failing does not stop the others. The manifest is
/// the committed one unless `$TULIP_DATA_MANIFEST` names another.
///
/// # Errors
/// If any dataset could not be fetched (each failure is printed as it happens).
pub fn run(args: &DownloadArgs) -> anyhow::Result<()> {
    let downloader = Downloader::new(Manifest::from_env()?, args.source());
    let mut bar = BarProgress::new();
    let mut silent = NoProgress;
    let progress: &mut dyn Progress = if args.quiet { &mut silent } else { &mut bar };
    let mut failed = Vec::new();
    for kind in args.kinds() {
        match downloader.fetch(kind, &args.dir, progress) {
            Ok(report) if !args.quiet => {
                if !report.fetched.is_empty() {
                    eprintln!(
                        "{kind}: {} file(s) downloaded and verified into {}",
                        report.fetched.len(),
                        report.dir.display()
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {kind}: {e}");
                failed.push(kind.name());
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not download {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: DownloadArgs,
    }

    fn parse(argv: &[&str]) -> Result<DownloadArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("download").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn datasets_and_all() {
        let a = parse(&["cifar10", "mnist", "mnist"]).unwrap();
        assert_eq!(a.kinds(), vec![DatasetKind::Mnist, DatasetKind::Cifar10]);
        assert_eq!(a.dir, PathBuf::from("data"));
        let a = parse(&["all", "--dir", "/x"]).unwrap();
        assert_eq!(a.kinds(), DatasetKind::ALL.to_vec());
        assert_eq!(a.dir, PathBuf::from("/x"));
        let err = parse(&["imagenet"]).unwrap_err().to_string();
        assert!(
            err.contains("fashion-mnist, mnist, cifar10, cifar100, or all"),
            "{err}"
        );
        assert!(parse(&[]).is_err(), "a dataset is required");
    }

    #[test]
    fn mirror_flag_wins() {
        let a = parse(&["mnist", "--mirror", "http://m.example/t"]).unwrap();
        assert_eq!(a.source(), Source::Mirror("http://m.example/t".into()));
    }

    #[test]
    fn an_unreachable_mirror_fails_naming_the_dataset_and_leaves_nothing() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tmp = std::env::temp_dir().join(format!("xtask-download-test-{}", std::process::id()));
        let mirror = format!("http://127.0.0.1:{port}");
        let a = parse(&[
            "mnist",
            "--quiet",
            "--dir",
            tmp.to_str().unwrap(),
            "--mirror",
            &mirror,
        ])
        .unwrap();
        let err = run(&a).unwrap_err().to_string();
        assert!(err.contains("could not download mnist"), "{err}");
        assert!(!tmp.exists(), "nothing left behind");
    }
}
