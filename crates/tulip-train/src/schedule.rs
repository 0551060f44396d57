//! Piecewise-constant learning-rate multipliers by epoch (docs/method.md §6).

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// `lr(epoch) = base_lr · multiplier` of the last breakpoint at or before `epoch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// `(first epoch, multiplier)` pairs, the first at epoch 0, epochs increasing.
    pub breakpoints: Vec<(usize, f64)>,
}

impl Default for LrSchedule {
    /// The reference schedule `[[0,1],[60,0.2],[120,0.04],[160,0.008]]`. (The reference's
    /// own default string ends in `0.08`, which would raise the rate at epoch 160; that is
    /// taken as a typo for `0.008`, continuing the ×0.2 steps.)
    fn default() -> Self {
        Self {
            breakpoints: vec![(0, 1.0), (60, 0.2), (120, 0.04), (160, 0.008)],
        }
    }
}

impl std::fmt::Display for LrSchedule {
    /// The reference's form, `[[0,1],[60,0.2]]`, which [`LrSchedule::parse`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self
            .breakpoints
            .iter()
            .map(|(epoch, multiplier)| format!("[{epoch},{multiplier}]"))
            .collect();
        write!(f, "[{}]", pairs.join(","))
    }
}

impl LrSchedule {
    /// The multiplier in force during `epoch` (0-based).
    pub fn multiplier(&self, epoch: usize) -> f64 {
        self.breakpoints
            .iter()
            .take_while(|(e, _)| *e <= epoch)
            .last()
            .map_or(1.0, |(_, m)| *m)
    }

    /// Parses the reference's form `[[0,1],[60,0.2]]` or the short form `0:1,60:0.2`.
    ///
    /// # Errors
    /// A malformed string, a schedule not starting at epoch 0, epochs not increasing, or a
    /// multiplier that is not positive and finite; the error names the `lr_schedule` setting.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: String| TrainError::setting("lr_schedule", format!("{s:?}: {why}"));
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let pairs: Vec<(String, String)> = if compact.starts_with('[') {
            let inner = compact
                .strip_prefix("[[")
                .and_then(|r| r.strip_suffix("]]"))
                .ok_or_else(|| bad("expected [[epoch,multiplier],...]".into()))?;
            inner
                .split("],[")
                .map(|p| {
                    p.split_once(',')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| bad(format!("{p:?} is not epoch,multiplier")))
                })
                .collect::<Result<_>>()?
        } else {
            compact
                .split(',')
                .map(|p| {
                    p.split_once(':')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| bad(format!("{p:?} is not epoch:multiplier")))
                })
                .collect::<Result<_>>()?
        };
        let mut breakpoints = Vec::new();
        for (e, m) in pairs {
            let epoch: usize = e
                .parse()
                .map_err(|_| bad(format!("epoch {e:?} is not a whole number")))?;
            let mult: f64 = m
                .parse()
                .map_err(|_| bad(format!("multiplier {m:?} is not a number")))?;
            if !(mult.is_finite() && mult > 0.0) {
                return Err(bad(format!("multiplier {m} must be positive")));
            }
            if let Some(&(prev, _)) = breakpoints.last() {
                if epoch <= prev {
                    return Err(bad(format!("epochs must increase ({epoch} after {prev})")));
                }
            }
            breakpoints.push((epoch, mult));
        }
        match breakpoints.first() {
            Some((0, _)) => Ok(Self { breakpoints }),
            _ => Err(bad("the first breakpoint must be at epoch 0".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_reads_back() {
        let schedule = LrSchedule::default();
        assert_eq!(
            schedule.to_string(),
            "[[0,1],[60,0.2],[120,0.04],[160,0.008]]"
        );
        for s in ["0:1,5:0.2,8:0.04", "[[0,1]]", "0:1,3:0.125"] {
            let parsed = LrSchedule::parse(s).unwrap();
            assert_eq!(
                LrSchedule::parse(&parsed.to_string()).unwrap(),
                parsed,
                "{s}"
            );
        }
    }

    #[test]
    fn default_is_the_reference_schedule() {
        let s = LrSchedule::default();
        assert_eq!(s.multiplier(0), 1.0);
        assert_eq!(s.multiplier(59), 1.0);
        assert_eq!(s.multiplier(60), 0.2);
        assert_eq!(s.multiplier(159), 0.04);
        assert_eq!(s.multiplier(199), 0.008);
    }

    #[test]
    fn parses_both_forms() {
        let a = LrSchedule::parse("[[0,1],[60,0.2],[120,0.04],[160,0.008]]").unwrap();
        assert_eq!(a, LrSchedule::default());
        let b = LrSchedule::parse("0:1, 2:0.1").unwrap();
        assert_eq!(b.breakpoints, vec![(0, 1.0), (2, 0.1)]);
        assert_eq!(b.multiplier(5), 0.1);
    }

    #[test]
    fn rejects_malformed_schedules() {
        for s in [
            "",
            "[[0,1],[60]]",
            "5:1",
            "0:1,0:0.5",
            "0:1,3:-1",
            "0:x",
            "[[0,1]",
        ] {
            let err = LrSchedule::parse(s).unwrap_err().to_string();
            assert!(err.contains("lr_schedule"), "{s}: {err}");
        }
    }
}
