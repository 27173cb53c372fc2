//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines,
//! samples with escaped label values, and histograms as cumulative `_bucket` series.
//!
//! Written by hand instead of taken from `prometheus-client`: that crate only writes
//! OpenMetrics, and it does not escape label values or help text (client_rust issue
//! 151), while our `registry` label comes from what callers send. Here every label
//! value goes through [`escape_label_value`].

use std::borrow::Cow;
use std::fmt::Write as _;

use super::histogram::Histogram;

/// `Content-Type` of an answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric family is, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label name/value pairs of one sample, in output order.
pub type Labels<'a> = [(&'a str, &'a str)];

/// Builds one exposition. Families must be written one after the other, each with its
/// samples right after its [`Exposition::family`] call, as the format requires.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &Labels<'_>, value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// Every series of one histogram: a `_bucket` per bound and `+Inf` (cumulative),
    /// then `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &Labels<'_>, histogram: &Histogram) {
        for (bound, cumulative) in histogram.cumulative() {
            let le = match bound {
                Some(bound) => format_float(bound),
                None => "+Inf".to_owned(),
            };
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", format_float(histogram.sum()));
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", histogram.count());
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }

    fn labels(&mut self, labels: &Labels<'_>, le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let le = le.map(|le| ("le", le));
        for (i, (name, value)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{name}=\"{}\"", escape_label_value(value));
        }
        self.out.push('}');
    }
}

/// Escapes a label value: `\`, `"` and line feed, the three the format requires.
pub fn escape_label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes help text: `\` and line feed (a quote needs no escape there).
fn escape_help(help: &str) -> Cow<'_, str> {
    if !help.contains(['\\', '\n']) {
        return Cow::Borrowed(help);
    }
    Cow::Owned(help.replace('\\', r"\\").replace('\n', r"\n"))
}

/// A float as Go's `strconv.ParseFloat` (Prometheus' parser) reads it; Rust's `Display`
/// never uses an exponent and writes whole numbers without `.0`, both fine for it.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_three_characters_and_nothing_else() {
        assert_eq!(
            escape_label_value("reg.example.com:5000"),
            "reg.example.com:5000"
        );
        assert!(matches!(escape_label_value("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_label_value("a\\b\"c\nd\te"), "a\\\\b\\\"c\\nd\te");
        assert_eq!(
            escape_help("one\\two\nthree \"q\""),
            "one\\\\two\\nthree \"q\""
        );
    }

    #[test]
    fn family_and_samples() {
        let mut text = Exposition::default();
        text.family("x_total", "Things.", Kind::Counter);
        text.sample("x_total", &[], 3);
        text.sample("x_total", &[("a", "1"), ("b", "q\"\n")], 4);
        assert_eq!(
            text.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
             x_total{a=\"1\",b=\"q\\\"\\n\"} 4\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::new(&[0.5, 1.0, 2.5]);
        for v in [0.25, 0.5, 0.75, 3.0, 100.0] {
            h.observe(v);
        }
        let mut text = Exposition::default();
        text.family("d_seconds", "Time.", Kind::Histogram);
        text.histogram("d_seconds", &[("route", "/x")], &h);
        assert_eq!(
            text.finish(),
            "# HELP d_seconds Time.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{route=\"/x\",le=\"0.5\"} 2\n\
             d_seconds_bucket{route=\"/x\",le=\"1\"} 3\n\
             d_seconds_bucket{route=\"/x\",le=\"2.5\"} 3\n\
             d_seconds_bucket{route=\"/x\",le=\"+Inf\"} 5\n\
             d_seconds_sum{route=\"/x\"} 104.5\n\
             d_seconds_count{route=\"/x\"} 5\n"
        );
    }

    #[test]
    fn floats_parse_back() {
        assert_eq!(format_float(0.005), "0.005");
        assert_eq!(format_float(1e-7), "0.0000001");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
    }
}
