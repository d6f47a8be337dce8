//! Mean and population standard deviation, the one definition every report uses (an
//! epoch's rewards, an evaluation's scores, a comparison's seeds, a benchmark's runs).

/// Mean and population std of the finite values, None when there are none.
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn population_std_over_the_finite_values() {
        let (m, s) = super::mean_std(&[1.0, f64::NAN, 3.0]).unwrap();
        assert_eq!((m, s), (2.0, 1.0));
        assert_eq!(super::mean_std(&[f64::INFINITY]), None);
    }
}
