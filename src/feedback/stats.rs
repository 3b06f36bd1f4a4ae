//! The few statistics the reports need, written out: the normal CDF (for
//! confidence intervals and p-values) and the chi-square survival function
//! (the sample-ratio-mismatch test).

/// The 97.5 % quantile of the standard normal: a two-sided 95 % interval
/// is ± this many standard errors.
pub const Z_975: f64 = 1.959_963_984_540_054;

/// Φ(z), the standard normal CDF: erfc by its rational approximation
/// (Numerical Recipes' `erfcc`, fractional error below 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The two-sided p-value of a z statistic.
pub fn two_sided_p(z: f64) -> f64 {
    (2.0 * (1.0 - normal_cdf(z.abs()))).clamp(0.0, 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |s, (i, g)| s + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Q(a, x) = Γ(a, x) / Γ(a): the regularised upper incomplete gamma, by
/// its series below a + 1 and its continued fraction (modified Lentz)
/// above.
fn upper_gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * front).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// P(χ²(dof) ≥ x).
pub fn chi_square_survival(x: f64, dof: usize) -> f64 {
    upper_gamma_q(dof as f64 / 2.0, x / 2.0)
}

/// Pearson's χ² test of `observed` counts against `shares` (same order,
/// summing to 1; arms with share 0 are left out): the p-value, or `None`
/// with fewer than two arms or no observations.
pub fn sample_ratio_p(observed: &[u64], shares: &[f64]) -> Option<f64> {
    let total: u64 = observed.iter().sum();
    let cells: Vec<(f64, f64)> = observed
        .iter()
        .zip(shares)
        .filter(|(_, s)| **s > 0.0)
        .map(|(&o, &s)| (o as f64, s * total as f64))
        .collect();
    if cells.len() < 2 || total == 0 {
        return None;
    }
    let x: f64 = cells.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    Some(chi_square_survival(x, cells.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Against values from scipy.stats (norm.cdf, chi2.sf).
    #[test]
    fn the_normal_and_chi_square_match_reference_values() {
        assert!(close(normal_cdf(0.0), 0.5, 1e-7));
        assert!(close(normal_cdf(Z_975), 0.975, 1e-7));
        assert!(close(normal_cdf(-1.0), 0.158_655_253_931_457, 1e-7));
        assert!(close(normal_cdf(3.0), 0.998_650_101_968_37, 1e-7));
        assert!(close(two_sided_p(1.0), 0.317_310_507_862_914, 1e-6));
        assert!(close(
            chi_square_survival(3.841_458_820_694_124, 1),
            0.05,
            1e-7
        ));
        assert!(close(
            chi_square_survival(1.0, 1),
            0.317_310_507_862_914,
            1e-7
        ));
        assert!(close(
            chi_square_survival(5.991_464_547_107_979, 2),
            0.05,
            1e-7
        ));
        assert!(close(
            chi_square_survival(10.0, 3),
            0.018_566_135_463_043,
            1e-7
        ));
        assert!(close(
            chi_square_survival(0.5, 4),
            0.973_500_978_839_256,
            1e-7
        ));
        assert!(close(chi_square_survival(40.0, 5), 1.493_367_9e-7, 1e-11));
        assert_eq!(chi_square_survival(0.0, 2), 1.0);
    }

    #[test]
    fn a_balanced_split_passes_and_a_skewed_one_fails() {
        let p = sample_ratio_p(&[5_010, 4_990], &[0.5, 0.5]).unwrap();
        assert!(p > 0.8, "{p}");
        let p = sample_ratio_p(&[5_300, 4_700], &[0.5, 0.5]).unwrap();
        assert!(p < 1e-8, "{p}");
        // 0.9 / 0.1 as configured.
        let p = sample_ratio_p(&[9_000, 1_000, 0], &[0.9, 0.1, 0.0]).unwrap();
        assert!(close(p, 1.0, 1e-9), "{p}");
        assert_eq!(sample_ratio_p(&[10], &[1.0]), None);
        assert_eq!(sample_ratio_p(&[0, 0], &[0.5, 0.5]), None);
    }
}
