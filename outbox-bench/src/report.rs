//! The one table the benchmark prints: every figure beside its baseline from the same run,
//! and the goals it is held to.

use std::fmt::Write as _;

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The group: drain, keys, latency, ...
    pub section: String,
    /// What was measured.
    pub case: String,
    /// The figure, already formatted with its unit.
    pub figure: String,
    /// What the ratio is taken against, with that baseline's own figure.
    pub baseline: String,
    /// figure / baseline (or baseline / figure where smaller is better, said in `baseline`).
    pub ratio: Option<f64>,
    /// The goal this line is held to and whether it was met, if any.
    pub goal: Option<Goal>,
}

/// A goal: the ratio (or figure) it must reach, and whether this run reached it.
#[derive(Clone, Debug)]
pub struct Goal {
    /// The goal in words, e.g. `>= 0.80`.
    pub target: String,
    /// Whether the run met it.
    pub met: bool,
}

impl Goal {
    /// `value >= min`.
    pub fn at_least(value: f64, min: f64) -> Goal {
        Goal {
            target: format!(">= {min}"),
            met: value >= min,
        }
    }

    /// `value <= max` (`what` names the unit of `max`).
    pub fn at_most(value: f64, max: f64, what: &str) -> Goal {
        Goal {
            target: format!("<= {max}{what}"),
            met: value <= max,
        }
    }
}

/// Collects rows as sections finish, and prints them.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// Adds a row; it is also echoed to stderr so a long run shows progress.
    pub fn push(&mut self, row: Row) {
        eprintln!(
            "  {} | {} | {} | {}",
            row.section,
            row.case,
            row.figure,
            row.ratio.map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
        self.rows.push(row);
    }

    /// A remark printed under the table (a case cut short, a section skipped).
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("  note: {text}");
        self.notes.push(text);
    }

    /// Goals missed.
    pub fn missed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.goal.as_ref().is_some_and(|g| !g.met))
            .count()
    }

    /// The table as Markdown.
    pub fn render(&self) -> String {
        let headers = ["section", "case", "figure", "baseline", "ratio", "goal"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.section.clone(),
                    r.case.clone(),
                    r.figure.clone(),
                    r.baseline.clone(),
                    r.ratio.map_or("-".to_owned(), |x| format!("{x:.2}")),
                    r.goal.as_ref().map_or(String::new(), |g| {
                        format!("{} {}", g.target, if g.met { "met" } else { "MISSED" })
                    }),
                ]
            })
            .collect();
        let mut width = headers.map(str::len);
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, row: &[String]| {
            out.push('|');
            for (i, (c, w)) in row.iter().zip(width).enumerate() {
                let pad = w - c.chars().count();
                // Figures and ratios right-aligned, words left-aligned.
                if i == 2 || i == 4 {
                    let _ = write!(out, " {}{} |", " ".repeat(pad), c);
                } else {
                    let _ = write!(out, " {}{} |", c, " ".repeat(pad));
                }
            }
            out.push('\n');
        };
        line(&mut out, &headers.map(str::to_owned));
        out.push('|');
        for (i, w) in width.iter().enumerate() {
            let colon = if i == 2 || i == 4 { ":" } else { "-" };
            let _ = write!(out, "{}{}|", "-".repeat(w + 1), colon);
        }
        out.push('\n');
        for row in &cells {
            line(&mut out, row);
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n- {n}");
        }
        out
    }
}

/// `12,345` for counts and rates.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A rate in events per second.
pub fn per_sec(x: f64) -> String {
    format!("{} ev/s", thousands(x))
}

/// Milliseconds with sensible precision.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{} ms", thousands(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-12345.0), "-12,345");
    }

    #[test]
    fn table_aligns_and_marks_goals() {
        let mut r = Report::default();
        r.push(Row {
            section: "drain".into(),
            case: "PG -> NATS".into(),
            figure: per_sec(12000.0),
            baseline: "L*".into(),
            ratio: Some(0.5),
            goal: Some(Goal::at_least(0.5, 0.8)),
        });
        let t = r.render();
        assert!(t.contains("| 12,000 ev/s |"), "{t}");
        assert!(t.contains(">= 0.8 MISSED"), "{t}");
        assert_eq!(r.missed(), 1);
        let widths: Vec<usize> = t.lines().take(3).map(|l| l.chars().count()).collect();
        assert_eq!(widths[0], widths[1]);
        assert_eq!(widths[1], widths[2]);
    }
}
