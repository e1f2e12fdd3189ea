//! A problem found in a policy, pointed at by file, line and column.

use std::{fmt, path::PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Collects diagnostics for one file.
pub struct Sink {
    pub file: PathBuf,
    pub found: Vec<Diagnostic>,
}

impl Sink {
    pub fn new(file: PathBuf) -> Self {
        Sink {
            file,
            found: Vec::new(),
        }
    }

    pub fn at(
        &mut self,
        at: serde_saphyr::Location,
        severity: Severity,
        message: impl Into<String>,
    ) {
        self.at_position(at.line(), at.column(), severity, message);
    }

    /// A problem at a line and column (1-based; 0 counts as 1).
    pub fn at_position(
        &mut self,
        line: u64,
        column: u64,
        severity: Severity,
        message: impl Into<String>,
    ) {
        self.found.push(Diagnostic {
            file: self.file.clone(),
            line: line.max(1),
            column: column.max(1),
            severity,
            message: message.into(),
        });
    }

    pub fn error(&mut self, at: serde_saphyr::Location, message: impl Into<String>) {
        self.at(at, Severity::Error, message);
    }

    pub fn warning(&mut self, at: serde_saphyr::Location, message: impl Into<String>) {
        self.at(at, Severity::Warning, message);
    }

    /// A problem with the file as a whole (size, encoding), reported at its start.
    pub fn whole_file(&mut self, message: impl Into<String>) {
        self.at_position(1, 1, Severity::Error, message);
    }
}

/// The closest of `candidates`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            let c_lower = c.to_ascii_lowercase();
            // A longer or shorter form of the word ("enforcing" for "enforce") counts as close.
            let common = lower
                .chars()
                .zip(c_lower.chars())
                .take_while(|(a, b)| a == b)
                .count();
            let shorter = lower.chars().count().min(c_lower.chars().count());
            let prefix = common >= 4 && common + 2 >= shorter;
            (
                if prefix {
                    1
                } else {
                    edit_distance(&lower, &c_lower)
                },
                *c,
            )
        })
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("alow", &["name", "match", "allow"]),
            Some("allow")
        );
        assert_eq!(
            did_you_mean("maxstep", &["maxStep", "maxFrequency"]),
            Some("maxStep")
        );
        assert_eq!(did_you_mean("zzzzzz", &["name", "allow"]), None);
        assert_eq!(
            did_you_mean("enforcing", &["enforce", "audit"]),
            Some("enforce")
        );
        assert_eq!(did_you_mean("slow", &["step", "slew"]), Some("slew"));
    }
}
