//! Sums over the Prometheus text format that `GET /metrics` answers.

/// Sum of the samples of `name` (exactly: not `name_bucket` and the like) whose labels contain
/// `label` (`""`: all of them).
pub fn metric_value(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(label)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric_value`] of a counter or gauge that counts whole things.
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    metric_value(text, name, label) as u64
}
