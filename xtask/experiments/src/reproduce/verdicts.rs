//! The paper's claims, each judged from the aggregated table.
//!
//! A difference between two settings is "beyond seed noise" when it exceeds the larger
//! seed spread of the two (a setting's spread is half the range of its seeds; a setting
//! trained from one seed is given the baseline's spread, the profile's measure of seed
//! noise). With no spread measured at all (one seed per setting), a verdict goes by the
//! sign of the difference alone, and says so.

use std::fmt::Write as _;

use super::results::{cell, Setting, Stat, Unit, LIPSCHITZ, MEDIAN_L2_CORRECT, TEST_ERROR};

/// The setting every other is compared with.
pub(super) const BASELINE: &str = "baseline";
/// The paper's best setting.
pub(super) const BEST: &str = "best";

/// The columns of a profile that some claims need, where it has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ClaimKeys {
    /// Median L2 DeepFool distance over correctly classified images.
    pub deepfool_l2: Option<String>,
    /// PGD L2 robust accuracy.
    pub pgd_l2: Option<String>,
}

/// The verdict on a claim, or on one line of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Holds,
    DoesNotHold,
    WithinNoise,
    /// A number it needs is missing (a run not finished yet).
    NotYetMeasured,
    /// The profile does not measure what it needs (e.g. runs no PGD L2 attack).
    NotInProfile,
}

impl Outcome {
    pub fn text(self) -> &'static str {
        match self {
            Outcome::Holds => "holds",
            Outcome::DoesNotHold => "does not hold",
            Outcome::WithinNoise => "within seed noise",
            Outcome::NotYetMeasured => "not yet measured",
            Outcome::NotInProfile => "not measured by this profile",
        }
    }
}

/// One line of a claim: a setting, or one measure.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Line {
    pub outcome: Outcome,
    /// The numbers behind it.
    pub text: String,
}

/// A claim of the paper and its verdict.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Claim {
    /// `a`, `b`, …
    pub id: &'static str,
    pub statement: String,
    /// Of the whole claim: see [`combine`].
    pub outcome: Outcome,
    pub lines: Vec<Line>,
}

/// A claim's verdict from its lines': "does not hold" if one does not; else "not yet
/// measured" if one is not; else "within seed noise" if one is; else "holds". Lines the
/// profile does not measure are left out (all of them: "not measured by this profile").
pub(super) fn combine(lines: &[Line]) -> Outcome {
    let measured: Vec<Outcome> = lines
        .iter()
        .map(|l| l.outcome)
        .filter(|o| *o != Outcome::NotInProfile)
        .collect();
    if measured.is_empty() {
        return if lines.is_empty() {
            Outcome::NotYetMeasured
        } else {
            Outcome::NotInProfile
        };
    }
    [
        Outcome::DoesNotHold,
        Outcome::NotYetMeasured,
        Outcome::WithinNoise,
    ]
    .into_iter()
    .find(|o| measured.contains(o))
    .unwrap_or(Outcome::Holds)
}

/// The verdict on a difference `diff` in the direction a claim predicts (positive: as
/// claimed) against the seed noise `noise`.
pub(super) fn judge(diff: f64, noise: f64) -> Outcome {
    if diff > noise {
        Outcome::Holds
    } else if diff < -noise || (noise == 0.0 && diff <= 0.0) {
        Outcome::DoesNotHold
    } else {
        Outcome::WithinNoise
    }
}

/// A setting's seed spread in `key`: its own with two seeds or more, else the baseline's.
fn spread(s: &Setting, baseline: Option<&Setting>, key: &str) -> Option<f64> {
    let own = s.stat(key).filter(|st| st.n >= 2);
    let reference = || baseline.and_then(|b| b.stat(key)).filter(|st| st.n >= 2);
    own.or_else(reference).map(|st| st.spread)
}

/// `a` against `b` in `key`, where the claim is that `a` is larger (`larger`) or smaller.
/// `None` if either has no value.
fn compare(
    a: &Setting,
    b: &Setting,
    baseline: Option<&Setting>,
    key: &str,
    larger: bool,
    unit: Unit,
) -> Option<Line> {
    let (sa, sb) = (a.stat(key)?, b.stat(key)?);
    let diff = sa.mean - sb.mean;
    let noise = match (spread(a, baseline, key), spread(b, baseline, key)) {
        (None, None) => None,
        (x, y) => Some(x.unwrap_or(0.0).max(y.unwrap_or(0.0))),
    };
    let outcome = judge(if larger { diff } else { -diff }, noise.unwrap_or(0.0));
    let direction = if diff > 0.0 {
        "higher"
    } else if diff < 0.0 {
        "lower"
    } else {
        "equal"
    };
    let noise_text = match noise {
        None => "one seed each, no seed spread measured".to_string(),
        Some(n) if diff.abs() > n => format!("beyond the seed spread ({})", unit.format(n)),
        Some(n) => format!("within the seed spread ({})", unit.format(n)),
    };
    Some(Line {
        outcome,
        text: format!(
            "{} {} vs {} {}: {} {direction}; {noise_text}",
            a.name,
            value(sa, unit, a),
            b.name,
            value(sb, unit, b),
            unit.format(diff.abs()),
        ),
    })
}

fn value(s: Stat, unit: Unit, setting: &Setting) -> String {
    cell(Some(s), unit, setting.runs.len())
}

fn not_yet(text: String) -> Line {
    Line {
        outcome: Outcome::NotYetMeasured,
        text,
    }
}

fn find<'a>(settings: &'a [Setting], name: &str) -> Option<&'a Setting> {
    settings.iter().find(|s| s.name == name)
}

/// Every setting but the baseline against it in `key`.
fn each_against_baseline(
    settings: &[Setting],
    key: &str,
    larger: bool,
    unit: Unit,
    what: &str,
) -> Vec<Line> {
    let baseline = find(settings, BASELINE);
    settings
        .iter()
        .filter(|s| s.name != BASELINE)
        .map(|s| {
            baseline
                .and_then(|b| compare(s, b, baseline, key, larger, unit))
                .map(|mut l| {
                    l.text = format!("{what}: {}", l.text);
                    l
                })
                .unwrap_or_else(|| not_yet(format!("{what}: {}", s.name)))
        })
        .collect()
}

/// The best setting against the strongest of the others in `key` (larger is better).
fn best_against_all(settings: &[Setting], key: Option<&str>, unit: Unit, what: &str) -> Line {
    let Some(key) = key else {
        return Line {
            outcome: Outcome::NotInProfile,
            text: format!("{what}: the profile does not measure it"),
        };
    };
    let baseline = find(settings, BASELINE);
    let Some(best) = find(settings, BEST).filter(|b| b.stat(key).is_some()) else {
        return not_yet(format!("{what}: {BEST}"));
    };
    let others: Vec<&Setting> = settings.iter().filter(|s| s.name != BEST).collect();
    let measured: Vec<&Setting> = others
        .iter()
        .copied()
        .filter(|s| s.stat(key).is_some())
        .collect();
    let Some(top) = measured.iter().copied().max_by(|a, b| {
        a.stat(key)
            .unwrap()
            .mean
            .total_cmp(&b.stat(key).unwrap().mean)
    }) else {
        return not_yet(format!("{what}: every setting but {BEST}"));
    };
    let mut line = compare(best, top, baseline, key, true, unit).expect("both have the value");
    line.text = format!("{what}, against the highest of the others: {}", line.text);
    let missing = others.len() - measured.len();
    if missing > 0 && line.outcome != Outcome::DoesNotHold {
        line.outcome = Outcome::NotYetMeasured;
        let _ = write!(line.text, " ({missing} other settings not yet measured)");
    }
    line
}

/// The claims, judged from `settings`.
pub(super) fn claims(settings: &[Setting], keys: &ClaimKeys) -> Vec<Claim> {
    let claim = |id, statement: &str, lines: Vec<Line>| Claim {
        id,
        statement: statement.to_string(),
        outcome: combine(&lines),
        lines,
    };
    let j2_over_j1 = match &keys.deepfool_l2 {
        None => Line {
            outcome: Outcome::NotInProfile,
            text: "median L2 DeepFool distance: the profile runs no deepfool:l2 attack".into(),
        },
        Some(key) => {
            let (j2, j1) = (find(settings, "j2"), find(settings, "j1"));
            let what = "median L2 DeepFool distance, correct images";
            match (j2, j1) {
                (Some(j2), Some(j1)) => {
                    compare(j2, j1, find(settings, BASELINE), key, true, Unit::Number)
                }
                _ => None,
            }
            .map(|mut l| {
                l.text = format!("{what}: {}", l.text);
                l
            })
            .unwrap_or_else(|| {
                let missing: Vec<&str> = [("j1", j1), ("j2", j2)]
                    .into_iter()
                    .filter(|(_, s)| s.and_then(|s| s.stat(key)).is_none())
                    .map(|(name, _)| name)
                    .collect();
                not_yet(format!("{what}: {}", missing.join(", ")))
            })
        }
    };
    vec![
        claim(
            "a",
            "Every regulariser lowers the Lipschitz estimate relative to the baseline",
            each_against_baseline(
                settings,
                LIPSCHITZ,
                false,
                Unit::Number,
                "Lipschitz estimate",
            ),
        ),
        claim(
            "b",
            "J2 gives larger median L2 DeepFool distances than J1",
            vec![j2_over_j1],
        ),
        claim(
            "c",
            "The best setting is the most robust in L2 of all settings",
            vec![
                best_against_all(
                    settings,
                    Some(MEDIAN_L2_CORRECT),
                    Unit::Number,
                    "median L2 distance, correct images",
                ),
                best_against_all(
                    settings,
                    keys.pgd_l2.as_deref(),
                    Unit::Percent,
                    "PGD L2 robust accuracy %",
                ),
            ],
        ),
        claim(
            "d",
            "Each regulariser has a price in clean accuracy: its test error is above the \
             baseline's (differences in percentage points)",
            each_against_baseline(settings, TEST_ERROR, true, Unit::Percent, "test error %"),
        ),
    ]
}

/// The claims as a section of results.md.
pub(super) fn render_claims(claims: &[Claim]) -> String {
    let mut md = String::from(
        "## The paper's claims against these numbers\n\n\
         Computed from the table above. A difference is beyond seed noise when it exceeds \
         the larger seed spread of the two settings compared (half the range of a setting's \
         seeds; a setting with one seed is given the baseline's); with no spread measured, \
         a verdict goes by the sign of the difference alone.\n",
    );
    for c in claims {
        let _ = write!(
            md,
            "\n**({}) {}: {}.**\n\n",
            c.id,
            c.statement,
            c.outcome.text()
        );
        for l in &c.lines {
            let _ = writeln!(md, "- {} — {}", l.text, l.outcome.text());
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::super::results::DEEPFOOL_L2_CORRECT;
    use super::*;

    const PGD_L2: &str = "pgd_l2_0.5_robust_accuracy_percent";

    /// A setting with `seeds` runs and, per key, the values of the seeds measured.
    fn setting(name: &str, seeds: usize, values: &[(&str, &[f64])]) -> Setting {
        Setting {
            name: name.into(),
            description: String::new(),
            runs: (0..seeds).map(|i| format!("{name}-seed{i}")).collect(),
            stats: values
                .iter()
                .map(|(k, v)| (k.to_string(), Stat::of(v).unwrap()))
                .collect(),
        }
    }

    fn keys() -> ClaimKeys {
        ClaimKeys {
            deepfool_l2: Some(DEEPFOOL_L2_CORRECT.into()),
            pgd_l2: Some(PGD_L2.into()),
        }
    }

    fn claim<'a>(claims: &'a [Claim], id: &str) -> &'a Claim {
        claims.iter().find(|c| c.id == id).unwrap()
    }

    fn outcomes(c: &Claim) -> Vec<Outcome> {
        c.lines.iter().map(|l| l.outcome).collect()
    }

    #[test]
    fn a_difference_is_judged_against_the_seed_spread() {
        use Outcome::*;
        assert_eq!(judge(3.0, 1.0), Holds);
        assert_eq!(judge(0.5, 1.0), WithinNoise);
        assert_eq!(judge(-0.5, 1.0), WithinNoise);
        assert_eq!(judge(-3.0, 1.0), DoesNotHold);
        // No spread measured: the sign alone; no difference is not the claimed one.
        assert_eq!(judge(0.1, 0.0), Holds);
        assert_eq!(judge(0.0, 0.0), DoesNotHold);
        assert_eq!(judge(-0.1, 0.0), DoesNotHold);

        let line = |outcome| Line {
            outcome,
            text: String::new(),
        };
        let all = |o: &[Outcome]| combine(&o.iter().map(|&o| line(o)).collect::<Vec<_>>());
        assert_eq!(all(&[Holds, Holds]), Holds);
        assert_eq!(all(&[Holds, WithinNoise]), WithinNoise);
        assert_eq!(all(&[WithinNoise, NotYetMeasured]), NotYetMeasured);
        assert_eq!(all(&[NotYetMeasured, DoesNotHold]), DoesNotHold);
        assert_eq!(all(&[Holds, NotInProfile]), Holds);
        assert_eq!(all(&[NotInProfile]), NotInProfile);
        assert_eq!(all(&[]), NotYetMeasured);
    }

    #[test]
    fn claims_that_hold() {
        let settings = [
            setting(
                BASELINE,
                2,
                &[
                    (TEST_ERROR, &[8.0, 9.0]),
                    (LIPSCHITZ, &[100.0, 104.0]),
                    (MEDIAN_L2_CORRECT, &[1.0, 1.2]),
                    (DEEPFOOL_L2_CORRECT, &[1.0, 1.2]),
                    (PGD_L2, &[10.0, 12.0]),
                ],
            ),
            setting(
                BEST,
                2,
                &[
                    (TEST_ERROR, &[11.0, 12.0]),
                    (LIPSCHITZ, &[5.0, 6.0]),
                    (MEDIAN_L2_CORRECT, &[2.0, 2.2]),
                    (PGD_L2, &[60.0, 62.0]),
                ],
            ),
            setting(
                "j1",
                1,
                &[
                    (TEST_ERROR, &[10.0]),
                    (LIPSCHITZ, &[50.0]),
                    (MEDIAN_L2_CORRECT, &[1.3]),
                    (DEEPFOOL_L2_CORRECT, &[1.3]),
                    (PGD_L2, &[20.0]),
                ],
            ),
            setting(
                "j2",
                1,
                &[
                    (TEST_ERROR, &[10.5]),
                    (LIPSCHITZ, &[40.0]),
                    (MEDIAN_L2_CORRECT, &[1.6]),
                    (DEEPFOOL_L2_CORRECT, &[1.6]),
                    (PGD_L2, &[30.0]),
                ],
            ),
        ];
        let c = claims(&settings, &keys());
        for id in ["a", "b", "c", "d"] {
            assert_eq!(claim(&c, id).outcome, Outcome::Holds, "({id}): {c:#?}");
        }
        // The numbers behind a line: j1 against the baseline's mean and spread.
        let a = claim(&c, "a");
        assert_eq!(a.lines.len(), 3, "every setting but the baseline");
        assert_eq!(
            a.lines[1].text,
            "Lipschitz estimate: j1 50.0000 vs baseline 102.0000 ± 2.0000: 52.0000 lower; \
             beyond the seed spread (2.0000)"
        );
        // (b): 0.3 apart, beyond j1's borrowed (the baseline's) spread of 0.1.
        assert!(claim(&c, "b").lines[0]
            .text
            .contains("j2 1.6000 vs j1 1.3000: 0.3000 higher"));
        // (c) against the strongest other setting.
        let best = &claim(&c, "c").lines;
        assert!(best[0].text.contains("vs j2 1.6000"), "{}", best[0].text);
        assert!(best[1].text.contains("vs j2 30.00"), "{}", best[1].text);
        // (d): best costs 3 points of accuracy, beyond the larger spread (0.5).
        assert!(claim(&c, "d").lines[0]
            .text
            .contains("best 11.50 ± 0.50 vs baseline 8.50 ± 0.50: 3.00 higher"));
        let md = render_claims(&c);
        assert!(md.contains(
            "**(a) Every regulariser lowers the Lipschitz estimate relative to the baseline: holds.**"
        ));
        assert_eq!(md.matches(" — holds\n").count(), 3 + 1 + 2 + 3);
    }

    #[test]
    fn claims_that_do_not_hold_or_are_within_noise() {
        use Outcome::*;
        let settings = [
            setting(
                BASELINE,
                2,
                &[
                    (TEST_ERROR, &[8.0, 9.0]),
                    (LIPSCHITZ, &[100.0, 104.0]),
                    (MEDIAN_L2_CORRECT, &[1.0, 1.2]),
                    (DEEPFOOL_L2_CORRECT, &[1.0, 1.2]),
                ],
            ),
            setting(
                BEST,
                2,
                &[(LIPSCHITZ, &[5.0, 6.0]), (MEDIAN_L2_CORRECT, &[1.5, 1.7])],
            ),
            // Above the baseline; within its spread of the baseline; below it.
            setting("decay", 1, &[(LIPSCHITZ, &[110.0]), (TEST_ERROR, &[8.2])]),
            setting(
                "j1",
                1,
                &[
                    (LIPSCHITZ, &[101.0]),
                    (DEEPFOOL_L2_CORRECT, &[1.3]),
                    (MEDIAN_L2_CORRECT, &[2.5]),
                    (TEST_ERROR, &[7.0]),
                ],
            ),
            setting("j2", 1, &[(DEEPFOOL_L2_CORRECT, &[0.9])]),
        ];
        let c = claims(&settings, &keys());
        let a = claim(&c, "a");
        assert_eq!(
            outcomes(a),
            [Holds, DoesNotHold, WithinNoise, NotYetMeasured]
        );
        assert_eq!(a.outcome, DoesNotHold);
        assert!(a.lines[1]
            .text
            .contains("decay 110.0000 vs baseline 102.0000 ± 2.0000: 8.0000 higher"));
        assert_eq!(a.lines[3].text, "Lipschitz estimate: j2");
        assert_eq!(claim(&c, "b").outcome, DoesNotHold);
        // (c): j1's median beats best's; no PGD L2 attack in this profile's keys is
        // measured by anyone yet.
        let cc = claim(&c, "c");
        assert_eq!(outcomes(cc), [DoesNotHold, NotYetMeasured]);
        assert!(cc.lines[0]
            .text
            .contains("best 1.6000 ± 0.1000 vs j1 2.5000: 0.9000 lower"));
        assert_eq!(cc.outcome, DoesNotHold);
        // (d): decay's error is within the spread; j1 is more accurate than the baseline.
        let d = claim(&c, "d");
        assert_eq!(
            outcomes(d),
            [NotYetMeasured, WithinNoise, DoesNotHold, NotYetMeasured]
        );
        assert!(render_claims(&c).contains("— does not hold\n"));

        // A profile without the measures: said so, not "not yet".
        let none = claims(&settings, &ClaimKeys::default());
        assert_eq!(claim(&none, "b").outcome, NotInProfile);
        assert_eq!(claim(&none, "c").lines[1].outcome, NotInProfile);

        // One seed everywhere (no spread): the sign decides, and the line says so.
        let single = [
            setting(BASELINE, 1, &[(TEST_ERROR, &[8.0])]),
            setting("lip", 1, &[(TEST_ERROR, &[7.5])]),
        ];
        let d = claims(&single, &keys());
        let line = &claim(&d, "d").lines[0];
        assert_eq!(line.outcome, DoesNotHold);
        assert!(
            line.text.ends_with("no seed spread measured"),
            "{}",
            line.text
        );
        // Nothing measured at all.
        let empty = claims(&[], &keys());
        assert!(
            empty.iter().all(|c| c.outcome == NotYetMeasured),
            "{empty:#?}"
        );
    }
}
