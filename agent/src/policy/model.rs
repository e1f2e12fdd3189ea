//! The policy file as an operator writes it (`apiVersion: timeguard/v1`, `kind: TimePolicy`).

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{de, Deserialize, Deserializer};
use serde_saphyr::Spanned;

pub const API_VERSION: &str = "timeguard/v1";
pub const KIND: &str = "TimePolicy";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub mode: Option<Spanned<Mode>>,
    pub clock: ClockSpec,
    /// The host's time traffic.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// The guard guarding itself: signals and ptrace of the agent and the time daemons,
    /// writes to the files it trusts, changes to its BPF objects.
    #[serde(default, rename = "selfProtection")]
    pub self_protection: Option<Spanned<SelfProtectionSpec>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfProtectionSpec {
    #[serde(default)]
    pub mode: SelfProtectionMode,
}

/// Self-protection records before it refuses: `audit` is the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelfProtectionMode {
    Off,
    #[default]
    Audit,
    Enforce,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Defaults to the policy's mode.
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub ntp: Option<NtpSpec>,
    #[serde(default)]
    pub ptp: Option<PtpSpec>,
    /// Clock rules (by name) whose executables alone may bind UDP 123, 319 and 320 and open
    /// packet sockets that see PTP frames. Absent: anyone may.
    #[serde(default)]
    pub daemons: Option<Spanned<Vec<Spanned<String>>>>,
    /// Where each time daemon may connect.
    #[serde(default)]
    pub egress: Option<Spanned<Vec<Spanned<Egress>>>>,
}

/// Which PTP domains and grandmasters this host's clients may follow, and on which
/// interfaces PTP is watched.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtpSpec {
    #[serde(default)]
    pub domains: Option<Spanned<Vec<Spanned<u8>>>>,
    #[serde(default)]
    pub grandmasters: Option<Spanned<Vec<Spanned<ClockIdentity>>>>,
    /// Default: every interface but loopback, followed as interfaces come and go.
    #[serde(default)]
    pub interfaces: Option<Spanned<Vec<Spanned<String>>>>,
}

/// The destinations one time daemon may connect or send to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// The clock rule naming the daemon's executable.
    pub daemon: Spanned<String>,
    pub to: Spanned<Vec<Spanned<Destination>>>,
}

/// A PTP clockIdentity (8 bytes), written as ptp4l prints it (`001b21.fffe.aabbcc`), with
/// colons (`00:1b:21:ff:fe:aa:bb:cc`) or as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClockIdentity(pub [u8; 8]);

impl FromStr for ClockIdentity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || {
            format!("bad clock identity `{s}`: write it as ptp4l prints it (e.g. 001b21.fffe.aabbcc) or as 8 bytes (00:1b:21:ff:fe:aa:bb:cc)")
        };
        let hex: String = s.chars().filter(|c| *c != '.' && *c != ':').collect();
        if hex.len() != 16 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(hint());
        }
        let mut id = [0u8; 8];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| hint())?;
        }
        Ok(ClockIdentity(id))
    }
}

impl fmt::Display for ClockIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}.{:02x}{:02x}.{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

/// Where a daemon may go: an address or network, and a port (none: any port).
/// `192.0.2.1`, `192.0.2.0/24:123`, `[2001:db8::1]:4460`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub net: Cidr,
    pub port: Option<u16>,
}

impl FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!("bad port in `{s}`: a port is 1 to 65535 (leave it out for any port)")
            })
        };
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| {
                format!("bad destination `{s}`: an IPv6 address with a port is written [2001:db8::1]:123")
            })?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(port(p)?),
                None if after.is_empty() => None,
                None => return Err(format!("bad destination `{s}`: write [address]:port")),
            };
            (inner.parse::<Cidr>()?, port)
        } else if s.matches(':').count() == 1 {
            let (a, p) = s.split_once(':').unwrap_or((s, ""));
            (a.parse::<Cidr>()?, Some(port(p)?))
        } else {
            (s.parse::<Cidr>()?, None)
        };
        Ok(Destination { net, port })
    }
}

/// Who this host takes time from, serves, and answers control queries from. A list that is
/// absent restricts nothing; a list that is present (even empty) admits only its entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NtpSpec {
    #[serde(default)]
    pub servers: Option<AddressList>,
    #[serde(default)]
    pub clients: Option<AddressList>,
    #[serde(default)]
    pub control: Option<AddressList>,
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimit>>,
}

/// A list of addresses and networks, each with its place in the file.
pub type AddressList = Spanned<Vec<Spanned<Cidr>>>;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// An address or a network: `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The address as v4-mapped IPv6 bytes, and the prefix length in those 128 bits.
    pub fn as_v6(&self) -> ([u8; 16], u32) {
        match self.addr {
            std::net::IpAddr::V4(a) => (
                agent_common::net::v4_mapped(a.octets()),
                96 + u32::from(self.prefix),
            ),
            std::net::IpAddr::V6(a) => (a.octets(), u32::from(self.prefix)),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || {
            format!("bad address `{s}`: write an IPv4 or IPv6 address, optionally with a /prefix (e.g. 192.0.2.10, 192.0.2.0/24, 2001:db8::/32)")
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| hint())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| {
                    format!(
                        "bad prefix in `{s}`: an {} prefix is 0 to {max}",
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    )
                })?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied changes fail with EPERM.
    #[default]
    Enforce,
    /// Denied changes are allowed and recorded as what enforce would have done.
    Audit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClockSpec {
    #[serde(default)]
    pub default: Action,
    #[serde(default)]
    pub rules: Vec<Spanned<Rule>>,
    /// Says, explicitly, that this policy may deny a time daemon installed and enabled on
    /// the host. Without it, `check` and `run` refuse such a policy in enforce mode.
    #[serde(default)]
    pub deny_installed_daemons: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matches: Match,
    pub allow: Spanned<Vec<Spanned<Operation>>>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub max_step: Option<Spanned<Duration>>,
    #[serde(default)]
    pub max_frequency: Option<Spanned<Ppm>>,
    #[serde(default)]
    pub leap: Option<Spanned<Action>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub exe: Spanned<PathBuf>,
    #[serde(default)]
    pub users: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
}

/// The operations of a set of `clock::op` bits, in the operator's words.
pub fn operation_names(bits: u32) -> Vec<&'static str> {
    agent_common::clock::op::ALL
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// An operation in the operator's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation(pub u32);

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        agent_common::clock::op::ALL
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(bit, _)| Operation(*bit))
            .ok_or_else(|| {
                let names: Vec<_> = agent_common::clock::op::ALL
                    .iter()
                    .map(|(_, n)| *n)
                    .collect();
                match super::diagnostic::did_you_mean(s, &names) {
                    Some(m) => format!(
                        "unknown operation `{s}`; did you mean `{m}`? (operations: {})",
                        names.join(", ")
                    ),
                    None => format!(
                        "unknown operation `{s}`; write one of: {}",
                        names.join(", ")
                    ),
                }
            })
    }
}

/// Parses `FromStr` values from YAML strings, so a bad value is an error with its position.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Operation, Duration, Ppm, Cidr, ClockIdentity, Destination);

/// A duration written as `500ms`, `1s`, `2h`, `1.5s` (units: ns, us, ms, s, m, h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration {
    pub nanos: u64,
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || {
            format!("bad duration \"{s}\": write a number and a unit, e.g. 500ms, 1s, 2h (units: ns, us, ms, s, m, h)")
        };
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(hint)?;
        let (num, unit) = s.split_at(split);
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(hint()),
        };
        let value: f64 = num.parse().map_err(|_| hint())?;
        let nanos = value * scale;
        if !nanos.is_finite() || nanos >= u64::MAX as f64 {
            return Err(format!("duration \"{s}\" is too large"));
        }
        Ok(Duration {
            nanos: nanos.round() as u64,
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        for (unit, scale) in [
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}ns")
    }
}

/// A frequency offset in parts per million, written `500ppm` or `12.5ppm`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ppm(pub f64);

impl FromStr for Ppm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || format!("bad frequency \"{s}\": write parts per million, e.g. 500ppm");
        let num = s.strip_suffix("ppm").ok_or_else(hint)?;
        let v: f64 = num.trim().parse().map_err(|_| hint())?;
        if !v.is_finite() || v < 0.0 {
            return Err(hint());
        }
        Ok(Ppm(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_name() {
        use agent_common::clock::op;
        assert_eq!(operation_names(op::STEP | op::LEAP), vec!["step", "leap"]);
    }

    #[test]
    fn durations() {
        assert_eq!(
            "500ms".parse::<Duration>().map(|d| d.nanos),
            Ok(500_000_000)
        );
        assert_eq!("1s".parse::<Duration>().map(|d| d.nanos), Ok(1_000_000_000));
        assert_eq!(
            "2h".parse::<Duration>().map(|d| d.nanos),
            Ok(7_200_000_000_000)
        );
        assert_eq!(
            "1.5s".parse::<Duration>().map(|d| d.nanos),
            Ok(1_500_000_000)
        );
        assert!("1".parse::<Duration>().is_err());
        assert!("s".parse::<Duration>().is_err());
        assert!("1 fortnight".parse::<Duration>().is_err());
        assert_eq!(
            Duration {
                nanos: 1_000_000_000
            }
            .to_string(),
            "1s"
        );
        assert_eq!(Duration { nanos: 1_500_000 }.to_string(), "1500us");
    }

    #[test]
    fn frequencies() {
        assert_eq!("500ppm".parse::<Ppm>(), Ok(Ppm(500.0)));
        assert!("500".parse::<Ppm>().is_err());
        assert!("-3ppm".parse::<Ppm>().is_err());
    }

    #[test]
    fn clock_identities() {
        let want = ClockIdentity([0, 0x1b, 0x21, 0xff, 0xfe, 0xaa, 0xbb, 0xcc]);
        assert_eq!("001b21.fffe.aabbcc".parse(), Ok(want));
        assert_eq!("00:1b:21:ff:fe:aa:bb:cc".parse(), Ok(want));
        assert_eq!("001B21FFFEAABBCC".parse(), Ok(want));
        assert_eq!(want.to_string(), "001b21.fffe.aabbcc");
        assert!("001b21.fffe.aabb".parse::<ClockIdentity>().is_err());
        assert!("zz1b21.fffe.aabbcc".parse::<ClockIdentity>().is_err());
    }

    #[test]
    fn destinations() {
        let d: Destination = "192.0.2.0/24:123".parse().expect("v4 net and port");
        assert_eq!((d.net.prefix, d.port), (24, Some(123)));
        let d: Destination = "[2001:db8::1]:4460".parse().expect("v6 and port");
        assert_eq!((d.net.prefix, d.port), (128, Some(4460)));
        let d: Destination = "2001:db8::/32".parse().expect("v6 net");
        assert_eq!((d.net.prefix, d.port), (32, None));
        assert!("192.0.2.1:0".parse::<Destination>().is_err());
        assert!("192.0.2.1:ntp".parse::<Destination>().is_err());
        assert!("[2001:db8::1".parse::<Destination>().is_err());
    }

    #[test]
    fn operations() {
        assert!("slew".parse::<Operation>().is_ok());
        let e = "jump".parse::<Operation>().err().unwrap_or_default();
        assert!(e.contains("write one of: step, slew"), "{e}");
    }
}
