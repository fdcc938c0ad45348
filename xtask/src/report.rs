//! The figures, summarised: medians with ranges, the stdout table and `report.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// A median of several runs with its range.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Figure {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Figure {
    /// The median and range of `values` (zeros when empty).
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let Some((&min, &max)) = sorted.first().zip(sorted.last()) else {
            return Self::default();
        };
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Self { median, min, max }
    }

    fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// What k6 saw at the edge in one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub(crate) accepted: f64,
    pub(crate) accepted_per_s: f64,
    pub(crate) errors: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
}

/// What the outcome topic says about one run's sagas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndToEnd {
    pub(crate) finished: f64,
    pub(crate) completed: f64,
    pub(crate) completed_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
}

/// One run at one offered rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunFigures {
    pub(crate) rate: u32,
    pub(crate) edge: Edge,
    pub(crate) e2e: EndToEnd,
    /// CPU time `sagashop dev` spent per accepted order during the run (and its drain).
    pub(crate) cpu_ms_per_order: f64,
    /// CPU time the broker spent per accepted order, when it runs on this machine.
    pub(crate) broker_cpu_ms_per_order: Option<f64>,
}

/// The rate whose orders completed fastest (median completed per second) with their outcome
/// p99 within a second: the throughput a user would call sustained.
pub(crate) fn most_completed(steps: &[Step]) -> Option<&Step> {
    steps
        .iter()
        .filter(|s| s.e2e_p99.median <= 1000.0)
        .max_by(|a, b| {
            a.completed_per_s
                .median
                .total_cmp(&b.completed_per_s.median)
        })
}

/// The figures of one offered rate, over its runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub(crate) rate: u32,
    pub(crate) accepted_per_s: Figure,
    pub(crate) errors: f64,
    pub(crate) edge_p50: Figure,
    pub(crate) edge_p95: Figure,
    pub(crate) edge_p99: Figure,
    pub(crate) completed_per_s: Figure,
    pub(crate) unfinished: f64,
    pub(crate) cancelled: f64,
    pub(crate) e2e_p50: Figure,
    pub(crate) e2e_p95: Figure,
    pub(crate) e2e_p99: Figure,
    pub(crate) cpu_ms_per_order: Figure,
    /// The broker's CPU per order (0 where it was not measured).
    pub(crate) broker_cpu_ms_per_order: Figure,
}

/// Everything measured.
pub(crate) struct Report {
    pub(crate) message_bytes: usize,
    pub(crate) produce: Figure,
    pub(crate) consume: Figure,
    pub(crate) runs: Vec<RunFigures>,
    pub(crate) rates: Vec<u32>,
    pub(crate) duration: Duration,
    /// Kafka offsets per accepted order, by topic (without the run's prefix).
    pub(crate) offsets_per_order: std::collections::BTreeMap<String, f64>,
    /// The replica rate measured with two replicas of every service.
    pub(crate) two_replicas: Vec<RunFigures>,
    pub(crate) operator: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) took: Duration,
}

impl Report {
    /// Kafka offsets per accepted order, every topic together.
    fn offsets_total(&self) -> f64 {
        self.offsets_per_order.values().sum()
    }

    /// The runs of each rate, summarised.
    pub(crate) fn steps(&self) -> Vec<Step> {
        Self::summarise(&self.runs, &self.rates)
    }

    /// The runs with two replicas, summarised (one step, or none).
    pub(crate) fn two_replica_step(&self) -> Option<Step> {
        let rate = self.two_replicas.first()?.rate;
        Self::summarise(&self.two_replicas, &[rate]).pop()
    }

    fn summarise(all: &[RunFigures], rates: &[u32]) -> Vec<Step> {
        rates
            .iter()
            .map(|&rate| {
                let runs: Vec<&RunFigures> = all.iter().filter(|r| r.rate == rate).collect();
                let of = |f: &dyn Fn(&RunFigures) -> f64| {
                    Figure::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                Step {
                    rate,
                    accepted_per_s: of(&|r| r.edge.accepted_per_s),
                    errors: runs.iter().map(|r| r.edge.errors).sum(),
                    edge_p50: of(&|r| r.edge.p50_ms),
                    edge_p95: of(&|r| r.edge.p95_ms),
                    edge_p99: of(&|r| r.edge.p99_ms),
                    completed_per_s: of(&|r| r.e2e.completed_per_s),
                    unfinished: runs
                        .iter()
                        .map(|r| (r.edge.accepted - r.e2e.finished).max(0.0))
                        .sum(),
                    cancelled: runs.iter().map(|r| r.e2e.finished - r.e2e.completed).sum(),
                    e2e_p50: of(&|r| r.e2e.p50_ms),
                    e2e_p95: of(&|r| r.e2e.p95_ms),
                    e2e_p99: of(&|r| r.e2e.p99_ms),
                    cpu_ms_per_order: of(&|r| r.cpu_ms_per_order),
                    broker_cpu_ms_per_order: of(&|r| r.broker_cpu_ms_per_order.unwrap_or(0.0)),
                }
            })
            .collect()
    }

    /// The highest offered rate at which every run had p99 under 50 ms and no error.
    pub(crate) fn best_rate(&self) -> Option<u32> {
        self.rates
            .iter()
            .copied()
            .filter(|&rate| {
                self.runs
                    .iter()
                    .filter(|r| r.rate == rate)
                    .all(|r| r.edge.p99_ms < 50.0 && r.edge.errors == 0.0)
            })
            .max()
    }

    /// The short table for stdout.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "ceiling: produce {:.0} msg/s, consume {:.0} msg/s ({} B OrderPlaced)",
            self.produce.median, self.consume.median, self.message_bytes
        );
        let _ = writeln!(
            t,
            "{:>8} {:>11} {:>6} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10} {:>11} {:>11}",
            "offered",
            "accepted/s",
            "errors",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "completed/s",
            "e2e p50",
            "e2e p99",
            "CPU ms/ord",
            "broker ms"
        );
        for s in self.steps() {
            let _ = writeln!(
                t,
                "{:>8} {:>11.1} {:>6.0} {:>9.1} {:>9.1} {:>9.1} {:>12.1} {:>10.0} {:>10.0} {:>11.2} {:>11.2}",
                s.rate,
                s.accepted_per_s.median,
                s.errors,
                s.edge_p50.median,
                s.edge_p95.median,
                s.edge_p99.median,
                s.completed_per_s.median,
                s.e2e_p50.median,
                s.e2e_p99.median,
                s.cpu_ms_per_order.median,
                s.broker_cpu_ms_per_order.median
            );
        }
        if let Some(s) = self.two_replica_step() {
            let _ = writeln!(
                t,
                "two replicas of every service at {}/s: accepted {:.1}/s, completed {:.1}/s, e2e p50 {:.0} ms, p99 {:.0} ms, {:.2} CPU ms per order",
                s.rate,
                s.accepted_per_s.median,
                s.completed_per_s.median,
                s.e2e_p50.median,
                s.e2e_p99.median,
                s.cpu_ms_per_order.median
            );
        }
        let steps = self.steps();
        if let Some(s) = steps.iter().find(|s| s.rate == 100) {
            let _ = writeln!(
                t,
                "202 → outcome p99 at 100 orders/s: {:.0} ms",
                s.e2e_p99.median
            );
        }
        let most = most_completed(&steps).map_or("none of the rates offered".to_owned(), |s| {
            format!("{:.0}/s (offered {}/s)", s.completed_per_s.median, s.rate)
        });
        let _ = writeln!(
            t,
            "most orders completed per second with outcome p99 ≤ 1 s: {most}"
        );
        let best = self
            .best_rate()
            .map_or("none".to_owned(), |r| format!("{r} orders/s"));
        let _ = write!(
            t,
            "highest offered rate with p99 < 50 ms and no errors: {best}; {:.1} Kafka offsets per order",
            self.offsets_total()
        );
        t
    }

    /// Writes `report.md` and the charts into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let steps = self.steps();
        crate::charts::draw(dir, &steps)?;
        let mut md = String::new();
        self.head(&mut md);
        self.ceiling_and_edge(&mut md, &steps);
        self.end_to_end(&mut md, &steps);
        self.two_replicas(&mut md, &steps);
        self.ratios_operator_profile(&mut md, &steps);
        std::fs::write(dir.join("report.md"), md)?;
        Ok(())
    }

    /// The title and the machine.
    fn head(&self, md: &mut String) {
        let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb / 1024.0 / 1024.0)
            })
            .unwrap_or(0.0);
        let _ = writeln!(md, "# sagashop benchmark report\n");
        let _ = writeln!(
            md,
            "{} · {cores} cores, {memory:.0} GiB · broker and system on one machine (loopback) · \
             `scripts/bench` · {:.0?} in all. Every figure is the median of its runs, with the \
             range in brackets.\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            self.took
        );
    }

    /// The raw Kafka ceiling and the edge's table.
    fn ceiling_and_edge(&self, md: &mut String, steps: &[Step]) {
        let _ = writeln!(md, "## Ceiling: raw rdkafka on this broker\n");
        let _ = writeln!(md, "| what | msgs/s |\n| --- | ---: |");
        let _ = writeln!(
            md,
            "| produce, the services' settings (idempotent, acks=all), {} B OrderPlaced | {} |",
            self.message_bytes,
            self.produce.show(0)
        );
        let _ = writeln!(md, "| consume | {} |\n", self.consume.show(0));
        let _ = writeln!(
            md,
            "## Edge: k6 constant arrival rate against `POST /api/orders` ({:?} per run)\n",
            self.duration
        );
        let _ = writeln!(
            md,
            "| offered/s | accepted/s | errors | p50 ms | p95 ms | p99 ms |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for s in steps {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} |",
                s.rate,
                s.accepted_per_s.show(1),
                s.errors,
                s.edge_p50.show(1),
                s.edge_p95.show(1),
                s.edge_p99.show(1)
            );
        }
        let best = self
            .best_rate()
            .map_or("none of the rates offered".to_owned(), |r| {
                format!("**{r} orders/s**")
            });
        let _ = writeln!(
            md,
            "\nHighest offered rate with p99 under 50 ms and zero errors in every run: {best}.\n\n![edge](edge.png)\n"
        );
    }

    /// From `202 Accepted` to the outcome, per rate.
    fn end_to_end(&self, md: &mut String, steps: &[Step]) {
        let _ = writeln!(
            md,
            "## End to end: from `202 Accepted` to the outcome event\n\nTimes are `completedAt` (or `cancelledAt`) minus `placedAt` from the outcome events; completed/s is completed sagas over the time from the first `placedAt` to the last outcome; CPU is what `sagashop dev` (every service in one process) used during the run and its drain, per accepted order, and beside it what the broker used when it runs on this machine (0 when not).\n"
        );
        let _ = writeln!(
            md,
            "| offered/s | completed/s | cancelled | unfinished | p50 ms | p95 ms | p99 ms | CPU ms per order | broker CPU ms per order |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for s in steps {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                s.rate,
                s.completed_per_s.show(1),
                s.cancelled,
                s.unfinished,
                s.e2e_p50.show(0),
                s.e2e_p95.show(0),
                s.e2e_p99.show(0),
                s.cpu_ms_per_order.show(2),
                s.broker_cpu_ms_per_order.show(2)
            );
        }
        let _ = writeln!(
            md,
            "\n![throughput](throughput.png)\n\n![end to end](e2e.png)\n"
        );
    }

    /// One replica against two, at the rate both ran, when two did.
    fn two_replicas(&self, md: &mut String, steps: &[Step]) {
        if let Some(two) = self.two_replica_step() {
            let one = steps.iter().find(|s| s.rate == two.rate);
            let _ = writeln!(
                md,
                "## Two replicas of every service\n\nA second `sagashop dev --instance b` joins the \
                 first on the same topics: every group has two members sharing the partitions, \
                 and each member restores its partitions' state. The orders enter through the \
                 first edge. On 2 cores this is not faster; it shows what partition ownership \
                 costs. CPU is both processes'.\n"
            );
            let _ = writeln!(
                md,
                "| replicas | offered/s | completed/s | e2e p50 ms | e2e p99 ms | CPU ms per order |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for (n, s) in [(1, one), (2, Some(&two))] {
                if let Some(s) = s {
                    let _ = writeln!(
                        md,
                        "| {n} | {} | {} | {} | {} | {} |",
                        s.rate,
                        s.completed_per_s.show(1),
                        s.e2e_p50.show(0),
                        s.e2e_p99.show(0),
                        s.cpu_ms_per_order.show(2)
                    );
                }
            }
            let _ = writeln!(md);
        }
    }

    /// Ratios to the ceiling, the operator's figures and the profile.
    fn ratios_operator_profile(&self, md: &mut String, steps: &[Step]) {
        let _ = writeln!(md, "## Ratios to the ceiling\n");
        let _ = writeln!(
            md,
            "Each order cost **{:.1} Kafka offsets** (records plus transaction markers, summed \
             over every topic of the run, divided by accepted orders).\n",
            self.offsets_total()
        );
        let _ = writeln!(md, "| topic | offsets per order |\n| --- | ---: |");
        let mut by_topic: Vec<_> = self.offsets_per_order.iter().collect();
        by_topic.sort_by(|a, b| b.1.total_cmp(a.1));
        for (topic, per_order) in by_topic {
            let _ = writeln!(md, "| `{topic}` | {per_order:.2} |");
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| offered/s | edge ÷ produce ceiling | completed × offsets ÷ produce ceiling |\n| ---: | ---: | ---: |"
        );
        for s in steps {
            let _ = writeln!(
                md,
                "| {} | {:.2} % | {:.1} % |",
                s.rate,
                100.0 * s.accepted_per_s.median / self.produce.median.max(1.0),
                100.0 * s.completed_per_s.median * self.offsets_total()
                    / self.produce.median.max(1.0)
            );
        }
        let _ = writeln!(md, "\n## Operator\n");
        match &self.operator {
            Some(text) => {
                let _ = writeln!(md, "```\n{}\n```", text.trim());
            }
            None => {
                let _ = writeln!(
                    md,
                    "Not measured in this run (it needs the Kubernetes API server): \
                     `cargo bench -p sagashop-operator --bench topics > target/bench/operator.txt`, \
                     then `scripts/bench` again."
                );
            }
        }
        if let Some(profile) = &self.profile {
            let _ = writeln!(
                md,
                "\n## Profile of `sagashop dev` at the highest rate (perf, cpu-clock, self time)\n\n```\n{profile}\n```"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_the_median_with_its_range() {
        let f = Figure::of(&[3.0, 1.0, 2.0]);
        assert_eq!((f.median, f.min, f.max), (2.0, 1.0, 3.0));
        let even = Figure::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median, 2.5);
        assert_eq!(Figure::of(&[]).median, 0.0);
    }

    #[test]
    fn the_most_completed_rate_is_the_fastest_whose_outcomes_stay_within_a_second() {
        let step = |rate, completed, p99| {
            let f = |x: f64| Figure::of(&[x]);
            Step {
                rate,
                accepted_per_s: f(f64::from(rate)),
                errors: 0.0,
                edge_p50: f(1.0),
                edge_p95: f(1.0),
                edge_p99: f(1.0),
                completed_per_s: f(completed),
                unfinished: 0.0,
                cancelled: 0.0,
                e2e_p50: f(p99 / 2.0),
                e2e_p95: f(p99),
                e2e_p99: f(p99),
                cpu_ms_per_order: f(1.0),
                broker_cpu_ms_per_order: f(1.0),
            }
        };
        // 1,600 offered completes more, but takes 8 s: 800's 770/s is the sustained figure.
        let steps = [
            step(400, 390.0, 450.0),
            step(800, 770.0, 700.0),
            step(1600, 920.0, 8000.0),
        ];
        assert_eq!(most_completed(&steps).map(|s| s.rate), Some(800));
        assert!(most_completed(&[step(1600, 920.0, 8000.0)]).is_none());
    }
}
