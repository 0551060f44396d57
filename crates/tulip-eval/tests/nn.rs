//! Nearest-different-label distances against a brute-force double loop.

use candle_core::Device;
use tulip_data::Split;
use tulip_eval::{nearest_different_label, NnOptions};

/// A small split with pseudo-random pixels, some exact duplicates (with the same and with
/// different labels) and few labels, so same-label pairs are common.
fn split(n: usize, seed: u64, dup_of: Option<&Split>) -> Split {
    let shape = (1, 3, 5);
    let d = 15;
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 33) as u32
    };
    let mut images = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (next() % 3) as u8;
        match dup_of {
            // Every fifth image copies an image of the other split (its label may or may
            // not differ): a distance of exactly 0 when it does.
            Some(o) if i % 5 == 0 => images.extend_from_slice(o.image(i % o.len())),
            _ if i % 7 == 3 && i > 0 => {
                let prev = images[(i - 1) * d..i * d].to_vec();
                images.extend_from_slice(&prev);
            }
            _ => images.extend((0..d).map(|_| (next() % 256) as u8)),
        }
        labels.push(label);
    }
    Split::new(images, labels, shape).unwrap()
}

fn brute_force(q: &Split, r: &Split) -> Vec<f64> {
    (0..q.len())
        .map(|i| {
            let a = q.image_f32(i);
            (0..r.len())
                .filter(|&j| r.labels[j] != q.labels[i])
                .map(|j| {
                    let b = r.image_f32(j);
                    a.iter()
                        .zip(&b)
                        .map(|(x, y)| f64::from(x - y).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.max(1.0) || (g.is_infinite() && w.is_infinite()),
            "query {i}: blocked {g}, brute force {w}"
        );
    }
}

#[test]
fn test_against_train_matches_brute_force_for_awkward_block_sizes() {
    let train = split(53, 1, None);
    let test = split(31, 2, Some(&train));
    let want = brute_force(&test, &train);
    assert!(
        want.contains(&0.0),
        "the data should hold a cross-label duplicate"
    );
    for (qb, rb) in [(1000, 10_000), (7, 11), (1, 53), (31, 1), (4, 52)] {
        let mut calls = Vec::new();
        let got = nearest_different_label(
            &test,
            &train,
            &NnOptions {
                query_block: qb,
                reference_block: rb,
            },
            &Device::Cpu,
            &mut |done, total| calls.push((done, total)),
        )
        .unwrap();
        assert_close(&got.distances, &want);
        let total = 31usize.div_ceil(qb) * 53usize.div_ceil(rb);
        assert_eq!(calls.last(), Some(&(total, total)), "blocks {qb}×{rb}");
        assert_eq!(calls.len(), total);
        for (i, n) in got.neighbours.iter().enumerate() {
            let n = n.expect("every query has a neighbour of another label");
            assert_ne!(train.labels[n], test.labels[i]);
        }
    }
}

#[test]
fn train_against_train_excludes_the_image_itself_and_same_labels() {
    let train = split(40, 3, None);
    let want = brute_force(&train, &train);
    let got = nearest_different_label(
        &train,
        &train,
        &NnOptions {
            query_block: 9,
            reference_block: 13,
        },
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    assert_close(&got.distances, &want);
    // Same-label duplicates (i % 7 == 3 copies i - 1) never give distance 0 unless the
    // labels differ.
    for i in (3..40).step_by(7) {
        if train.labels[i] == train.labels[i - 1] {
            assert!(got.distances[i] > 0.0);
        }
    }
}

#[test]
fn statistics_skip_zero_distances_for_the_lipschitz_constant() {
    let train = split(53, 1, None);
    let test = split(31, 2, Some(&train));
    let got = nearest_different_label(
        &test,
        &train,
        &NnOptions::default(),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    let stats = got.stats().unwrap();
    let mut d = brute_force(&test, &train);
    d.sort_by(f64::total_cmp);
    let zeros = d.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 0);
    assert_eq!(stats.zero_distance, zeros);
    assert_eq!(stats.images, 31);
    assert!((stats.median - d[15]).abs() < 1e-6);
    assert!((stats.mean - d.iter().sum::<f64>() / 31.0).abs() < 1e-6);
    let min_pos = d.iter().copied().find(|&v| v > 0.0).unwrap();
    assert!((stats.data_lipschitz.unwrap() - 1.0 / min_pos).abs() < 1e-6 / min_pos);

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nn.csv");
    got.write_csv(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "index,label,distance");
    assert_eq!(lines.len(), 32);
    let row: Vec<f64> = lines[5].split(',').map(|c| c.parse().unwrap()).collect();
    assert_eq!(row, vec![4.0, f64::from(test.labels[4]), got.distances[4]]);
}

#[test]
fn a_query_whose_labels_are_all_its_own_has_no_neighbour_and_bad_input_is_an_error() {
    let r = Split::new(vec![0, 0, 10, 10], vec![1, 1], (1, 1, 2)).unwrap();
    let q = Split::new(vec![5, 5, 1, 1], vec![1, 0], (1, 1, 2)).unwrap();
    let got = nearest_different_label(&q, &r, &NnOptions::default(), &Device::Cpu, &mut |_, _| {})
        .unwrap();
    assert!(got.distances[0].is_infinite() && got.neighbours[0].is_none());
    assert!((got.distances[1] - 2f64.sqrt() / 255.0).abs() < 1e-12);
    let stats = got.stats().unwrap();
    assert_eq!((stats.images, stats.without_neighbour), (1, 1));
    assert!(stats.mean.is_finite() && stats.median.is_finite());

    // No query with a neighbour: no statistics (their mean and median were NaN).
    let same = Split::new(vec![5, 5, 1, 1], vec![1, 1], (1, 1, 2)).unwrap();
    let none = nearest_different_label(
        &same,
        &r,
        &NnOptions::default(),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(none.distances.iter().all(|d| d.is_infinite()));
    let err = none.stats().unwrap_err();
    assert!(
        err.to_string().contains("none of the 2 query images"),
        "{err}"
    );

    let other = Split::new(vec![0; 3], vec![0], (1, 1, 3)).unwrap();
    let zero = NnOptions {
        query_block: 0,
        reference_block: 1,
    };
    for (q, r, o) in [(&q, &other, NnOptions::default()), (&q, &r, zero)] {
        assert!(nearest_different_label(q, r, &o, &Device::Cpu, &mut |_, _| {}).is_err());
    }
}
