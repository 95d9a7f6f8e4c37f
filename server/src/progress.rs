//! Progress of long work (replay at start-up, `chainql bench`, `\i` in the shell), on stderr: a
//! bar with rate and ETA on a terminal, and otherwise a plain line at most once a second, so
//! logs and CI output stay readable and short work prints nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal bar is redrawn.
const REDRAW: Duration = Duration::from_millis(100);
/// How often a plain line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(1);
const BAR_WIDTH: usize = 30;

/// One piece of long work, counted in `unit`s.
#[derive(Debug)]
pub struct Progress {
    label: String,
    unit: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_drawn: Option<Instant>,
    terminal: bool,
    /// Whether anything was written, so `finish` knows whether to close the line.
    shown: bool,
}

impl Progress {
    /// Starts counting toward `total` units.
    pub fn new(label: impl Into<String>, total: u64, unit: &'static str) -> Progress {
        Progress {
            label: label.into(),
            unit,
            total,
            done: 0,
            started: Instant::now(),
            last_drawn: None,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Like [`Progress::new`], for work that prints results to stdout as it goes (a `\i` file):
    /// a bar redrawn on the same terminal would be split by that output, so when stdout is a
    /// terminal too, progress comes as plain lines.
    pub fn beside_output(label: impl Into<String>, total: u64, unit: &'static str) -> Progress {
        let mut progress = Progress::new(label, total, unit);
        if std::io::stdout().is_terminal() {
            progress.terminal = false;
        }
        progress
    }

    /// Counts `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        let now = Instant::now();
        let every = if self.terminal { REDRAW } else { LINE_EVERY };
        let due = match self.last_drawn {
            Some(last) => now.duration_since(last) >= every,
            // The first plain line only after a second's work: short work prints nothing.
            None => self.terminal || now.duration_since(self.started) >= every,
        };
        if due {
            self.last_drawn = Some(now);
            self.draw();
        }
    }

    /// Ends the work: a terminal bar is completed and its line closed; a plain-line report
    /// gets its last line if it printed any.
    pub fn finish(mut self) {
        if self.shown {
            self.draw();
            if self.terminal {
                let _ = writeln!(std::io::stderr());
            }
        }
        self.shown = false;
    }

    fn draw(&mut self) {
        let line = self.line();
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.shown = true;
    }

    /// `label [####      ] 1200/5000 blocks  240/s  ETA 16s` (the bar only on a terminal).
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / elapsed;
        let eta = if self.done >= self.total {
            "done".to_string()
        } else if rate > 0.0 {
            format!("ETA {}", duration_text((self.total - self.done) as f64 / rate))
        } else {
            "ETA ?".to_string()
        };
        let counts = format!("{}/{} {}", self.done, self.total, self.unit);
        if self.terminal {
            let filled = if self.total == 0 {
                BAR_WIDTH
            } else {
                (self.done.min(self.total) as f64 / self.total as f64 * BAR_WIDTH as f64) as usize
            };
            let bar = format!("{}{}", "#".repeat(filled), " ".repeat(BAR_WIDTH - filled));
            format!("{} [{bar}] {counts}  {rate:.0}/s  {eta}", self.label)
        } else {
            format!("{}: {counts} ({rate:.0}/s, {eta})", self.label)
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Work that stopped early (an error, a cancel) leaves the terminal on a fresh line.
        if self.shown && self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn duration_text(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_count_rate_and_eta() {
        let mut progress = Progress::new("replaying blocks", 10, "blocks");
        progress.terminal = false;
        progress.done = 5;
        let line = progress.line();
        assert!(line.starts_with("replaying blocks: 5/10 blocks ("), "{line}");
        assert!(line.contains("/s, ETA "), "{line}");
        progress.done = 10;
        assert!(progress.line().ends_with(", done)"), "{}", progress.line());
    }

    #[test]
    fn the_terminal_bar_fills_with_the_work() {
        let mut progress = Progress::new("loading", 4, "statements");
        progress.terminal = true;
        progress.done = 2;
        let line = progress.line();
        let bar = format!("[{}{}]", "#".repeat(15), " ".repeat(15));
        assert!(line.contains(&bar), "{line}");
        assert!(line.contains("2/4 statements"), "{line}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(4.4), "4s");
        assert_eq!(duration_text(75.0), "1m15s");
        assert_eq!(duration_text(7300.0), "2h01m");
    }
}
