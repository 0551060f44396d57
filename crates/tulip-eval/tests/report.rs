//! Attack reports, certificate checks and SVG plots.

use tulip_eval::plot::{certified_scatter, robustness_curves, write_svg, Series};
use tulip_eval::{
    certificate_violations, certified_pairs, fraction_misclassified, misclassification_curve,
    read_attack_csv, read_certified_csv, write_attack_csv, write_certified_csv, AttackOutcome,
    AttackStatus, AttackSummary, CertifiedImage, Norm,
};

/// Two already misclassified (0), four found, two failed.
fn records() -> Vec<AttackOutcome> {
    vec![
        AttackOutcome::found(0, 3, 5, 0.5, 0.05),
        AttackOutcome::already_misclassified(1, 2, 7),
        AttackOutcome::failed(2, 1, 1),
        AttackOutcome::found(3, 0, 6, 1.5, 0.2),
        AttackOutcome::found(4, 9, 8, 1.0, 0.1),
        AttackOutcome::failed(5, 4, 4),
        AttackOutcome::already_misclassified(6, 5, 3),
        AttackOutcome::found(7, 7, 1, 2.0, 0.3),
    ]
}

#[test]
fn median_and_mean_exclude_failures_and_count_them() {
    let s = AttackSummary::new("test", &records(), &[0.0, 0.75, 1.0, 10.0], &[0.1]);
    assert_eq!(
        (s.images, s.found, s.already_misclassified, s.failed),
        (8, 4, 2, 2)
    );
    // L2 over {0, 0, 0.5, 1.0, 1.5, 2.0}: median (0.5 + 1.0)/2, mean 5/6.
    assert_eq!(s.l2.median, Some(0.75));
    assert!((s.l2.mean.unwrap() - 5.0 / 6.0).abs() < 1e-12);
    assert!((s.linf.median.unwrap() - 0.075).abs() < 1e-15);
    let fr: Vec<f64> = s.misclassified_at_l2.iter().map(|f| f.fraction).collect();
    // ε = 0: the two already misclassified; 0.75: + 0.5; 1.0: + 1.0 (≤); 10: all but failures.
    assert_eq!(fr, vec![2.0 / 8.0, 3.0 / 8.0, 4.0 / 8.0, 6.0 / 8.0]);
    assert_eq!(s.misclassified_at_linf[0].fraction, 4.0 / 8.0);
    assert_eq!(fraction_misclassified(&[], Norm::L2, 1.0), 0.0);

    let table = s.to_table();
    assert!(table.contains("failed (not counted)    2"), "{table}");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("summary.json");
    s.write_json(&path).unwrap();
    let back: AttackSummary =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, s);

    let none = AttackSummary::new("x", &[AttackOutcome::failed(0, 1, 1)], &[], &[]);
    assert_eq!((none.l2.median, none.l2.mean), (None, None));
}

#[test]
fn attack_csv_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("attack.csv");
    let recs = records();
    write_attack_csv(&path, &recs).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("index,label,predicted,l2,linf,success\n"));
    assert!(text.contains("\n2,1,1,NaN,NaN,0\n"), "{text}");
    let back = read_attack_csv(&path).unwrap();
    assert_eq!(back.len(), recs.len());
    for (a, b) in recs.iter().zip(&back) {
        assert_eq!(
            (
                a.index,
                a.label,
                a.clean_prediction,
                a.adversarial_prediction,
                a.status
            ),
            (
                b.index,
                b.label,
                b.clean_prediction,
                b.adversarial_prediction,
                b.status
            )
        );
        assert_eq!(a.distance(Norm::L2), b.distance(Norm::L2));
        assert_eq!(a.distance(Norm::Linf), b.distance(Norm::Linf));
    }
    std::fs::write(&path, "index,label\n1,2\n").unwrap();
    assert!(read_attack_csv(&path)
        .unwrap_err()
        .to_string()
        .contains("header"));
    std::fs::write(
        &path,
        "index,label,predicted,l2,linf,success\n1,2,3,x,0,1\n",
    )
    .unwrap();
    assert!(read_attack_csv(&path)
        .unwrap_err()
        .to_string()
        .contains("line 2"));
}

#[test]
fn curve_is_the_step_function_of_the_fractions() {
    let recs = records();
    let c = misclassification_curve(&recs, Norm::L2);
    assert_eq!(c[0], (0.0, 0.25));
    assert_eq!(c.last(), Some(&(2.0, 0.75)));
    for &(eps, frac) in c.iter().skip(1).step_by(2) {
        // The lower corner of each step is the fraction just below ε.
        assert_eq!(frac, fraction_misclassified(&recs, Norm::L2, eps - 1e-9));
    }
    for &(eps, frac) in c.iter().skip(2).step_by(2) {
        assert_eq!(frac, fraction_misclassified(&recs, Norm::L2, eps));
    }
}

fn certified() -> Vec<CertifiedImage> {
    [(0, 0.2), (2, 0.3), (3, 1.2), (4, 0.9), (7, 0.5)]
        .iter()
        .map(|&(index, lower_bound)| CertifiedImage {
            index,
            label: 0,
            margin: 2.0 * lower_bound,
            lower_bound,
        })
        .collect()
}

#[test]
fn violations_are_the_images_attacked_below_their_bound() {
    let recs = records();
    let cert = certified();
    // Image 3: attack 1.5 ≥ 1.2; 4: 1.0 ≥ 0.9; 7: 2.0 ≥ 0.5; 0: 0.5 ≥ 0.2; 2 failed.
    assert!(certificate_violations(&cert, &recs).is_empty());
    assert_eq!(certified_pairs(&cert, &recs).len(), 4);
    let mut bad = cert.clone();
    bad[3].lower_bound = 1.1; // image 4 was attacked at 1.0
    let v = certificate_violations(&bad, &recs);
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].index, v[0].attack_distance, v[0].lower_bound),
        (4, 1.0, 1.1)
    );
    // At the bound exactly (up to rounding) is not a violation.
    bad[3].lower_bound = 1.0 + 1e-12;
    assert!(certificate_violations(&bad, &recs).is_empty());
    // A certified image recorded as already misclassified is a violation (distance 0).
    let mut recs2 = recs.clone();
    recs2[0] = AttackOutcome::already_misclassified(0, 3, 5);
    assert_eq!(certificate_violations(&cert, &recs2)[0].index, 0);

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("certified.csv");
    write_certified_csv(&path, &cert).unwrap();
    assert_eq!(read_certified_csv(&path).unwrap(), cert);
}

/// Minimal well-formedness: an `<svg …>` root closed at the end, balanced `<g>`, and one
/// polyline per series.
fn check_svg(svg: &str) {
    assert!(svg.starts_with("<svg "), "{}", &svg[..40]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches("<g>").count(), svg.matches("</g>").count());
    let opens = svg.matches('<').count();
    let closes = svg.matches('>').count();
    assert_eq!(opens, closes, "unbalanced angle brackets");
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn svg_plots_are_well_formed_with_one_polyline_per_series() {
    let recs = records();
    let mut other = recs.clone();
    other[2] = AttackOutcome::found(2, 1, 0, 3.0, f64::INFINITY);
    let series = vec![
        Series::new(
            "DeepFool <L2> & co",
            misclassification_curve(&recs, Norm::L2),
        ),
        Series::new("run b", misclassification_curve(&other, Norm::L2)),
        Series::new("empty", Vec::new()),
    ];
    let svg = robustness_curves(Norm::L2, &series);
    check_svg(&svg);
    assert_eq!(svg.matches("<polyline").count(), 3);
    assert!(svg.contains("DeepFool &lt;L2&gt; &amp; co"));
    let linf = robustness_curves(
        Norm::Linf,
        &[Series::new(
            "a",
            misclassification_curve(&other, Norm::Linf),
        )],
    );
    check_svg(&linf);
    assert!(linf.contains("L∞"));

    let pairs: Vec<(f64, f64)> = certified_pairs(&certified(), &recs)
        .into_iter()
        .map(|(_, d, b)| (d, b))
        .collect();
    let scatter = certified_scatter(&pairs);
    check_svg(&scatter);
    assert_eq!(
        scatter.matches("<circle").count(),
        pairs.len() + 1,
        "points + legend"
    );
    assert!(scatter.contains("stroke-dasharray"), "the y = x line");
    check_svg(&certified_scatter(&[]));

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("curve.svg");
    write_svg(&path, &svg).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
    assert_eq!(AttackStatus::Found, recs[0].status);
}

/// Every report writer replaces its file through a new file and a rename: a second name
/// (hard link) for the old file keeps the old contents, which an in-place rewrite
/// (truncate, then write: a 0-byte or partial file if the disk fills up) would change.
#[test]
fn every_writer_replaces_its_file_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let certified = [CertifiedImage {
        index: 0,
        label: 1,
        margin: 0.5,
        lower_bound: 0.25,
    }];
    let nn = tulip_eval::NearestNeighbours {
        labels: vec![1, 2],
        distances: vec![0.5, 1.5],
        neighbours: vec![Some(1), Some(0)],
    };
    let summary = AttackSummary::new("x", &records(), &[1.0], &[0.1]);
    type Writer<'a> = Box<dyn Fn(&std::path::Path) -> tulip_eval::Result<()> + 'a>;
    let writers: Vec<(&str, Writer<'_>)> = vec![
        ("attack.csv", Box::new(|p| write_attack_csv(p, &records()))),
        ("attack.json", Box::new(|p| summary.write_json(p))),
        (
            "value.json",
            Box::new(|p| tulip_eval::write_json(p, &[1, 2])),
        ),
        (
            "certified.csv",
            Box::new(|p| write_certified_csv(p, &certified)),
        ),
        ("plot.svg", Box::new(|p| write_svg(p, "<svg/>\n"))),
        ("nn.csv", Box::new(|p| nn.write_csv(p))),
    ];
    for (name, write) in writers {
        let path = tmp.path().join(name);
        std::fs::write(&path, "old contents\n").unwrap();
        let old = tmp.path().join(format!("{name}.old"));
        std::fs::hard_link(&path, &old).unwrap();
        write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&old).unwrap(),
            "old contents\n",
            "{name} was rewritten in place"
        );
        assert_ne!(std::fs::read_to_string(&path).unwrap(), "old contents\n");
        assert!(
            !tmp.path().join(format!("{name}.tmp")).exists(),
            "{name}: temporary file left behind"
        );
    }
}
