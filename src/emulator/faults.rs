//! Fault injection: `--faults "status=503@0.2,latency=1500ms@0.1,malformed@0.1,drop@0.05"`.
//!
//! Each rule fires on a request with its rate (default 1). `status` answers with that code
//! (429 carries `Retry-After: 1`), `latency` delays the answer, `malformed` answers 200 with a
//! body that is not JSON, `drop` resets the request's stream (HTTP/2) or closes its connection (HTTP/1.1).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    Status(u16),
    Latency(Duration),
    Malformed,
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub rate: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults(pub Vec<Fault>);

impl std::str::FromStr for Faults {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_rule)
            .collect::<Result<_, _>>()
            .map(Faults)
    }
}

fn parse_rule(rule: &str) -> Result<Fault, String> {
    let (body, rate) = match rule.split_once('@') {
        Some((body, rate)) => {
            let rate: f64 = rate
                .parse()
                .map_err(|_| format!("fault {rule:?}: rate {rate:?} is not a number"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("fault {rule:?}: rate must be between 0 and 1"));
            }
            (body, rate)
        }
        None => (rule, 1.0),
    };
    let (name, value) = body.split_once('=').unwrap_or((body, ""));
    let kind = match name {
        "status" => FaultKind::Status(
            value
                .parse()
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| format!("fault {rule:?}: status needs an HTTP code"))?,
        ),
        "latency" => {
            let ms: u64 = value
                .trim_end_matches("ms")
                .parse()
                .map_err(|_| format!("fault {rule:?}: latency needs milliseconds"))?;
            FaultKind::Latency(Duration::from_millis(ms))
        }
        "malformed" => FaultKind::Malformed,
        "drop" => FaultKind::Drop,
        other => {
            return Err(format!(
                "unknown fault {other:?} (status, latency, malformed, drop)"
            ))
        }
    };
    Ok(Fault { kind, rate })
}

impl Faults {
    /// The faults that fire for one request, each drawn independently.
    pub fn draw(&self) -> Vec<FaultKind> {
        self.0
            .iter()
            .filter(|f| chance(f.rate))
            .map(|f| f.kind.clone())
            .collect()
    }
}

fn chance(rate: f64) -> bool {
    use aws_lc_rs::rand::SecureRandom;
    if rate >= 1.0 {
        return true;
    }
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .is_err()
    {
        return false;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let f: Faults = "status=503@0.5, latency=1500ms@0.1,malformed,drop@0"
            .parse()
            .unwrap();
        assert_eq!(f.0.len(), 4);
        assert_eq!(
            f.0[0],
            Fault {
                kind: FaultKind::Status(503),
                rate: 0.5
            }
        );
        assert_eq!(f.0[1].kind, FaultKind::Latency(Duration::from_millis(1500)));
        assert_eq!(f.0[2].rate, 1.0);
        assert!(f.draw().contains(&FaultKind::Malformed));
        assert!(!f.draw().contains(&FaultKind::Drop));
        assert!("status=99".parse::<Faults>().is_err());
        assert!("explode"
            .parse::<Faults>()
            .unwrap_err()
            .contains("unknown fault"));
        assert!("drop@2".parse::<Faults>().is_err());
    }
}
