//! Caller-supplied text echoed into logs and error messages, cut to a bounded length.
//!
//! A key reference, a key name or an endpoint comes from the caller and can be megabytes long:
//! echoed whole, twenty calls grew the log by 57 MiB, and a 300 kB name in a status message
//! overflowed the client's metadata limit. Every echo goes through [`echo`] (one value) and every
//! status or REST error message through [`limit`] (the whole message), so neither can grow with
//! the input.

use std::fmt;

/// Bytes of one caller-supplied value that are echoed.
pub const ECHO_MAX: usize = 128;

/// Bytes of a whole error message sent to a client or logged with it.
pub const MESSAGE_MAX: usize = 1024;

/// Formats `value` (with `{}` or `{:?}`) cut to [`ECHO_MAX`] bytes, with the number of bytes
/// left out.
pub fn echo<T>(value: T) -> Echo<T> {
    Echo(value, ECHO_MAX)
}

/// `message` cut to [`MESSAGE_MAX`] bytes.
pub fn limit(message: &str) -> String {
    Echo(message, MESSAGE_MAX).to_string()
}

/// A value formatted to at most a given number of bytes (see [`echo`]).
pub struct Echo<T>(T, usize);

impl<T: fmt::Display> fmt::Display for Echo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = Truncating::new(f, self.1);
        fmt::write(&mut w, format_args!("{}", self.0))?;
        w.finish()
    }
}

impl<T: fmt::Debug> fmt::Debug for Echo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = Truncating::new(f, self.1);
        fmt::write(&mut w, format_args!("{:?}", self.0))?;
        w.finish()
    }
}

/// Passes the first `max` bytes through (cut at a character boundary) and counts the rest.
struct Truncating<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    left: usize,
    dropped: usize,
}

impl<'a, 'b> Truncating<'a, 'b> {
    fn new(out: &'a mut fmt::Formatter<'b>, max: usize) -> Self {
        Truncating {
            out,
            left: max,
            dropped: 0,
        }
    }

    fn finish(self) -> fmt::Result {
        if self.dropped > 0 {
            write!(self.out, "…({} more bytes)", self.dropped)?;
        }
        Ok(())
    }
}

impl fmt::Write for Truncating<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.dropped > 0 || s.len() > self.left {
            let mut cut = self.left.min(s.len());
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            let (kept, rest) = s.split_at(cut);
            self.out.write_str(kept)?;
            self.left = 0;
            self.dropped += rest.len();
        } else {
            self.out.write_str(s)?;
            self.left -= s.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_pass_and_long_ones_are_cut_at_a_character_boundary() {
        assert_eq!(echo("key").to_string(), "key");
        assert_eq!(format!("{:?}", echo("key")), "\"key\"");
        let long = "é".repeat(1000); // 2000 bytes
        let cut = echo(&long).to_string();
        assert!(cut.starts_with(&"é".repeat(64)), "{cut}");
        assert!(cut.ends_with("…(1872 more bytes)"), "{cut}");
        assert!(limit(&"x".repeat(3 << 20)).len() < MESSAGE_MAX + 32);
        assert_eq!(limit("short"), "short");
    }
}
