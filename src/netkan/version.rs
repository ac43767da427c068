//! CKAN's version ordering: `[epoch:]version`, epochs compared as numbers, then the versions
//! compared by alternating runs of non-digits (as strings, with `.` sorting above everything
//! else) and runs of digits (as numbers), the shorter version losing a tie. This is the
//! order of CKAN's `ModuleVersion`, quirks included, so out-of-order checks agree with the
//! official tools.

use std::cmp::Ordering;
use std::fmt;

/// A CKAN module version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    epoch: u64,
    version: String,
    original: String,
}

impl Version {
    /// Parses any string: every string is a version (an unparseable epoch is part of the
    /// version text, as in CKAN).
    pub fn new(s: &str) -> Self {
        let (epoch, version) = match s.split_once(':') {
            Some((e, v)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
                match e.parse() {
                    Ok(n) => (n, v),
                    Err(_) => (0, s),
                }
            }
            _ => (0, s),
        };
        Self {
            epoch,
            version: version.to_owned(),
            original: s.to_owned(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The version without its epoch.
    pub fn without_epoch(&self) -> &str {
        &self.version
    }

    /// The same version with the given epoch (`0` drops it).
    pub fn with_epoch(&self, epoch: u64) -> Self {
        if epoch == 0 {
            Self::new(&self.version)
        } else {
            Self::new(&format!("{epoch}:{}", self.version))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self, other)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two version strings under CKAN's ordering.
pub fn cmp_str(a: &str, b: &str) -> Ordering {
    compare(&Version::new(a), &Version::new(b))
}

fn compare(a: &Version, b: &Version) -> Ordering {
    if a.epoch != b.epoch {
        return a.epoch.cmp(&b.epoch);
    }
    if a.version == b.version {
        return Ordering::Equal;
    }
    let (mut r1, mut r2) = (a.version.as_str(), b.version.as_str());
    while !r1.is_empty() && !r2.is_empty() {
        let (o, n1, n2) = string_part(r1, r2);
        if o != Ordering::Equal {
            return o;
        }
        let (o, n1, n2) = number_part(n1, n2);
        if o != Ordering::Equal {
            return o;
        }
        (r1, r2) = (n1, n2);
    }
    match (r1.is_empty(), r2.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

fn split_at_first(s: &str, pred: impl Fn(char) -> bool) -> (&str, &str) {
    match s.char_indices().find(|&(_, c)| pred(c)) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    }
}

/// The leading non-digit runs of both: `.` sorts above any other character, and two runs
/// that both start with `.` differ only when exactly one of them is a lone `.`.
fn string_part<'a>(v1: &'a str, v2: &'a str) -> (Ordering, &'a str, &'a str) {
    let (s1, rest1) = split_at_first(v1, char::is_numeric);
    let (s2, rest2) = split_at_first(v2, char::is_numeric);
    let order = match (s1.chars().next(), s2.chars().next()) {
        (Some(f1), Some(f2)) => match (f1 == '.', f2 == '.') {
            (false, true) => Ordering::Less,
            (true, false) => Ordering::Greater,
            (true, true) => match (s1.len() == 1, s2.len() == 1) {
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => Ordering::Equal,
            },
            (false, false) => ordinal(s1, s2),
        },
        _ => ordinal(s1, s2),
    };
    (order, rest1, rest2)
}

/// .NET's ordinal comparison: by UTF-16 code units.
fn ordinal(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The leading digit runs of both, as numbers (a run that does not fit in an `i32` counts
/// as 0, as in CKAN).
fn number_part<'a>(v1: &'a str, v2: &'a str) -> (Ordering, &'a str, &'a str) {
    let (d1, rest1) = split_at_first(v1, |c| !c.is_numeric());
    let (d2, rest2) = split_at_first(v2, |c| !c.is_numeric());
    let n1: i32 = d1.parse().unwrap_or(0);
    let n2: i32 = d2.parse().unwrap_or(0);
    (n1.cmp(&n2), rest1, rest2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    fn check(a: &str, b: &str, expected: Ordering) {
        assert_eq!(cmp_str(a, b), expected, "{a} vs {b}");
        assert_eq!(cmp_str(b, a), expected.reverse(), "{b} vs {a}");
    }

    #[test]
    fn spec_examples() {
        check("1.0", "1.0", Equal);
        check("1.0", "1.1", Less);
        check("1.2", "1.10", Less);
        check("1.2", "1.2.3", Less);
        check("1.0.0", "1.0", Greater);
        check("v1.2", "v1.10", Less);
        check("1:0.1", "2.0", Greater);
        check("2:0.1", "1:9.9", Greater);
        check("0:1.0", "1.0", Equal);
    }

    #[test]
    fn dots_sort_above_other_characters() {
        check("1.0", "1-0", Greater);
        check("1.0", "1_0", Greater);
        check("1.0beta", "1.0.1", Less);
        check("1.0", "1a0", Greater);
        // two runs starting with '.' differ only by being a lone '.'
        check("1.0", "1.a0", Greater);
        check("1.a", "1.b", Equal);
    }

    #[test]
    fn letters_compare_ordinally() {
        check("1.0a", "1.0b", Less);
        check("1.0B", "1.0a", Less);
        check("v1", "1", Greater);
        check("1.0-beta", "1.0-rc", Less);
    }

    #[test]
    fn numbers_compare_as_numbers() {
        check("1.010", "1.9", Greater);
        check("1.01", "1.1", Equal);
        check("20250530", "9", Greater);
        // too big for an i32: 0, as in CKAN
        check("1.99999999999", "1.0", Equal);
    }

    #[test]
    fn epochs() {
        let v = Version::new("3:v0.0877");
        assert_eq!(v.epoch(), 3);
        assert_eq!(v.without_epoch(), "v0.0877");
        assert_eq!(v.with_epoch(4).as_str(), "4:v0.0877");
        assert_eq!(v.with_epoch(0).as_str(), "v0.0877");
        assert_eq!(Version::new("a:1").epoch(), 0);
        assert_eq!(Version::new("a:1").without_epoch(), "a:1");
    }
}
