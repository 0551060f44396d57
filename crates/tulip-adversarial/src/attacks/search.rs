//! The per-image search over ε shared by the iterative, FGSM and gradient attacks.

/// Where one image's search stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Growing ε geometrically until the attack succeeds; `last_fail` is the largest ε
    /// known to fail (0 at first).
    Grow { eps: f64, last_fail: f64 },
    /// Bisecting `[bad, good]` (`bad` fails, `good` succeeds); `left` steps to go.
    Bisect { bad: f64, good: f64, left: usize },
    /// Finished (found, or failed at the largest ε), or never searched.
    Done,
}

/// A lock-step search over ε for a batch: every round, [`EpsSearch::trials`] gives each
/// image the ε to try (0 for finished images), the caller runs the attack with them and
/// reports success through [`EpsSearch::update`].
///
/// The search finds, per image, an ε where the attack succeeds with a failing one within a
/// factor `2^-bisections` of the first bracket below it. The attack's success need not be
/// monotone in ε (a single step along a ray may leave the misclassified region again), so
/// this brackets *a* threshold, not necessarily the smallest; the caller records the best
/// point of every trial anyway.
#[derive(Debug, Clone)]
pub(super) struct EpsSearch {
    phases: Vec<Phase>,
    factor: f64,
    max_eps: f64,
    bisections: usize,
}

impl EpsSearch {
    /// A search for the images with `active[i]`, starting at `start` (capped at `max_eps`)
    /// and multiplying by `factor > 1` after each failure until `max_eps` has failed.
    pub(super) fn new(
        active: &[bool],
        start: f64,
        factor: f64,
        max_eps: f64,
        bisections: usize,
    ) -> Self {
        let eps = start.min(max_eps);
        let phases = active
            .iter()
            .map(|&a| {
                if a {
                    Phase::Grow {
                        eps,
                        last_fail: 0.0,
                    }
                } else {
                    Phase::Done
                }
            })
            .collect();
        Self {
            phases,
            factor,
            max_eps,
            bisections,
        }
    }

    /// Whether every image has finished.
    pub(super) fn finished(&self) -> bool {
        self.phases.iter().all(|p| *p == Phase::Done)
    }

    /// The ε each image tries this round (0 for finished images).
    pub(super) fn trials(&self) -> Vec<f64> {
        self.phases
            .iter()
            .map(|p| match *p {
                Phase::Grow { eps, .. } => eps,
                Phase::Bisect { bad, good, .. } => 0.5 * (bad + good),
                Phase::Done => 0.0,
            })
            .collect()
    }

    /// Advances every image given whether its trial succeeded.
    pub(super) fn update(&mut self, success: &[bool]) {
        let trials = self.trials();
        let (factor, max_eps, bisections) = (self.factor, self.max_eps, self.bisections);
        let bisect = |bad: f64, good: f64| {
            if bisections == 0 {
                Phase::Done
            } else {
                Phase::Bisect {
                    bad,
                    good,
                    left: bisections,
                }
            }
        };
        for (i, phase) in self.phases.iter_mut().enumerate() {
            let (eps, ok) = (trials[i], success[i]);
            *phase = match *phase {
                Phase::Done => Phase::Done,
                Phase::Grow { last_fail, .. } if ok => bisect(last_fail, eps),
                Phase::Grow { .. } if eps >= max_eps => Phase::Done,
                Phase::Grow { .. } => Phase::Grow {
                    eps: (eps * factor).min(max_eps),
                    last_fail: eps,
                },
                Phase::Bisect { bad, good, left } => {
                    let (bad, good) = if ok { (bad, eps) } else { (eps, good) };
                    if left <= 1 {
                        Phase::Done
                    } else {
                        Phase::Bisect {
                            bad,
                            good,
                            left: left - 1,
                        }
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a threshold attack: success iff ε ≥ t.
    fn search(t: f64, start: f64, bisections: usize) -> (f64, usize) {
        let mut s = EpsSearch::new(&[true], start, 2.0, 1.0, bisections);
        let mut best = f64::INFINITY;
        let mut rounds = 0;
        while !s.finished() {
            let e = s.trials()[0];
            let ok = e >= t;
            if ok {
                best = best.min(e);
            }
            s.update(&[ok]);
            rounds += 1;
        }
        (best, rounds)
    }

    #[test]
    fn brackets_the_threshold_to_the_bisection_precision() {
        for t in [1e-4, 0.013, 0.3, 0.99] {
            let (best, _) = search(t, 1e-3, 20);
            assert!(best >= t && best <= t * (1.0 + 1e-4) + 1e-9, "{t}: {best}");
        }
    }

    #[test]
    fn fails_above_the_largest_epsilon_and_skips_inactive_images() {
        let (best, rounds) = search(2.0, 0.1, 20);
        assert!(best.is_infinite());
        assert_eq!(rounds, 5); // 0.1, 0.2, 0.4, 0.8, 1.0
        let s = EpsSearch::new(&[false], 0.1, 2.0, 1.0, 5);
        assert!(s.finished());
        assert_eq!(s.trials(), vec![0.0]);
    }
}
