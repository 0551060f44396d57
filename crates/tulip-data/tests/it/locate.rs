//! Finding dataset directories. The search places are passed explicitly
//! ([`SearchPaths`]), so these tests neither read nor set environment variables.

use std::path::{Path, PathBuf};

use tulip_data::{locate, DataError, DatasetKind, SearchPaths};

use crate::{assert_msg, write, write_idx_dataset};

/// Search paths rooted in `tmp`: nothing explicit, no `$TULIP_DATA`, cwd `tmp/cwd`, a
/// fake system directory `tmp/system`.
fn paths(tmp: &Path) -> SearchPaths {
    SearchPaths {
        explicit: None,
        tulip_data: None,
        cwd: tmp.join("cwd"),
        system_fashion_mnist: tmp.join("system"),
    }
}

fn fmnist(dir: &Path) -> PathBuf {
    write_idx_dataset(dir, 1, 1, true);
    dir.to_path_buf()
}

#[test]
fn explicit_directory_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut p = paths(t);
    fmnist(&t.join("cwd/data/fashion-mnist"));
    fmnist(&t.join("system"));
    fmnist(&t.join("env/fashion-mnist"));
    p.tulip_data = Some(t.join("env"));
    let mine = fmnist(&t.join("mine"));
    p.explicit = Some(mine.clone());
    assert_eq!(p.locate(DatasetKind::FashionMnist).unwrap(), mine);
    // An explicit root holding <name>/ works too.
    p.explicit = Some(t.join("env"));
    assert_eq!(
        p.locate(DatasetKind::FashionMnist).unwrap(),
        t.join("env/fashion-mnist")
    );
    // The public wrapper with an explicit directory does not depend on the environment.
    assert_eq!(
        locate(DatasetKind::FashionMnist, Some(&mine)).unwrap(),
        mine
    );
}

#[test]
fn explicit_directory_without_data_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut p = paths(t);
    fmnist(&t.join("cwd/data/fashion-mnist"));
    p.explicit = Some(t.join("empty"));
    let err = p.locate(DatasetKind::FashionMnist).unwrap_err();
    let DataError::NotFound { looked, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(looked.len(), 2);
    assert_msg(&err, &["empty", "--data"]);
}

#[test]
fn tulip_data_root_then_itself_then_cwd_then_system() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut p = paths(t);
    let kind = DatasetKind::FashionMnist;
    p.tulip_data = Some(t.join("env"));

    let system = fmnist(&t.join("system"));
    assert_eq!(p.locate(kind).unwrap(), system);
    let cwd = fmnist(&t.join("cwd/data/fashion-mnist"));
    assert_eq!(p.locate(kind).unwrap(), cwd);
    let env_itself = fmnist(&t.join("env"));
    assert_eq!(p.locate(kind).unwrap(), env_itself);
    let env_sub = fmnist(&t.join("env/fashion-mnist"));
    assert_eq!(p.locate(kind).unwrap(), env_sub);
}

#[test]
fn system_directory_is_for_fashion_mnist_only() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    fmnist(&tmp.path().join("system"));
    assert!(p.locate(DatasetKind::FashionMnist).is_ok());
    let err = p.locate(DatasetKind::Mnist).unwrap_err();
    assert!(!err.to_string().contains("system"), "{err}");
}

#[test]
fn incomplete_directories_do_not_count() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let p = paths(t);
    let d = fmnist(&t.join("cwd/data/mnist"));
    std::fs::remove_file(d.join("train-labels-idx1-ubyte.gz")).unwrap();
    assert!(p.locate(DatasetKind::Mnist).is_err());
    // The raw file is as good as the .gz one.
    write(&d, "train-labels-idx1-ubyte", b"");
    assert_eq!(p.locate(DatasetKind::Mnist).unwrap(), d);
}

#[test]
fn cifar_directories_count_flat_or_unpacked() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut p = paths(t);
    write(
        t,
        "cwd/data/cifar10/cifar-10-batches-bin/data_batch_1.bin",
        b"",
    );
    assert_eq!(
        p.locate(DatasetKind::Cifar10).unwrap(),
        t.join("cwd/data/cifar10")
    );
    write(t, "flat/train.bin", b"");
    p.explicit = Some(t.join("flat"));
    assert_eq!(p.locate(DatasetKind::Cifar100).unwrap(), t.join("flat"));
    assert!(p.locate(DatasetKind::Cifar10).is_err());
    write(t, "cwd/data/cifar100/cifar-100-binary/train.bin", b"");
    p.explicit = None;
    assert_eq!(
        p.locate(DatasetKind::Cifar100).unwrap(),
        t.join("cwd/data/cifar100")
    );
}

#[test]
fn not_found_lists_places_and_remedies() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut p = paths(t);
    p.tulip_data = Some(t.join("env"));
    let err = p.locate(DatasetKind::FashionMnist).unwrap_err();
    let DataError::NotFound { dataset, looked } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*dataset, DatasetKind::FashionMnist);
    let dirs: Vec<&PathBuf> = looked.iter().map(|(d, _)| d).collect();
    let want = [
        t.join("env/fashion-mnist"),
        t.join("env"),
        t.join("cwd/data/fashion-mnist"),
        t.join("system"),
    ];
    assert_eq!(dirs, want.iter().collect::<Vec<_>>());
    let msg = err.to_string();
    for d in &want {
        assert!(msg.contains(&d.display().to_string()), "{msg}");
    }
    assert_msg(
        &err,
        &[
            "not found",
            "$TULIP_DATA",
            "sudo apt-get install dataset-fashion-mnist",
            "cargo xtask download fashion-mnist",
            "train-images-idx3-ubyte",
        ],
    );

    let err = p.locate(DatasetKind::Cifar100).unwrap_err();
    assert_msg(
        &err,
        &[
            "cifar100",
            "cargo xtask download cifar100",
            "cifar-100-binary",
        ],
    );
    assert!(!err.to_string().contains("apt-get"), "{err}");
}
