//! What the chart's Grafana dashboard and alert rules query, and what a `/metrics` page
//! exposes: a test holds the first against the second, so a renamed metric cannot leave a
//! panel or an alert silently empty.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// The `sagashop_…` series names in `text` (PromQL, or a file holding some).
pub fn queried(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sagashop_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `my_sagashop_x` is not ours.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The series names an OpenMetrics page declares, with or without samples yet: a counter
/// `x` is queried as `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`.
pub fn exposed(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["bucket", "sum", "count"] {
                    names.insert(format!("{name}_{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Every metric the chart's dashboard (`files/dashboard.json`) and alert rules
/// (`files/alerts.yaml`) query.
pub fn chart_queries() -> BTreeSet<String> {
    let files = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/sagashop/files");
    let mut names = BTreeSet::new();
    for file in ["dashboard.json", "alerts.yaml"] {
        let path = files.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        names.extend(queried(&text));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_pages_are_read_as_prometheus_does() {
        let q = queried(
            "sum by (g) (rate(sagashop_messages_handled_total[1m])) / my_sagashop_x + \
             histogram_quantile(0.9, sagashop_handler_duration_seconds_bucket)",
        );
        assert_eq!(
            q.into_iter().collect::<Vec<_>>(),
            [
                "sagashop_handler_duration_seconds_bucket",
                "sagashop_messages_handled_total"
            ]
        );
        let page = "# HELP sagashop_x A thing.\n# TYPE sagashop_x counter\n\
                    # TYPE sagashop_h histogram\nsagashop_h_count 0\n# TYPE sagashop_g gauge\n# EOF\n";
        assert_eq!(
            exposed(page).into_iter().collect::<Vec<_>>(),
            [
                "sagashop_g",
                "sagashop_h_bucket",
                "sagashop_h_count",
                "sagashop_h_sum",
                "sagashop_x_total"
            ]
        );
        assert!(chart_queries().contains("sagashop_saga_started_total"));
    }
}
