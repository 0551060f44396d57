//! Budgets (radii ε, step sizes) as users write them, and the one place they are checked.

use crate::{AdversarialError, Result};

/// A number written as a decimal (`0.031`) or as a fraction `a/b` (`8/255`, the way image
/// budgets are usually given); `None` when it is neither, or divides by zero.
pub fn parse_fraction(text: &str) -> Option<f64> {
    let number = |s: &str| s.trim().parse::<f64>().ok();
    match text.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (number(a)?, number(b)?);
            (b != 0.0).then(|| a / b)
        }
        None => number(text),
    }
}

/// `value` must be finite and positive: a radius of a ball that must contain more than its
/// centre, or a step size.
pub(crate) fn check_positive(method: &str, what: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(AdversarialError::InvalidConfig(format!(
            "{method}: {what} must be positive and finite, got {value}"
        )))
    }
}

/// `value` must be finite and non-negative: a step that may be 0 (no perturbation).
pub(crate) fn check_non_negative(method: &str, what: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(AdversarialError::InvalidConfig(format!(
            "{method}: {what} must be finite and non-negative, got {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_decimals() {
        assert_eq!(parse_fraction("8/255"), Some(8.0 / 255.0));
        assert_eq!(parse_fraction(" 1 / 4 "), Some(0.25));
        assert_eq!(parse_fraction("0.031"), Some(0.031));
        assert_eq!(parse_fraction("1/0"), None);
        assert_eq!(parse_fraction("a/2"), None);
        assert_eq!(parse_fraction("eight"), None);
        assert_eq!(parse_fraction(""), None);
    }

    #[test]
    fn checks_name_the_method_and_the_value() {
        assert!(check_positive("pgd", "eps", 0.1).is_ok());
        let zero = check_positive("pgd", "eps", 0.0).unwrap_err().to_string();
        assert!(
            zero.contains("pgd") && zero.contains("eps") && zero.contains('0'),
            "{zero}"
        );
        assert!(check_positive("pgd", "eps", f64::NAN).is_err());
        assert!(check_non_negative("j2", "epsilon", 0.0).is_ok());
        assert!(check_non_negative("j2", "epsilon", -1e-9).is_err());
        assert!(check_non_negative("j2", "epsilon", f64::INFINITY).is_err());
    }
}
