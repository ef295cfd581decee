//! Results: every figure is a value compared with a baseline measured in the same run,
//! shown as their ratio (and difference) and judged against its target. The report prints
//! as a plain table on stdout and, with `--markdown FILE`, as a markdown document with the
//! date, the machine, the git commit and the exact command line.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::runner::Stats;

/// The unit of a figure's value and baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Requests per second.
    ReqPerSec,
    /// Messages per second (WebSocket round trips).
    MsgPerSec,
    /// Microseconds of latency.
    Micros,
    /// Resident memory in MiB.
    Mebibytes,
    /// Milliseconds of a longer operation (a pull).
    Millis,
    /// Bytes moved.
    Bytes,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::ReqPerSec => format!("{v:.0} req/s"),
            Unit::MsgPerSec => format!("{v:.0} msg/s"),
            Unit::Micros => format!("{v:.0} µs"),
            Unit::Mebibytes => format!("{v:.1} MiB"),
            Unit::Millis => format!("{v:.0} ms"),
            Unit::Bytes => format!("{v:.0} B"),
        }
    }
}

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// value / baseline ≥ the number.
    RatioAtLeast(f64),
    /// value / baseline ≤ the number.
    RatioAtMost(f64),
    /// value − baseline ≤ the number (in the figure's unit).
    AddedAtMost(f64),
    /// value ≤ the number (an absolute target; the baseline gives scale).
    AtMost(f64),
    /// value ≥ the number (an absolute target).
    AtLeast(f64),
    /// Informational: no target.
    None,
}

/// One compared figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What is measured, e.g. `python3-http p50 latency, 1 connection`.
    pub name: String,
    /// The measured path, e.g. `gateway`.
    pub value_label: String,
    /// The measured value.
    pub value: f64,
    /// The baseline path, e.g. `direct watchdog`.
    pub baseline_label: String,
    /// The baseline value.
    pub baseline: f64,
    /// Unit of value and baseline.
    pub unit: Unit,
    /// What the figure must reach.
    pub target: Target,
}

impl Figure {
    /// value / baseline.
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            f64::NAN
        } else {
            self.value / self.baseline
        }
    }

    /// value − baseline.
    pub fn delta(&self) -> f64 {
        self.value - self.baseline
    }

    /// `Some(true)` for PASS, `Some(false)` for MISS, `None` when there is no target.
    pub fn passed(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(t) => Some(self.ratio() >= t),
            Target::RatioAtMost(t) => Some(self.ratio() <= t),
            Target::AddedAtMost(t) => Some(self.delta() <= t),
            Target::AtMost(t) => Some(self.value <= t),
            Target::AtLeast(t) => Some(self.value >= t),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(t) => format!("≥ {t:.2}×"),
            Target::RatioAtMost(t) => format!("≤ {t:.2}×"),
            Target::AddedAtMost(t) => format!("Δ ≤ +{}", self.unit.format(t)),
            Target::AtMost(t) => format!("≤ {}", self.unit.format(t)),
            Target::AtLeast(t) => format!("≥ {}", self.unit.format(t)),
            Target::None => "—".into(),
        }
    }

    fn verdict(&self) -> &'static str {
        match self.passed() {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "info",
        }
    }

    fn cells(&self) -> [String; 7] {
        let delta = self.delta();
        let sign = if delta >= 0.0 { "+" } else { "−" };
        [
            self.name.clone(),
            format!("{} ({})", self.unit.format(self.value), self.value_label),
            format!(
                "{} ({})",
                self.unit.format(self.baseline),
                self.baseline_label
            ),
            format!("{:.2}×", self.ratio()),
            format!("{sign}{}", self.unit.format(delta.abs())),
            self.target_text(),
            self.verdict().into(),
        ]
    }
}

/// One measured series, listed under the figures.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured, e.g. `python3-http via gateway, wrk -t2 -c32`.
    pub name: String,
    /// Its statistics.
    pub stats: Stats,
}

/// A group of figures with its explanation.
#[derive(Debug, Clone)]
pub struct Section {
    /// Heading, e.g. `Gateway overhead`.
    pub title: String,
    /// Markdown paragraph explaining the figures.
    pub about: String,
    /// The figures.
    pub figures: Vec<Figure>,
    /// The measured series behind them.
    pub measurements: Vec<Measurement>,
    /// Set when the group could not be measured.
    pub error: Option<String>,
}

impl Section {
    /// An empty section.
    pub fn new(title: &str, about: &str) -> Section {
        Section {
            title: title.into(),
            about: about.into(),
            figures: Vec::new(),
            measurements: Vec::new(),
            error: None,
        }
    }

    /// Records a measured series and returns its statistics.
    pub fn measured(&mut self, name: impl Into<String>, stats: Stats) -> Stats {
        let name = name.into();
        eprintln!(
            "  {name}: {:.0} req/s, mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
            stats.rps, stats.mean_us, stats.p50_us, stats.p99_us
        );
        self.measurements.push(Measurement { name, stats });
        stats
    }

    /// Adds a figure.
    pub fn figure(&mut self, f: Figure) {
        self.figures.push(f);
    }
}

/// Everything one run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// The groups, in run order.
    pub sections: Vec<Section>,
    /// `/proc/loadavg`'s 1-minute figure when the run started.
    pub load_at_start: String,
}

const HEADERS: [&str; 7] = [
    "figure", "value", "baseline", "ratio", "Δ", "target", "result",
];

impl Report {
    /// Number of figures that missed their target, and of groups that failed.
    pub fn misses(&self) -> (usize, usize) {
        let missed = self
            .sections
            .iter()
            .flat_map(|s| &s.figures)
            .filter(|f| f.passed() == Some(false))
            .count();
        let failed = self.sections.iter().filter(|s| s.error.is_some()).count();
        (missed, failed)
    }

    /// The plain-text table for the terminal.
    pub fn text(&self) -> String {
        let mut rows: Vec<[String; 7]> = Vec::new();
        for s in &self.sections {
            rows.extend(s.figures.iter().map(Figure::cells));
        }
        let mut widths = HEADERS.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                let pad = w - c.chars().count();
                // Left-align the figure name, right-align the numbers.
                if i == 0 {
                    let _ = write!(out, "{c}{}", " ".repeat(pad));
                } else {
                    let _ = write!(out, "  {}{c}", " ".repeat(pad));
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = String::new();
        out += &line(&HEADERS.map(String::from));
        out += &line(&widths.map(|w| "-".repeat(w)));
        for s in &self.sections {
            if let Some(e) = &s.error {
                let _ = writeln!(out, "{}: FAILED: {e}", s.title);
            }
            for f in &s.figures {
                out += &line(&f.cells());
            }
        }
        out
    }

    /// The markdown document written by `--markdown`.
    pub fn markdown(&self, intro: &str, command: &str) -> String {
        let mut out = String::new();
        out += "# Benchmarks\n\n";
        out += intro.trim();
        out += "\n\nReproduce (installs `wrk` if missing, builds, runs; about six minutes):\n\n";
        out += "```sh\nscripts/bench                              # print the table\n";
        out += "scripts/bench --markdown docs/benchmarks.md  # and rewrite this file\n```\n\n";
        out += "`--quick` makes every run shorter (a smoke test; its numbers are noisier).\n\n";
        for s in &self.sections {
            let _ = write!(out, "## {}\n\n{}\n\n", s.title, s.about.trim());
        }
        out += "## Results\n\n";
        let _ = writeln!(
            out,
            "- Date: {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(out, "- Machine: {}", machine());
        let _ = writeln!(out, "- Load average at start: {}", self.load_at_start);
        let _ = writeln!(out, "- Commit: {}", git_commit());
        let _ = writeln!(out, "- Command: `{command}`\n");
        let (missed, failed) = self.misses();
        let total: usize = self
            .sections
            .iter()
            .flat_map(|s| &s.figures)
            .filter(|f| f.passed().is_some())
            .count();
        let _ = writeln!(
            out,
            "{} of {total} targets met{}.\n",
            total - missed,
            if failed > 0 {
                format!("; {failed} group(s) failed to run")
            } else {
                String::new()
            }
        );
        out += &md_row(&HEADERS.map(String::from));
        out += &md_row(&["---", "---:", "---:", "---:", "---:", "---:", ":---:"].map(String::from));
        for s in &self.sections {
            if let Some(e) = &s.error {
                let _ = writeln!(
                    out,
                    "| {}: **failed**: {} | | | | | | |",
                    s.title,
                    md_escape(e)
                );
            }
            for f in &s.figures {
                out += &md_row(&f.cells());
            }
        }
        out += "\n### Measured series\n\n";
        out += "Latencies are per request as seen by the client (wrk, or virga-bench's own clock for fork/exec).\n\n";
        out += &md_row(&["series", "req/s", "mean", "p50", "p99", "requests"].map(String::from));
        out += &md_row(&["---", "---:", "---:", "---:", "---:", "---:"].map(String::from));
        for m in self.sections.iter().flat_map(|s| &s.measurements) {
            let st = m.stats;
            out += &md_row(&[
                m.name.clone(),
                format!("{:.0}", st.rps),
                format!("{:.0} µs", st.mean_us),
                format!("{:.0} µs", st.p50_us),
                format!("{:.0} µs", st.p99_us),
                st.count.to_string(),
            ]);
        }
        out
    }

    /// Writes the markdown document to `path`.
    pub fn write_markdown(&self, path: &Path, intro: &str, command: &str) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, self.markdown(intro, command))
            .with_context(|| format!("write {}", path.display()))
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_row(cells: &[String]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| md_escape(c)).collect();
    format!("| {} |\n", cells.join(" | "))
}

/// The 1-minute load average, from /proc/loadavg.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `N cores, MODEL` from the scheduler and /proc/cpuinfo.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores (nproc), {model}, {}", std::env::consts::ARCH)
}

/// Short HEAD commit, with `-dirty` when the work tree has changes.
pub fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

/// The command line, shell-quoted where needed.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(value: f64, baseline: f64, target: Target) -> Figure {
        Figure {
            name: "x".into(),
            value_label: "gateway".into(),
            value,
            baseline_label: "direct".into(),
            baseline,
            unit: Unit::Micros,
            target,
        }
    }

    #[test]
    fn judges_targets() {
        assert_eq!(
            fig(90.0, 100.0, Target::RatioAtLeast(0.85)).passed(),
            Some(true)
        );
        assert_eq!(
            fig(80.0, 100.0, Target::RatioAtLeast(0.85)).passed(),
            Some(false)
        );
        assert_eq!(
            fig(119.0, 100.0, Target::RatioAtMost(1.2)).passed(),
            Some(true)
        );
        assert_eq!(
            fig(300.0, 100.0, Target::AddedAtMost(150.0)).passed(),
            Some(false)
        );
        assert_eq!(
            fig(240.0, 100.0, Target::AddedAtMost(150.0)).passed(),
            Some(true)
        );
        assert_eq!(fig(1.0, 1.0, Target::None).passed(), None);
    }

    #[test]
    fn tables_show_every_figure() {
        let mut s = Section::new("G", "about");
        s.figure(fig(240.0, 100.0, Target::AddedAtMost(150.0)));
        let r = Report {
            sections: vec![s],
            load_at_start: "0.10".into(),
        };
        let text = r.text();
        assert!(text.contains("2.40×") && text.contains("+140 µs") && text.contains("PASS"));
        let md = r.markdown("intro", "virga-bench --quick");
        assert!(md.contains("## G") && md.contains("`virga-bench --quick`"));
        assert!(md.contains("| x | 240 µs (gateway) |"));
        assert!(md.contains("1 of 1 targets met"));
    }
}
